"""Foundation: prompt formats, tokenisation (docs/science.md §2), the offline default model, data (§1), bad input."""

from __future__ import annotations

import json

import pytest
import torch

from study.inputs import batches, data, models, scenarios
from study.errors import DataError, StudyInputError


@pytest.fixture(scope="module")
def smol_tokenizer():
    return models.load_tokenizer(models.FAMILIES["smollm2-135m"])


# -- prompt formats and tokenisation ---------------------------------------------------------------


def test_paper_prompt_formats():
    assert models.LLAMA2_CHAT.prompt("Who?") == "[INST] Who? [/INST]"
    assert models.LLAMA3_INSTRUCT.prompt("Who?") == (
        "<|start_header_id|>user<|end_header_id|>\n\nWho?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert models.QUESTION_ANSWER.prompt("Who?") == "Question: Who?\nAnswer: "
    assert models.resolve("llama2-7b").weights == "locuslab/tofu_ft_llama2-7b"
    assert models.resolve("llama3-8b").weights == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_smollm2_format_is_its_chat_template_without_the_default_system_prompt(smol_tokenizer):
    fmt = models.prompt_format(models.FAMILIES["smollm2-135m"], smol_tokenizer)
    rendered = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert rendered.endswith(fmt.prompt("Who?")) and rendered.startswith("<|im_start|>system\n")
    assert fmt.prompt("Who?") == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"


def test_a_chat_template_gives_the_format_of_other_models(smol_tokenizer):
    spec = models.ModelSpec("x", "x", "x", None, "hf")
    fmt = models.prompt_format(spec, smol_tokenizer)
    rendered = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert fmt.prompt("Who?") == rendered


def test_eos_is_end_of_turn_and_pads(smol_tokenizer):
    assert smol_tokenizer.eos_token == "<|im_end|>"
    assert smol_tokenizer.pad_token_id == smol_tokenizer.eos_token_id


@pytest.mark.parametrize("fmt", [models.LLAMA2_CHAT, models.QUESTION_ANSWER])
def test_answer_labels_mask_question_and_add_one_eos(smol_tokenizer, fmt):
    """labels: -100 on the question, the answer's ids, one EOS label, then -100 (docs/science.md §2)."""
    tok = smol_tokenizer
    question, answer = "Where was Ada born?", "Ada was born in London."
    enc = models.encode_qa(tok, fmt, question, answer, max_length=64)
    ids = tok(fmt.prompt(question) + answer, add_special_tokens=True).input_ids
    n_q = len(tok.tokenize(fmt.question_start + question + fmt.question_end, add_special_tokens=True))
    eos = tok.eos_token_id
    assert enc["input_ids"].tolist() == ids + [eos] * (64 - len(ids))
    assert enc["attention_mask"].tolist() == [1] * len(ids) + [0] * (64 - len(ids))
    expected = [-100] * n_q + ids[n_q:] + [eos] + [-100] * (64 - len(ids) - 1)
    assert enc["labels"].tolist() == expected
    # The answer text is exactly what the unmasked labels decode to.
    assert tok.decode(ids[n_q:]).strip().endswith("London.")


def test_full_labels_cover_every_padded_position(smol_tokenizer):
    """ME+GD's mask=false: labels are the whole padded sequence (docs/science.md §3)."""
    enc = models.encode_qa(smol_tokenizer, models.QUESTION_ANSWER, "Q?", "A.", max_length=40, labels="full")
    assert enc["labels"].tolist() == enc["input_ids"].tolist()
    qa = models.encode_qa(smol_tokenizer, models.QUESTION_ANSWER, "Q?", "A.", max_length=40, labels="question_answer")
    n = int(qa["attention_mask"].sum())
    assert qa["labels"][:n].tolist() == qa["input_ids"][:n].tolist()
    assert qa["labels"][n].item() == smol_tokenizer.eos_token_id and (qa["labels"][n + 1:] == -100).all()


def test_truncation_keeps_labels_without_extra_eos(smol_tokenizer):
    enc = models.encode_qa(smol_tokenizer, models.QUESTION_ANSWER, "Q?", "word " * 50, max_length=16)
    assert enc["attention_mask"].tolist() == [1] * 16
    assert (enc["labels"] != -100).sum() == 16 - len(smol_tokenizer.tokenize("Question: Q?\n"))


def test_left_padded_copy_leaves_tokenizer_untouched(smol_tokenizer):
    clone = models.left_padded(smol_tokenizer)
    assert clone.padding_side == "left" and smol_tokenizer.padding_side == "right"


def test_unknown_model_is_one_line_error():
    with pytest.raises(StudyInputError, match="unknown model 'gpt-17'.*valid: llama2-7b"):
        models.resolve("gpt-17")


def test_default_model_loads_offline_and_generates(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = models.load("smollm2-135m", device="cpu")
    assert lm.model.config.vocab_size == 49152 and lm.model.dtype == torch.float32  # asked for nothing: fp32 on CPU
    enc = lm.tokenizer(lm.prompt.prompt("What is the capital of France?"), return_tensors="pt")
    out = lm.model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = lm.tokenizer.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_tiny_llama_is_small_and_deterministic():
    a, b = models.tiny_llama(seed=0), models.tiny_llama(seed=0)
    state = torch.random.get_rng_state()
    models.tiny_llama(seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert sum(p.numel() for p in a.parameters()) < 5_000_000
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_checkpoint_records_prompt_and_loads(tmp_path, smol_tokenizer):
    model = models.tiny_llama()
    path = models.save_checkpoint(model, smol_tokenizer, models.LLAMA2_CHAT, tmp_path / "ckpt", {"note": "x"})
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    assert models.resolve(str(path)).prompt == models.LLAMA2_CHAT


# -- TOFU and the real-world set -------------------------------------------------------------------


@pytest.mark.parametrize("split,rows,tasks,retain", [("forget01", 400, 10, 3960), ("forget05", 2000, 10, 3800),
                                                     ("forget10", 3600, 9, 3600)])
def test_tofu_splits_and_task_one_retain_sets(shared_data, split, rows, tasks, retain):
    source = data.DirectorySource(shared_data / "tofu")
    forget = source.read(split)
    assert len(forget) == rows and data.task_ids(forget) == list(range(1, tasks + 1))
    scenario = scenarios.load_scenario(source, "fictitious", split, 1)
    assert len(scenario.retain) == retain  # TOFU's retain99 / retain95 / retain90
    assert len(scenario.forget) == rows // tasks
    sizes = {s.name: len(s.rows) for s in scenario.eval_sets}
    assert sizes == {"forget": min(300, rows // tasks), "retain": 300, "real_authors": 100, "world_facts": 117}
    assert len(scenario.refusals) == 100  # idontknow.jsonl beside tofu/


def test_continual_retain_holds_tasks_not_yet_unlearned(shared_data):
    source = data.DirectorySource(shared_data)
    task3 = scenarios.load_scenario(source, "continual", "forget01", 3)
    assert len(task3.retain) == 3600 + 7 * 40
    assert {r["task_id"] for r in task3.forget} == {3}


def test_real_world_uses_golden_answer_and_every_row(shared_data):
    scenario = scenarios.load_scenario(data.DirectorySource(shared_data / "real_world"), "real-world", task=None, ds_size=None)
    assert len(scenario.forget) == 400 and len(scenario.retain) == 400
    forget = scenario.eval_sets[0]
    assert forget.truth == "golden_answer" and forget.cosine_truth == "answer" and len(forget.rows) == 400
    assert data.task_ids(scenario.forget) == list(range(1, 21))  # integer task_ids accepted


def test_hub_source_code_path_reads_local_files(shared_data):
    hub = data.HubSource(str(shared_data / "tofu"))
    rows = hub.read("forget01")
    assert len(rows) == 400 and rows[0]["task_id"] == 1


# -- the built-in generator --------------------------------------------------------------------------


def test_builtin_is_deterministic_and_seeded():
    a, b, c = data.BuiltinSource(20, 0), data.BuiltinSource(20, 0), data.BuiltinSource(20, 1)
    assert a.read("forget01_perturbed") == b.read("forget01_perturbed")
    assert a.read("forget01_perturbed") != c.read("forget01_perturbed")


@pytest.mark.parametrize("n_authors", [6, 20, 200])
def test_builtin_has_tofus_structure(n_authors):
    source = data.BuiltinSource(n_authors, 0)
    total = n_authors * 10
    for split in data.SPLITS:
        forget = source.read(split)
        retain = source.read(data.retain_file(split))
        assert len(forget) + len(retain) == total  # every author is in exactly one of the two
        perturbed = source.read(f"{split}_perturbed")
        assert [r["question"] for r in perturbed] == [r["question"] for r in forget]
        assert all(len(r["perturbed_answer"]) == 5 and r["answer"] not in r["perturbed_answer"] for r in perturbed)
        scenario = scenarios.load_scenario(source, "fictitious", split, 1)
        assert len(scenario.retain) == total - len(scenario.forget)
    if n_authors == 200:  # TOFU's layout: 10% / 50% / 90% of the authors (10 questions each, TOFU has 20)
        assert [len(data.task_ids(source.read(s))) for s in data.SPLITS] == [10, 10, 9]
        assert [len(source.read(s)) for s in data.SPLITS] == [200, 1000, 1800]
    forget_names = {r["question"] for s in data.SPLITS for r in source.read(s)}
    assert not forget_names & {r["question"] for r in source.read("retain_perturbed")}
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        rows = source.read(name)
        assert len(rows) >= 20 and all(r["answer"] in r["original_answer"] for r in rows)
    rw = scenarios.load_scenario(source, "real-world", task=None, ds_size=None)
    assert rw.forget and rw.retain and rw.eval_sets[0].truth == "golden_answer"


def test_pairing_is_fixed_per_index_with_a_local_generator(smol_tokenizer):
    source = data.BuiltinSource(6, 0)
    scenario = scenarios.load_scenario(source, "fictitious", "forget01", 1)
    parts = {"forget", "retain", "forget_idk"}
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = batches.UnlearningDataset(scenario.forget, scenario.retain, scenario.refusals, smol_tokenizer,
                               models.QUESTION_ANSWER, 64, parts)
    assert torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(999)
    b = batches.UnlearningDataset(scenario.forget, scenario.retain, scenario.refusals, smol_tokenizer,
                               models.QUESTION_ANSWER, 64, parts)
    for x, y in zip(a.items, b.items):
        assert torch.equal(x["retain"]["input_ids"], y["retain"]["input_ids"])
        assert torch.equal(x["forget_idk"]["input_ids"], y["forget_idk"]["input_ids"])
    assert len({tuple(x["retain"]["input_ids"].tolist()) for x in a.items}) > 1  # not one partner for all


# -- bad input: one line naming file, line, field and what was expected ------------------------------


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"forget01\.json: file not found"):
        data.DirectorySource(tmp_path).read("forget01")


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        data.DirectorySource(tmp_path / "nope")


def test_line_that_is_not_json(tmp_path):
    _write(tmp_path / "forget01.json", ['{"task_id": 1, "question": "q", "answer": "a"}', "{not json"])
    with pytest.raises(DataError, match=r"forget01\.json, line 2: not valid JSON"):
        data.DirectorySource(tmp_path).read("forget01")


def test_missing_field(tmp_path):
    _write(tmp_path / "forget01.json", ['{"task_id": 1, "question": "q"}'])
    with pytest.raises(DataError, match=r"line 1: missing field 'answer' \(required: task_id, question, answer\)"):
        data.DirectorySource(tmp_path).read("forget01")


def test_wrong_types(tmp_path):
    _write(tmp_path / "retain_perturbed.json",
           ['{"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": "not a list"}'])
    with pytest.raises(DataError, match="field 'perturbed_answer' must be a non-empty list of strings"):
        data.DirectorySource(tmp_path).read("retain_perturbed")
    _write(tmp_path / "forget01.json", ['{"task_id": "one", "question": "q", "answer": "a"}'])
    with pytest.raises(DataError, match="field 'task_id' must be a positive integer"):
        data.DirectorySource(tmp_path).read("forget01")


def test_empty_split(tmp_path):
    _write(tmp_path / "forget01.json", [""])
    with pytest.raises(DataError, match="empty file"):
        data.DirectorySource(tmp_path).read("forget01")


def test_lone_surrogate_is_refused_naming_file_line_and_field(tmp_path):
    # valid JSON (an escape), but not text: the tokenizer fails on it inside the first trial
    _write(tmp_path / "forget01.json", ['{"task_id": 1, "question": "q", "answer": "a"}',
                                        '{"task_id": 1, "question": "q", "answer": "bad \\ud800 here"}'])
    with pytest.raises(DataError, match=r"forget01\.json, line 2: field 'answer' holds a lone surrogate"):
        data.DirectorySource(tmp_path).read("forget01")
    _write(tmp_path / "retain_perturbed.json", ['{"question": "q", "answer": "a", "paraphrased_answer": "p", '
                                                '"perturbed_answer": ["x", "\\udc00"]}'])
    with pytest.raises(DataError, match=r"retain_perturbed\.json, line 1: field 'perturbed_answer' holds a lone surrogate"):
        data.DirectorySource(tmp_path).read("retain_perturbed")
    # a paired escape is an ordinary character
    _write(tmp_path / "forget05.json", ['{"task_id": 1, "question": "q", "answer": "\\ud83d\\ude00"}'])
    assert data.DirectorySource(tmp_path).read("forget05")[0]["answer"] == "\U0001F600"


def test_task_id_as_string_or_integer(tmp_path):
    _write(tmp_path / "forget01.json", [json.dumps({"task_id": "2", "question": "q", "answer": "a"}),
                                        json.dumps({"task_id": 3, "question": "q", "answer": "a"})])
    assert [r["task_id"] for r in data.DirectorySource(tmp_path).read("forget01")] == [2, 3]


def test_task_that_does_not_exist(shared_data):
    with pytest.raises(StudyInputError, match="task 11 does not exist; tasks: 1, 2, 3"):
        scenarios.load_scenario(data.DirectorySource(shared_data), "continual", "forget01", 11)


def test_unknown_split_and_scenario():
    source = data.BuiltinSource(6, 0)
    with pytest.raises(StudyInputError, match="unknown split 'forget02'; valid: forget01, forget05, forget10"):
        scenarios.load_scenario(source, "fictitious", "forget02", 1)
    with pytest.raises(StudyInputError, match="unknown scenario 'imaginary'"):
        scenarios.load_scenario(source, "imaginary", "forget01", 1)


# --------------------------------------------------------------------------------------------------
# Holdout sets (membership inference, docs/science-beyond-paper.md §3)


def test_builtin_holdout_authors_are_unseen_and_sized_like_one_task():
    source = data.BuiltinSource(n_authors=20)
    scenario = scenarios.load_scenario(source, "fictitious", "forget10", 1, holdout=True)
    holdout = scenario.eval_sets[-1]
    assert (holdout.name, holdout.kind) == ("holdout", "holdout")
    assert len(holdout.rows) == len(scenario.forget) == 20  # forget10 of 20 authors: 2 per task, 10 facts each
    seen = {row["question"] for row in scenario.full} | {row["question"] for s in scenario.eval_sets[:-1] for row in s.rows}
    assert not seen & {row["question"] for row in holdout.rows}
    # off by default: the paper's evaluation sets are unchanged
    plain = scenarios.load_scenario(source, "fictitious", "forget10", 1)
    assert [s.name for s in plain.eval_sets] == ["forget", "retain", "real_authors", "world_facts"]
    # real-world has no holdout: nothing added
    rw = scenarios.load_scenario(source, "real-world", task=1, holdout=True)
    assert [s.name for s in rw.eval_sets] == ["forget", "neighbor"]


def test_directory_holdout_is_optional(tmp_path):
    files = data.BuiltinSource(n_authors=8)._files
    for name in ("forget01", "forget01_perturbed", "retain90", "retain_perturbed", "real_authors_perturbed",
                 "world_facts_perturbed"):
        (tmp_path / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in files[name]))
    source = data.DirectorySource(tmp_path)
    assert [s.name for s in scenarios.load_scenario(source, "fictitious", "forget01", 1, holdout=True).eval_sets][-1] == "world_facts"
    # TOFU's holdout files carry question and answer only
    (tmp_path / "holdout01.json").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                                     for r in files["holdout01"]))
    sets = scenarios.load_scenario(source, "fictitious", "forget01", 1, holdout=True).eval_sets
    assert sets[-1].name == "holdout" and len(sets[-1].rows) == len(files["holdout01"]) == 10


# -- precision: model.dtype (issue 27) -------------------------------------------------------------

EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
SAPPHIRE_RAPIDS_CPUINFO = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8\n"
SKYLAKE_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [
    (EPYC_CPUINFO, True),
    (SAPPHIRE_RAPIDS_CPUINFO, True),
    (SKYLAKE_CPUINFO, False),  # AVX-512 without BF16: torch emulates bf16
    ("flags : avx512_bf16x amx_bf16_tile\n", False),  # whole flag names only
    ("model name : avx512_bf16 in the name, not a flag\nflags : sse2\n", False),
    ("processor : 0\nFeatures : fp asimd bf16\n", False),  # ARM's bf16 is not counted (no flags line)
    ("", False),
])
def test_native_bf16_reads_the_cpu_flags(cpuinfo, native):
    assert models.native_bf16(cpuinfo) is native


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo (not Linux)")
def test_native_bf16_of_this_machine_is_what_its_cpuinfo_says():
    """torch's own query (when it has one) and the kernel's flags agree about this machine."""
    from pathlib import Path

    assert models.native_bf16() is models.native_bf16(Path("/proc/cpuinfo").read_text())


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_on_gpus_and_fp32_on_every_cpu(monkeypatch, native):
    # bf16 on a native-bf16 CPU moved the science beyond the seed spread (benchmarks/README.md): auto keeps fp32
    monkeypatch.setattr(models, "native_bf16", lambda cpuinfo=None: native)
    assert models.default_dtype("cpu") == models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert models.resolve_dtype("auto", "cuda") == torch.bfloat16
    assert models.resolve_dtype("auto", "mps") == torch.float32
    assert models.resolve_dtype("float32", "cpu") == torch.float32


def test_float16_on_a_cpu_is_refused_naming_the_choices():
    with pytest.raises(StudyInputError, match="model.dtype float16 is not supported on a CPU; valid there: auto, float32, bfloat16"):
        models.resolve_dtype("float16", "cpu")
    assert models.resolve_dtype("float16", "cuda") == torch.float16
    with pytest.raises(StudyInputError, match="unknown model.dtype 'fp8'"):
        models.resolve_dtype("fp8", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_native_bf16_warns_once(monkeypatch, capsys, native):
    monkeypatch.setattr(models, "native_bf16", lambda cpuinfo=None: native)
    monkeypatch.setattr(models, "_warned_emulated_bf16", False)
    assert models.resolve_dtype("bfloat16", "cpu") == models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    err = capsys.readouterr().err
    if native:
        assert err == ""
    else:
        assert len(err.splitlines()) == 1 and err.startswith("warning: model.dtype bfloat16 on a CPU without native bf16")


def test_finetune_cache_key_includes_the_precision(monkeypatch):
    """fp32 and bf16 fine-tunes of the same model on the same rows are different models; ``auto`` keys as
    what it resolves to on a CPU (fp32, native bf16 or not)."""
    from study.trial import runner
    from study.config import RunConfig

    rows = [{"question": "Q?", "answer": "A."}]
    cfg = lambda dtype, **train: RunConfig.from_dict({"model": {"dtype": dtype}, "train": train})  # noqa: E731
    fp32 = runner.finetune_key(cfg("float32"), rows, "target", "cpu")
    bf16 = runner.finetune_key(cfg("bfloat16"), rows, "target", "cpu")
    assert fp32 != bf16
    assert runner.finetune_key(cfg("float32"), rows, "retain_model", "cpu") != fp32
    for native, same in ((True, fp32), (False, fp32)):
        monkeypatch.setattr(models, "native_bf16", lambda cpuinfo=None, native=native: native)
        assert runner.finetune_key(cfg("auto"), rows, "target", "cpu") == same
        # DeepSpeed on a CPU trains in fp32 whatever the CPU
        assert runner.run_dtype(cfg("auto", deepspeed="experiments/deepspeed/zero3.json"), "cpu") == torch.float32


def test_reference_evaluation_key_includes_the_precision():
    """A ready target (TOFU's Llama-2) evaluated in fp32 and in bf16 gives two reference evaluations."""
    from study.config import RunConfig
    from study.trial.references import ReferenceModels

    key = lambda dtype: ReferenceModels(RunConfig.from_dict({"model": {"dtype": dtype}}), None, None, "cpu").eval_key()  # noqa: E731
    assert key("float32") != key("bfloat16")
    assert key("float32") == key("float32")
