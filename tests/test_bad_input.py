"""Bad input, everywhere: malformed data files and bad command lines end in one clear line.

- Data (property-based, hypothesis): any bytes in a data file either load as validated rows or raise
  ``DataError`` with a one-line message that names the file; never another exception.
- Command line (in-process ``main(argv)``): unknown methods, bad learning rates, unknown splits, missing
  data, bad ``--set`` syntax or types, unreachable stores: one ``error:`` line, no traceback, a
  non-zero exit, nothing written to the tracking store, and no password in the output.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.inputs import data as data_mod
from study.inputs import scenarios
from study.errors import DataError, StudyInputError

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3tPW-9f2"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_bad_input", ROOT / "experiments" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# Data files (hypothesis)

FIELDS = sorted({key for keys in data_mod.SCHEMA.values() for key in keys} | {"original_answer", "extra"})
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
TASK_IDS = st.one_of(st.integers(min_value=-3, max_value=25), st.sampled_from(["1", "02", " 3 ", "1.0", "x", "", "1e3", "١", "²"]),
                     st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                     st.just(10**40))
ANSWERS = st.one_of(st.text(max_size=40), st.just(""), st.just("   "), st.just("x" * 200_000), st.just("\n"),
                    st.lists(st.text(max_size=10), max_size=3), JSON_SCALARS)


@st.composite
def rows(draw):
    """A dict that looks like a data row: some required fields, some wrong types, some missing."""
    keys = draw(st.lists(st.sampled_from(FIELDS), max_size=len(FIELDS), unique=True))
    row = {}
    for key in keys:
        row[key] = draw(TASK_IDS if key == "task_id" else ANSWERS)
    return row


def _dump(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


LINES = st.one_of(
    rows().map(_dump),
    JSON_VALUES.map(_dump),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
    st.sampled_from([b"", b"   ", b"{", b"}", b"[" * 5000 + b"]" * 5000, b"1" * 5000, b"NaN", b"Infinity",
                     b'{"task_id": Infinity, "question": "q", "answer": "a"}', b'{"task_id": NaN}', b"\xff\xfe\x00",
                     b'{"question": "q", "answer": "a", "task_id": 1}', b'"\\ud800"', b"\x00" * 10, b"null",
                     b'{"question": "q", "answer": "a"}\x1e']),
)


def _check(call, path: Path):
    """Either rows that passed the schema, or a one-line DataError naming the file."""
    try:
        loaded = call()
    except DataError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, message
        assert str(path) in message or path.name in message, message
        return None
    assert isinstance(loaded, list) and loaded
    return loaded


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(name=st.sampled_from(sorted(data_mod.SCHEMA)), lines=st.lists(LINES, max_size=6), newline=st.sampled_from([b"\n", b"\r\n"]))
def test_any_data_file_loads_or_raises_one_line_data_error(tmp_path_factory, name, lines, newline):
    folder = tmp_path_factory.mktemp("data")
    path = folder / f"{name}.json"
    path.write_bytes(newline.join(lines))
    loaded = _check(lambda: data_mod.read_jsonl(path), path)
    via_source = _check(lambda: data_mod.DirectorySource(folder).read(name), path)
    assert (loaded is None) == (via_source is None)
    for row in loaded or []:
        for key in data_mod.SCHEMA[name]:
            value = row[key]
            if key == "task_id":
                assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
            elif key in data_mod.LIST_FIELDS:
                assert isinstance(value, list) and value and all(isinstance(v, str) for v in value)
            else:
                assert isinstance(value, str) and value.strip()


@pytest.fixture(scope="module")
def valid_tofu(tmp_path_factory):
    """The built-in authors written as TOFU-format JSON-lines files."""
    from study.inputs import builtin

    folder = tmp_path_factory.mktemp("tofu")
    for name, file_rows in builtin.generate(6, 0).items():
        (folder / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in file_rows))
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["forget01", "forget01_perturbed", "retain90", "retain_perturbed", "real_authors_perturbed"]),
       mutated=st.lists(st.one_of(rows().map(_dump), LINES), min_size=1, max_size=4), task=st.integers(min_value=-1, max_value=4),
       keep=st.booleans())
def test_scenario_with_one_bad_file_loads_or_names_it(valid_tofu, tmp_path_factory, target, mutated, task, keep):
    """A whole scenario (weird task ids included): loads, or one line that names the offending file."""
    folder = tmp_path_factory.mktemp("scenario")
    for source in valid_tofu.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    original = (valid_tofu / f"{target}.json").read_bytes()
    (folder / f"{target}.json").write_bytes((original if keep else b"") + b"\n".join(mutated))
    try:
        scenario = scenarios.load_scenario(data_mod.DirectorySource(folder), "fictitious", "forget01", task)
    except StudyInputError as error:
        assert isinstance(error, DataError), f"{type(error).__name__}: {error}"
        message = str(error)
        assert "\n" not in message and ".json" in message, message
        return
    assert scenario.forget and all(row["task_id"] == task for row in scenario.forget)


def test_non_utf8_refusals_file_is_a_data_error(tmp_path):
    (tmp_path / data_mod.REFUSALS_FILE).write_bytes(b"I don't know\n\xff\xfe\n")
    with pytest.raises(DataError, match=re.escape(data_mod.REFUSALS_FILE)):
        data_mod.DirectorySource(tmp_path).refusals()


# --------------------------------------------------------------------------------------------------
# The command line (in-process)

BAD_ARGV = [
    (["--method", "XX+GD"], "unknown forget loss"),
    (["--method", "ME+XX"], "unknown regularizer"),
    (["--method", ""], "method name must be"),
    (["--set", "train.lr=-1"], "lr must be a positive finite number"),
    (["--set", "train.lr=nan"], "lr must be a positive finite number"),
    (["--set", "train.lr=inf"], "lr must be a positive finite number"),
    (["--set", "train.lr=1e30"], "lr must be at most 1"),
    (["--set", "train.lr=0"], "lr must be a positive finite number"),
    (["--set", "train.lr=fast"], "lr must be"),
    (["--set", "data.split=forget99"], "unknown split 'forget99'"),
    (["--data-dir", "/nonexistent/tofu"], "/nonexistent/tofu: data directory not found"),
    (["--set", "train"], "expected SECTION.FIELD=VALUE"),
    (["--set", "train.lr"], "expected SECTION.FIELD=VALUE"),
    (["--set", "lr=1e-4"], "expected SECTION.FIELD=VALUE"),
    (["--set", "nosuch.x=1"], "unknown section"),
    (["--set", "train.nonsense=1"], "unknown setting train.nonsense"),
    (["--set", "model.name=5"], "model.name must be of type str"),
    (["--set", "method.name=[1]"], "method.name must be of type str"),
    (["--set", "data.source=true"], "data.source must be of type str"),
    (["--set", "data.ds_size=1.5"], "data.ds_size must be of type int"),
    (["--set", "data.tasks=[0]"], "tasks must be positive integers"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--n-trials", "0"], "n_trials must be a positive integer"),
    (["--heartbeat", "0"], "heartbeat must be a positive integer"),
    (["--max-failures", "-1"], "max_failures must be a positive integer"),
    (["--scenario", "continual", "--tasks", "1", "99"], "task 99 does not exist"),
    # Issue 13 (1): refused at planning, not inside every trial.
    (["--device", "tpu9"], "device"),
    (["--device", "cuda:notanumber"], "device 'cuda:notanumber'"),
    (["--set", "train.lora_rank=-1"], "lora_rank must be an integer from 0"),
    (["--set", "train.seed=4294967296"], "seed must be an integer from 0 to 4294967295"),
    (["--seed", "-1"], "seed must be an integer from 0 to 4294967295"),
    (["--set", "data.data_seed=-5"], "data_seed must be an integer from 0"),
    (["--set", "train.max_length=3"], "train.max_length must be at least"),
    (["--set", "eval.max_length=5"], "eval.max_length must be at least"),
    (["--set", "finetune.max_length=2"], "finetune.max_length must be at least"),
    (["--embedder", "/nonexistent/embedder"], "embedder '/nonexistent/embedder'"),
    (["--set", "train.deepspeed='/nonexistent/zero3.json'"], "train.deepspeed"),
    # Issue 13 (2)
    (["--set", "train.batch_size=100000000000000000000"], "batch_size must be"),
    (["--set", "train.batch_size=65536", "--set", "train.grad_accum=2"], "batch_size x grad_accum must be at most"),
    (["--set", "eval.batch_size=1000000000"], "eval.batch_size must be"),
    (["--set", "train.epochs=1e12"], "epochs must be at most"),
    (["--scenario", "continual", "--tasks", "1", "1"], "tasks must not repeat"),
    (["--study-name", "a/b"], "study name must be"),
    (["--study-name", ".."], "study name must be"),
    (["--study-name", "x..y"], "study name must be"),
    (["--study-name", "two\nlines"], "study name must be"),
    (["--study-name", "s" * 5000], "study name must be"),
    (["--study-name", ""], "study name must be"),
    (["--model", ""], "model.name must be a non-empty name"),
    (["--model", " "], "model.name must be a non-empty name"),
    (["--data-dir", ""], "--data-dir must name a directory"),
    (["--experiment", ""], "experiment name must be"),
    (["--storage", "redis://127.0.0.1/0"], "Optuna storage 'redis://127.0.0.1/0': unknown scheme"),
    (["--tracking-uri", "gopher://127.0.0.1/"], "tracking store 'gopher://127.0.0.1/': unknown scheme"),
    # issue 32 (6): lengths beyond the model's context window (before: a hang in the target's evaluation,
    # a 1 TB allocation at trial 0)
    (["--set", "eval.max_length=1048576"], "eval.max_length 1048576 is beyond the model's context window, 1024 tokens"),
    (["--set", "train.max_length=1048576"], "train.max_length 1048576 is beyond the model's context window"),
    (["--set", "finetune.max_length=5000"], "finetune.max_length 5000 is beyond the model's context window"),
]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_on_a_cpu_machine_is_refused_at_planning(sweep, capsys, tmp_path):
    stores = ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--device", "cuda", *stores])
    assert code == 2 and "CUDA is not available" in _one_error_line(err)
    assert not (tmp_path / "optuna.db").exists()  # refused before any store is written
    # a dry run plans a GPU run on this machine and says what the real run needs
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", "--device", "cuda", *stores])
    assert code == 0 and "a real run needs: device 'cuda': CUDA is not available on this machine" in out


def test_float16_on_a_cpu_is_refused_at_planning(sweep, capsys):
    """Issue 27: a one-line refusal naming the choices, before anything runs (``--dry-run`` too)."""
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", "--device", "cpu",
                                               "--set", "model.dtype=float16"])
    assert code == 2
    assert "model.dtype float16 is not supported on a CPU; valid there: auto, float32, bfloat16" in _one_error_line(err)


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_native_bf16_plans_with_one_warning(sweep, capsys, monkeypatch, native):
    """Issue 27: bfloat16 where the CPU only emulates it runs (slowly), saying so in one line."""
    from study.inputs import models

    monkeypatch.setattr(models, "native_bf16", lambda cpuinfo=None: native)
    monkeypatch.setattr(models, "_warned_emulated_bf16", False)
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", "--device", "cpu",
                                               "--set", "model.dtype=bfloat16"])
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (0 if native else 1), err
    if not native:
        assert "model.dtype bfloat16 on a CPU without native bf16" in warnings[0]


def _data_copy(valid_tofu, folder: Path) -> Path:
    folder.mkdir()
    for source in valid_tofu.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    return folder


def test_bad_models_and_data_are_refused_at_planning(sweep, capsys, tmp_path, valid_tofu):
    """Issue 13 (1): a folder that is not a model (as model, target or embedder), an empty refusal file,
    perturbed-answer lists of unequal length: refused by the plan, naming the file or field."""
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("no weights here")
    empty_refusals = _data_copy(valid_tofu, tmp_path / "refusals")
    (empty_refusals / "idontknow.jsonl").write_text("\n  \n")
    ragged = _data_copy(valid_tofu, tmp_path / "ragged")
    rows = [json.loads(line) for line in (ragged / "retain_perturbed.json").read_text().splitlines()]
    rows[1]["perturbed_answer"] = rows[1]["perturbed_answer"][:1] + rows[1]["perturbed_answer"]
    (ragged / "retain_perturbed.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = [(["--model", str(not_a_model)], "not a model directory (no config.json)"),
             (["--target", str(not_a_model)], "not a model directory (no config.json)"),
             (["--embedder", str(not_a_model)], "is not a model directory"),
             (["--data-dir", str(empty_refusals)], "idontknow.jsonl: no refusal template"),
             (["--data-dir", str(ragged)], "retain set, row 2: field 'perturbed_answer' has")]
    for argv, message in cases:
        code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", *argv])
        assert code == 2 and message in _one_error_line(err), (argv, err)


def test_set_lr_is_fixed_for_the_study_not_silently_searched(sweep, capsys):
    """Issue 13 (2): ``--set train.lr`` used to be overridden by the sampled lr; now lr leaves the search space."""
    assert sweep.main(["--preset", "smoke", "--dry-run", "--set", "train.lr=0.0005"]) == 0
    out = capsys.readouterr().out
    assert "fixed        train.lr = 0.0005 (given with --set: not searched)" in out
    space = next(line for line in out.splitlines() if line.startswith("space ME+GD"))
    assert "lr in" not in space and "forget_coeff in" in space
    assert sweep.main(["--preset", "smoke", "--dry-run"]) == 0
    assert "space ME+GD    lr in [0.0001, 0.001] (log)" in capsys.readouterr().out


def test_stores_come_from_the_environment_redacted(sweep, capsys, tmp_path, monkeypatch):
    """Issue 13 (5): OPTUNA_STORAGE / MLFLOW_TRACKING_URI keep passwords off the command line; the options win."""
    monkeypatch.setenv("OPTUNA_STORAGE", f"postgresql+psycopg2://user:{PASSWORD}@db.internal:5432/optuna?sslmode=require")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://mlflow.internal:5000/?token={PASSWORD}")
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run"])
    assert code == 0
    assert "storage      postgresql+psycopg2://user:***@db.internal:5432/optuna?sslmode=require" in out
    assert "tracking     http://mlflow.internal:5000/?token=***" in out
    assert PASSWORD not in out + err and "warning" not in err
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", "--storage", f"sqlite:///{tmp_path}/o.db"])
    assert f"storage      sqlite:///{tmp_path}/o.db" in out


def test_a_password_on_the_command_line_is_hidden_and_warned_about(sweep, capsys):
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run",
                                               "--storage", f"sqlite:///mlruns/optuna.db?password={PASSWORD}"])
    assert code == 0 and PASSWORD not in out + err
    assert "storage      sqlite:///mlruns/optuna.db?password=***" in out
    assert "warning: --storage holds a credential" in err and "OPTUNA_STORAGE" in err


def test_query_string_password_is_not_stored_in_the_study_run(tmp_path):
    """Issue 13 (5): the MLflow param ``study.storage`` held ``?password=...`` in clear."""
    import optuna

    from study.config import RunConfig
    from study.config import StudySettings
    from study.search import Sweep
    from study.trial.tracking import Tracker

    settings = StudySettings("pw", ["ME+GD"], storage=f"postgresql+psycopg2://db.internal/optuna?user=u&password={PASSWORD}")
    sweep = Sweep(RunConfig(), settings, log=lambda *a: None)
    sweep.tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "pw")
    study = optuna.create_study(study_name="pw/ME+GD", directions=["maximize", "maximize"])
    run = sweep.tracker.client.get_run(sweep._parent_run(study, "ME+GD"))
    assert run.data.params["study.storage"] == "postgresql+psycopg2://db.internal/optuna?user=u&password=***"
    assert PASSWORD not in json.dumps([run.data.params, run.data.tags, study.user_attrs])


@pytest.mark.parametrize("url", [f"postgresql://user:{PASSWORD}/x@127.0.0.1:1/optuna", f"user:{PASSWORD}@host//db",
                                 f"postgresql://user:{PASSWORD[:6]}#{PASSWORD[6:]}@h/db", f"mysql://u@h/db?pwd={PASSWORD}",
                                 f"postgresql://user:{PASSWORD}@h:5432/db?x=a@b", f"http://[user:{PASSWORD}@h"])
def test_malformed_urls_hide_the_whole_password(url):
    """Issue 13 (5): no part of the password (three characters or more) survives redaction or ``scrub``."""
    from study.credentials import redact, scrub

    pieces = {PASSWORD[i:i + 4] for i in range(len(PASSWORD) - 3)}
    for shown in (redact(url), scrub(f"cannot parse {url!r} (near {PASSWORD[2:9]!r})", url)):
        assert not [p for p in pieces if p in shown], shown


def _run_main(sweep, capsys, argv):
    try:
        code = sweep.main(argv)
    except SystemExit as exit_info:  # argparse: usage + one error line
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv,message", BAD_ARGV, ids=[" ".join(a) for a, _ in BAD_ARGV])
def test_bad_command_line_is_one_error_line_and_writes_nothing(sweep, capsys, tmp_path, monkeypatch, argv, message):
    if "max_length must be at least" in message:
        from study.inputs import models

        models.smollm2_dir()  # the length check needs the tokenizer at hand (prepared once per machine)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--tracking-uri", f"sqlite:///{db}",
                                               "--storage", f"sqlite:///{tmp_path}/optuna.db", *argv])
    assert code == 2
    assert message in _one_error_line(err)
    assert not db.exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("argv", [["--split", "forget02"], ["--keep-checkpoints", "some"], ["--n-trials", "many"],
                                  ["--no-such-option"]])
def test_argparse_errors_exit_2_with_usage(sweep, capsys, tmp_path, argv):
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *argv])
    assert code == 2 and "usage:" in err
    _one_error_line(err)
    assert not (tmp_path / "m.db").exists()


def test_malformed_data_file_is_reported_before_anything_is_written(sweep, capsys, tmp_path, valid_tofu):
    folder = tmp_path / "data"
    folder.mkdir()
    for source in valid_tofu.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "retain_perturbed.json").write_text('{"question": "q", "answer": "a", "paraphrased_answer": 3}\n')
    db = tmp_path / "mlflow.db"
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--data-dir", str(folder), "--tracking-uri", f"sqlite:///{db}",
                                               "--storage", f"sqlite:///{tmp_path}/optuna.db"])
    line = _one_error_line(err)
    assert code == 2 and "retain_perturbed.json, line 1" in line and "paraphrased_answer" in line
    assert not db.exists()


UNREACHABLE = [
    ("--storage", f"postgresql+psycopg2://user:{PASSWORD}@127.0.0.1:1/optuna", "Optuna storage"),
    ("--storage", f"postgresql+psycopg2://user:{PASSWORD}@127.0.0.1:notaport/optuna", "Optuna storage"),
    ("--storage", f"mysql://user:{PASSWORD}@127.0.0.1:1/optuna", "Optuna storage"),
    ("--tracking-uri", f"postgresql+psycopg2://user:{PASSWORD}@127.0.0.1:1/mlflow", "tracking store"),
    ("--tracking-uri", f"http://user:{PASSWORD}@127.0.0.1:1", "tracking store"),
]


@pytest.mark.parametrize("option,url,what", UNREACHABLE, ids=[u[1].split(PASSWORD)[0] + u[0] for u in UNREACHABLE])
def test_unreachable_store_is_one_line_without_the_password(sweep, capsys, tmp_path, monkeypatch, option, url, what):
    monkeypatch.chdir(tmp_path)  # main() changes into the repository for its default stores
    stores = {"--storage": f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri": f"sqlite:///{tmp_path}/mlflow.db", option: url}
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--no-progress", *[x for kv in stores.items() for x in kv]])
    line = _one_error_line(err)
    assert code == 2 and what in line and "unreachable" in line
    assert PASSWORD not in out + err
    assert not (tmp_path / "mlflow.db").exists()  # the tracking store is never created when a store is bad


MALFORMED = [
    ("--storage", f"post gres://user:{PASSWORD}@127.0.0.1/optuna", "Optuna storage"),
    ("--storage", f"user:{PASSWORD}@127.0.0.1/optuna", "Optuna storage"),
    ("--storage", f"user:{PASSWORD}@127.0.0.1//optuna", "Optuna storage"),
    ("--storage", f"redis://user:{PASSWORD}@127.0.0.1/0", "Optuna storage"),
    ("--storage", f"sqlite:///{{tmp}}/o.db?password={PASSWORD}\n", "Optuna storage"),
    ("--tracking-uri", f"ftp://user:{PASSWORD}@127.0.0.1/m", "tracking store"),
    ("--tracking-uri", f"user:{PASSWORD}@mlflow.internal:5000", "tracking store"),
]


@pytest.mark.parametrize("option,url,what", MALFORMED, ids=[u[1].split(PASSWORD)[0] + u[0] for u in MALFORMED])
@pytest.mark.parametrize("dry_run", [True, False])
def test_unknown_store_scheme_is_refused_at_planning_without_the_password(sweep, capsys, tmp_path, monkeypatch, option, url,
                                                                         what, dry_run):
    """Issue 13 (2, 5): a store URL with an unknown scheme is refused by the plan (also with --dry-run), in one
    line that shows no part of the password, before any store is created."""
    monkeypatch.chdir(tmp_path)
    stores = {"--storage": f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri": f"sqlite:///{tmp_path}/mlflow.db",
              option: url.replace("{tmp}", str(tmp_path))}
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--no-progress", *[x for kv in stores.items() for x in kv],
                                               *(["--dry-run"] if dry_run else [])])
    line = _one_error_line(err)
    assert code == 2 and what in line and "unknown scheme" in line, line
    assert PASSWORD not in out + err and "s3cr3t" not in out + err
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=300, deadline=None)
@given(user=st.text(alphabet="abcdefgh_.", min_size=1, max_size=8),
       secret=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16),
       scheme=st.sampled_from(["postgresql+psycopg2://", "mysql://", "http://", "https://", "", "post gres://", "sqlite://"]),
       host=st.sampled_from(["127.0.0.1:5432/db", "db.example.org/optuna?sslmode=require", "h", "[::1]:5000"]))
def test_redact_never_shows_a_password(user, secret, scheme, host):
    """Any password (unencoded '@', ':', '/', unicode ...) in any URL shape is hidden."""
    from study.credentials import redact

    password = "Zq9" + secret  # a marker no scheme, user or host contains
    hidden = redact(f"{scheme}{user}:{password}@{host}")
    assert "Zq9" not in hidden and "***" in hidden, hidden


def test_dry_run_prints_stores_without_password(sweep, capsys, tmp_path):
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run",
                                               "--storage", f"postgresql+psycopg2://user:{PASSWORD}@db.internal:5432/optuna",
                                               "--tracking-uri", f"http://user:{PASSWORD}@mlflow.internal:5000"])
    assert code == 0
    assert "storage      postgresql+psycopg2://user:***@db.internal:5432/optuna" in out
    assert "tracking     http://user:***@mlflow.internal:5000" in out
    assert PASSWORD not in out + err


# --------------------------------------------------------------------------------------------------
# The command line and the settings, generated (hypothesis): every --set field and option


def _toml(value) -> str:
    """``value`` in TOML value syntax (what ``--set`` parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else "-inf" if value == float("-inf") else repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _field_values(hint, field: str):
    """Values for a field of this type (valid, borderline, absurd) and of every other type."""
    import typing

    integers = st.one_of(st.integers(min_value=-3, max_value=600), st.integers(min_value=-2**70, max_value=2**70),
                         st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 10**20]))
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=1e-7, max_value=2.0))
    texts = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "builtin", "hub", "x/y", "/nonexistent", "..", "ME+GD",
                                                              "auto", "answer", "float32", "forget05", "continual", "\n"]))
    wrong = st.one_of(integers, floats, texts, st.booleans(), st.lists(st.integers(min_value=-2, max_value=12), max_size=3))
    text = str(hint)
    if text in ("int", "<class 'int'>"):
        typed = integers
    elif text in ("float", "<class 'float'>"):
        typed = st.one_of(floats, integers)
    elif text in ("bool", "<class 'bool'>"):
        typed = st.booleans()
    elif "list" in text:
        typed = st.lists(st.integers(min_value=-2, max_value=12), max_size=4)
    else:
        typed = texts
    del typing
    return st.one_of(typed, typed, wrong)


@st.composite
def set_items(draw):
    import dataclasses
    import typing

    from study.config import RunConfig

    items = []
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        section = draw(st.sampled_from(dataclasses.fields(RunConfig)))
        hints = typing.get_type_hints(section.default_factory)
        field = draw(st.sampled_from(sorted(hints)))
        value = draw(_field_values(hints[field], field))
        items.append((f"{section.name}.{field}", value))
    return items


OPTIONS = {  # option -> (values, a word the refusal must contain)
    "--n-trials": (st.integers(min_value=-5, max_value=10**7), "n_trials"),
    "--heartbeat": (st.integers(min_value=-5, max_value=10**7), "heartbeat"),
    "--max-failures": (st.integers(min_value=-5, max_value=10**7), "max_failures"),
    "--seed": (st.integers(min_value=-2**40, max_value=2**40), "seed"),
    "--study-name": (st.text(max_size=300), "study name"),
    "--experiment": (st.text(max_size=300), "experiment"),
    "--model": (st.one_of(st.text(max_size=12), st.sampled_from(["", "tiny-llama", "a/b", "/tmp", "."])), "model"),
    "--device": (st.one_of(st.text(max_size=8), st.sampled_from(["cpu", "cuda", "cuda:7", "mps", "meta", "cpu:0", "xla"])), "device"),
    "--embedder": (st.one_of(st.text(max_size=12), st.sampled_from(["builtin", "/nonexistent", "a/b", ".", ""])), "embedder"),
    "--storage": (st.one_of(st.text(max_size=30), st.sampled_from(["sqlite://", "journal:", "redis://x", "x://y"])), "Optuna storage"),
    "--tracking-uri": (st.one_of(st.text(max_size=30), st.sampled_from(["file:", "ftp://x", "http:/x"])), "tracking store"),
}


class _NoStudy:
    """Stands in for ``Sweep``: an accepted command line stops after its plan (nothing is trained)."""

    def __init__(self, *args, **kwargs):
        pass

    tracker = type("NoTracker", (), {"experiment_id": "0"})  # the printed UI link reads it

    def run(self):
        return {}


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(items=set_items(), option=st.one_of(st.none(), st.sampled_from(sorted(OPTIONS))), data=st.data())
def test_generated_command_lines_run_or_are_refused_in_one_line(sweep, capsys, tmp_path_factory, monkeypatch, items, option,
                                                                 data):
    """Issue 13: any value of any ``--set`` field, and of the options: accepted, or one ``error:`` line that
    names the setting, a non-zero exit, no traceback and nothing written to the stores."""
    import study.search

    monkeypatch.setattr(study.search, "Sweep", _NoStudy)
    folder = tmp_path_factory.mktemp("cli")
    monkeypatch.chdir(folder)
    argv = ["--preset", "smoke", "--no-progress", "--storage", f"sqlite:///{folder}/optuna.db",
            "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    for key, value in items:
        argv += ["--set", f"{key}={_toml(value)}"]
    names = [key for key, _ in items] + [key.split(".")[1] for key, _ in items] + [key.split(".")[0] for key, _ in items]
    if option is not None:
        values, word = OPTIONS[option]
        argv.append(f"{option}={data.draw(values)}")
        names.append(word)
    code, out, err = _run_main(sweep, capsys, argv)
    assert "Traceback" not in out + err, err
    if code == 0:
        return
    line = _one_error_line(err)
    assert code == 2, (code, err)
    assert any(name.replace("_", " ") in line.replace("_", " ") or name in line for name in names), (argv, line)
    assert list(folder.iterdir()) == [], (argv, line)  # nothing written to the stores


# --------------------------------------------------------------------------------------------------
# issue 32: every URL and DSN form redacted; reproduce.py's errors in one line; SIGTERM


DSN_FORMS = [f"host=db.internal port=5432 password={PASSWORD} dbname=optuna",
             f"host=db.internal password = '{PASSWORD} x' user=u",
             f"dbname=optuna PASSWORD={PASSWORD}",
             f"postgresql+psycopg2://u:{PASSWORD}@db.internal/optuna",
             f"postgresql+psycopg2://db.internal/optuna?user=u&password={PASSWORD}&sslmode=require"]


@pytest.mark.parametrize("dsn", DSN_FORMS)
def test_redact_hides_the_password_of_every_url_and_dsn_form(dsn):
    """Issue 32 (3): userinfo, query string and libpq ``key=value`` strings: one function hides them all,
    and ``scrub`` hides them in a message that quotes them."""
    from study.credentials import redact, scrub

    assert PASSWORD not in redact(dsn) and "***" in redact(dsn)
    assert "db.internal" in redact(dsn) or "dbname=optuna" in redact(dsn)  # only the secret goes
    assert PASSWORD not in scrub(f"could not connect with {dsn!r}: password {PASSWORD} rejected", dsn)


@pytest.mark.parametrize("url,problem", [
    (f"host=db.internal password={PASSWORD} dbname=optuna", "unknown scheme"),
    (f"postgresql+psycopg2://u:SE@CR/ET{PASSWORD}@db.internal/optuna", "malformed"),
    (f"postgresql://user:{PASSWORD}/x@127.0.0.1:1/optuna", "malformed"),
    (f"mysql://u:{PASSWORD[:5]}@{PASSWORD[5:]}@db.internal/optuna", "malformed"),
    (f"postgresql://u:{PASSWORD[:5]}#{PASSWORD[5:]}@db.internal/optuna", "malformed")])
def test_a_libpq_string_or_malformed_url_is_refused_at_planning_without_the_password(sweep, capsys, tmp_path, url, problem):
    """Issue 32 (3): ``--dry-run`` refuses a store URL whose password holds an unencoded '@', '/' or '#'
    (before: exit 0, the password split between user, host and path), in one line without the password."""
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", "--storage", url,
                                               "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    line = _one_error_line(err)
    assert code == 2 and problem in line and "Optuna storage" in line, line
    assert not [PASSWORD[i:i + 4] for i in range(len(PASSWORD) - 3) if PASSWORD[i:i + 4] in out + err], out + err


@pytest.fixture(scope="module")
def reproduce():
    from experiment_scripts import load

    return load("reproduce")


def _reproduce(reproduce, capsys, argv):
    try:
        code = reproduce.main(["--scenario", "fictitious", "--splits", "forget01", "--seeds", "1", "--methods", "ME+GD",
                               "--no-notebooks", *argv])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad_presets(tmp_path) -> dict[str, Path]:
    files = {"syntax": 'description = "x"\n[config.train\nlr = 1\n', "types": 'description = "x"\nstudy = 3\n',
             "section": 'description = "x"\n[config]\ntrain = "fast"\n'}
    for name, text in files.items():
        (tmp_path / f"{name}.toml").write_text(text)
    return {name: tmp_path / f"{name}.toml" for name in files}


@pytest.mark.parametrize("case", ["preset nope", "syntax", "types", "section", "out under a file", "seconds nan",
                                  "seconds negative"])
def test_reproduce_errors_are_one_line_and_write_nothing(reproduce, capsys, tmp_path, monkeypatch, case):
    """Issue 32 (4, 5): reproduce.py's own errors (a preset, an ``--out``, ``--seconds-per-trial``) are one
    ``error:`` line naming what is wrong, exit 2, and create no store."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    presets = _bad_presets(tmp_path)
    extra = {"preset nope": ["--preset", "nope"], "out under a file": ["--out", str(tmp_path / "a-file" / "out")],
             "seconds nan": ["--seconds-per-trial", "nan"], "seconds negative": ["--seconds-per-trial", "-3"]}.get(
        case, ["--preset", str(presets.get(case, ""))])
    db = tmp_path / "mlflow.db"
    code, out, err = _reproduce(reproduce, capsys, ["--preset", "smoke", "--dry-run", "--tracking-uri", f"sqlite:///{db}",
                                                    "--storage", f"sqlite:///{tmp_path}/optuna.db", *extra])
    line = _one_error_line(err)
    assert code == 2, err
    expected = {"preset nope": "preset 'nope' not found", "syntax": "syntax.toml: not valid TOML",
                "types": "types.toml: [study] must be a table", "section": "section.toml: [config.train] must be a table",
                "out under a file": "a-file", "seconds nan": "--seconds-per-trial", "seconds negative": "--seconds-per-trial"}
    assert expected[case] in line, line
    assert "nan min" not in out and not db.exists()


def test_reproduce_hides_the_store_password_of_a_failing_command(reproduce, capsys, tmp_path):
    """Issue 32 (3): the sweep.py command a dry run reports as failing shows its --storage redacted."""
    code, out, err = _reproduce(reproduce, capsys, ["--preset", "smoke", "--dry-run", "--device", "nope",
                                                    "--storage", f"postgresql+psycopg2://u:{PASSWORD}@db.internal/optuna",
                                                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert code == 2 and "--storage postgresql+psycopg2://u:***@db.internal/optuna" in err, err
    assert PASSWORD not in out + err


def test_sigterm_stops_reproduce_like_ctrl_c(reproduce, capsys, tmp_path, monkeypatch):
    """Issue 32 (1): SIGTERM during reproduce.py (here inside a study) is handled like Ctrl-C: one
    message saying how to resume, exit 143."""
    import os
    import signal
    import time
    import types

    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop reproduce.py")

    monkeypatch.setattr(reproduce, "_sweep", lambda: types.SimpleNamespace(main=main))
    code, out, err = _reproduce(reproduce, capsys, ["--preset", "smoke", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                                                    "--storage", f"sqlite:///{tmp_path}/o.db", "--out", str(tmp_path / "out")])
    assert code == 143 and "terminated (SIGTERM)" in err and "Run the same command again" in err, err
    assert "Traceback" not in err


def test_an_executed_notebook_holds_no_password_and_its_kernel_connects_with_it(tmp_path):
    """Issue 32 (3): ``run_notebook`` (reproduce.py, ``python -m study.reporting.analysis --output``) writes the
    tracking URI redacted into the injected-parameters cell and papermill's metadata; the kernel still
    gets the full URI (``study.credentials.with_credentials``, what ``study.reporting.analysis`` connects with)."""
    import hashlib
    import os

    import nbformat

    from study.reporting.analysis import run_notebook

    uri = f"postgresql+psycopg2://u:{PASSWORD}@db.internal/mlflow"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell('tracking_uri = ""', metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell("import hashlib\nfrom study.credentials import with_credentials\n"
                                                "print(hashlib.sha256(with_credentials(tracking_uri).encode()).hexdigest())")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, written = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(notebook, source)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    run_notebook(source, {"tracking_uri": uri}, written)
    text = written.read_text()
    assert PASSWORD not in text and "u:***@db.internal" in text
    assert hashlib.sha256(uri.encode()).hexdigest() in text  # the kernel had the full URI
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # handed back after the run


def _model_folders(tmp_path) -> dict[str, tuple[Path, str]]:
    """Broken copies of a valid model folder (config, tokenizer, weights header, study.json), each with
    the file its error must name."""
    import struct

    def folder(name):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (path / "tokenizer.json").write_text("{}")
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
        return path

    broken = {}
    path = folder("bad-config")
    (path / "config.json").write_text('{"model_type": "llama",')
    broken["config"] = (path, "config.json: the model configuration is not readable JSON")
    path = folder("no-tokenizer")
    (path / "tokenizer.json").unlink()
    broken["tokenizer"] = (path, "no-tokenizer: no tokenizer")
    path = folder("truncated")
    weights = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(weights[:-5])
    broken["truncated"] = (path, "model.safetensors: truncated")
    path = folder("bad-header")
    (path / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    broken["header"] = (path, "model.safetensors: not a readable safetensors file")
    path = folder("bad-meta")
    (path / "study.json").write_text("not json")
    broken["study.json"] = (path, "study.json: the checkpoint's prompt record is not readable JSON")
    return broken


@pytest.mark.parametrize("case", ["config", "tokenizer", "truncated", "header", "study.json"])
def test_a_broken_model_folder_is_refused_at_planning_naming_the_file(sweep, capsys, tmp_path, case):
    """Issue 32 (4, 6): a model folder with a broken ``config.json``, no tokenizer, a truncated or
    unreadable safetensors file, or a ``study.json`` that is not JSON: one line at planning naming the file."""
    path, message = _model_folders(tmp_path)[case]
    code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", "--model", str(path)])
    assert code == 2 and message in _one_error_line(err), err


def test_bad_store_paths_and_data_folders_are_refused_at_planning(sweep, capsys, tmp_path, valid_tofu):
    """Issue 32 (5, 6): an in-memory SQLite store (nothing kept), a store path that is a folder, an empty
    ``journal:`` path, a ``--data-dir`` that is a symlink loop, an ``idontknow.jsonl`` that is a folder."""
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    refusals_folder = _data_copy(valid_tofu, tmp_path / "refusals-folder")
    (refusals_folder / "idontknow.jsonl").mkdir()
    cases = [(["--storage", "sqlite://"], "is in memory"),
             (["--storage", "sqlite:///:memory:"], "is in memory"),
             (["--tracking-uri", "sqlite://"], "is in memory"),
             (["--storage", f"sqlite:///{tmp_path}/a-folder"], "is a folder"),
             (["--storage", f"journal:{tmp_path}/a-folder"], "is a folder"),
             (["--storage", "journal:"], "names no file"),
             (["--data-dir", str(tmp_path / "loop-a")], "--data-dir"),
             (["--data-dir", str(refusals_folder), "--method", "IDK+AP"], "idontknow.jsonl: not a file")]
    for argv, message in cases:
        code, out, err = _run_main(sweep, capsys, ["--preset", "smoke", "--dry-run", *argv])
        assert code == 2 and message in _one_error_line(err), (argv, err)
