"""Typed configuration: one dataclass per concern, a docstring per field, validation on construction.

A run's whole configuration is ``RunConfig``; presets (``experiments/presets/*.toml``) are diffs from
its defaults, and ``RunConfig.flat()`` is what MLflow logs as parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from pathlib import Path

from .errors import StudyInputError, one_of
from .methods.hyperparams import HYPERPARAMS
from .credentials import redact

LABEL_MODES = ("auto", "answer", "full", "question_answer")
SEED_MAX = 2**32 - 1
"""Seeds reach NumPy (``RandomState``, Optuna's samplers), whose seeds are 0 .. 2**32 - 1."""
MAX_BATCH = 65_536
"""A micro-batch, or an effective batch (micro-batch x accumulation), beyond this is a typo: its index
list alone would not fit in memory."""
MAX_LENGTH = 1_048_576
"""Sequence lengths beyond this (tokens) are a typo, not a model."""
MAX_EPOCHS = 10_000


def _integer(name: str, value, low: int, high: int) -> None:
    """``value`` must be an integer in [low, high] (bools are not integers here)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StudyInputError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _batches(prefix: str, config) -> None:
    """batch_size, grad_accum and max_length of a training section: positive, and small enough to build."""
    for name in ("batch_size", "grad_accum", "max_length"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StudyInputError(f"{prefix}{name} must be a positive integer, got {value!r}")
    _integer(f"{prefix}batch_size", config.batch_size, 1, MAX_BATCH)
    _integer(f"{prefix}grad_accum", config.grad_accum, 1, MAX_BATCH)
    _integer(f"{prefix}max_length", config.max_length, 1, MAX_LENGTH)
    if config.batch_size * config.grad_accum > MAX_BATCH:
        raise StudyInputError(f"{prefix}batch_size x {prefix}grad_accum must be at most {MAX_BATCH}, "
                              f"got {config.batch_size} x {config.grad_accum}")
    if config.epochs > MAX_EPOCHS:
        raise StudyInputError(f"{prefix}epochs must be at most {MAX_EPOCHS}, got {config.epochs!r}")


def _name(name: str, value) -> None:
    if not isinstance(value, str) or not value.strip() or value != value.strip() or any(c in value for c in "\n\r\0"):
        raise StudyInputError(f"{name} must be a non-empty name or path without surrounding spaces, got {value!r}")


def _positive(name: str, value, allow_zero: bool = False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise StudyInputError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, got {value!r}")


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """Model family (llama2-7b, llama3-8b, smollm2-135m, tiny-llama), Hugging Face id or local path."""
    target: str | None = None
    """A ready target model (e.g. locuslab/tofu_ft_llama2-7b): skips fine-tuning one. None = fine-tune
    ``name`` on the scenario's full data (cached) unless ``name`` already is a TOFU target."""
    dtype: str = "auto"
    """auto (bf16 on GPU and on CPUs with native bf16, else fp32: ``study.inputs.models.default_dtype``), float32,
    bfloat16 or float16 (not on a CPU)."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you ask."""

    def __post_init__(self):
        _name("model.name", self.name)
        if self.target is not None:
            _name("model.target", self.target)
        from .inputs.models import DTYPES

        if self.dtype not in DTYPES:
            raise one_of("dtype", self.dtype, DTYPES)


@dataclass
class DataConfig:
    source: str = "builtin"
    """builtin (generated authors), hub (locuslab/TOFU, online only) or a directory of TOFU-format files."""
    scenario: str = "fictitious"
    """fictitious, continual or real-world (docs/science.md §1)."""
    split: str = "forget01"
    """forget01, forget05 or forget10 (fictitious, continual)."""
    tasks: list[int] = field(default_factory=lambda: [1])
    """Tasks to unlearn in order; one task for fictitious, several for continual; [] = all (real-world)."""
    n_authors: int = 20
    """Number of generated authors (builtin source only)."""
    data_seed: int = 0
    """Seed of the built-in generator."""
    ds_size: int = 300
    """Evaluation rows per set (docs/science.md §1); real-world evaluates every row."""
    retain_authors: int = 0
    """0: all of TOFU (the paper). N > 0: a CPU-scale subset: the target is fine-tuned on the forget
    tasks the run unlearns plus the first N authors (20 QA each) of the retain file, which also form the
    retain set; the retain evaluation must ask about those authors (docs/science.md, TOFU on two CPU
    cores). Fictitious and continual only."""

    def __post_init__(self):
        from .inputs.data import SPLITS
        from .inputs.scenarios import scenario

        self.scenario = scenario(self.scenario).name  # one spelling: an unknown name lists the valid ones
        if self.split not in SPLITS:
            raise one_of("split", self.split, SPLITS)
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in self.tasks):
            raise StudyInputError(f"tasks must be positive integers, got {self.tasks!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise StudyInputError(f"tasks must not repeat (a task is unlearned once), got {self.tasks!r}")
        if scenario(self.scenario).one_task and len(self.tasks) != 1:
            raise StudyInputError(f"the fictitious scenario unlearns one task, got tasks={self.tasks}; use --scenario continual")
        _integer("ds_size", self.ds_size, 1, 10**9)
        _integer("n_authors", self.n_authors, 1, 10_000)
        _integer("data_seed", self.data_seed, 0, SEED_MAX)
        _integer("retain_authors", self.retain_authors, 0, 10_000)
        if self.retain_authors and not scenario(self.scenario).has_splits:
            raise StudyInputError(f"data.retain_authors selects TOFU authors; the {self.scenario} scenario has none "
                                  f"(set it to 0)")


@dataclass
class MethodConfig:
    name: str = "ME+GD"
    """Forget loss + regularizer, e.g. ME+GD, IDK+AP, NPO+KL (docs/science.md §3)."""
    forget_coeff: float = 0.1
    """α: weight of the forget loss."""
    regularization_coeff: float = 1.0
    """Weight of the regularizer."""
    beta: float = 0.1
    """β of NPO, DPO, AP and SimNPO."""
    gamma: float = 0.0
    """SimNPO's reward margin γ, the paper's (docs/science-beyond-paper.md §1); ignored by the other losses."""
    delta: float = 0.0
    """SimNPO's margin as OpenUnlearning's ``delta`` (inside β: γ = β·δ), for configs ported from it; set γ or δ."""
    rmu_layer: int = 7
    """RMU: the steered decoder layer (published 7), used as min(rmu_layer, layers - 2) (docs/science-beyond-paper.md §2)."""
    rmu_steering_coeff: float = 6.5
    """RMU: c, the norm of the random control vector (published 6.5)."""
    rmu_alpha: float = 1200.0
    """RMU: α, the weight of the retain hidden-state term (published 1200)."""
    rmu_averaging: str = "answer_per_sequence"
    """RMU: average over each sequence's answer tokens, then the batch (answer_per_sequence, OpenUnlearning),
    or over every attended token of the batch (attended_tokens) (docs/science-beyond-paper.md §2)."""
    me_variant: str = "reference"
    """ME as the reference code computes it, KL(U‖p) (reference), or as the paper writes it, KL(p‖U) (paper)."""
    forget_labels: str = "auto"
    """Which forget-item tokens carry labels: auto (full for ME, answer otherwise: the reference's mask
    option), answer, full (every padded position), question_answer (the paper's text for ME)."""
    fix_ref_model: bool = False
    """Continual: keep the original model as the reference (NPO, DPO, KL) instead of each task's start."""

    def __post_init__(self):
        if self.forget_labels not in LABEL_MODES:
            raise one_of("forget_labels", self.forget_labels, LABEL_MODES)
        if self.me_variant not in ("reference", "paper"):
            raise one_of("me_variant", self.me_variant, ("reference", "paper"))
        self.method()  # validates the name and coefficients

    def method(self):
        from .methods import Method

        try:
            # Every setting of Method but the name's two parts has a field of the same name here
            # (tests/test_hyperparams.py), so none is forwarded by hand.
            settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(Method)
                        if f.name not in ("forget_loss", "regularizer")}
            return Method.parse(self.name, **settings)
        except ValueError as error:
            raise StudyInputError(str(error)) from None

    def label_mode(self) -> str:
        if self.forget_labels != "auto":
            return self.forget_labels
        return "answer" if self.method().forget_mask_default else "full"


@dataclass
class TrainConfig:
    lr: float = 1e-5
    """Peak learning rate of AdamW (docs/science.md §4)."""
    epochs: float = 5
    """Passes over the forget set; max_steps = floor(epochs * N / effective batch)."""
    batch_size: int = 4
    """Micro-batch per device."""
    grad_accum: int = 4
    """Micro-batches per optimizer step on all devices together (effective batch = batch_size * grad_accum,
    whatever the number of processes; each of W processes accumulates grad_accum / W, so W must divide it)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 1001
    """Seed of data order and initialisation (docs/science.md §4)."""
    max_length: int = 500
    """Padded sequence length (500 TOFU, 300 real-world). ME with full labels averages up to it."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    lora_rank: int = 0
    """LoRA rank (peft); 0 = full fine-tuning."""
    deepspeed: str | None = None
    """DeepSpeed config file (ZeRO-3: experiments/deepspeed/zero3.json); None = plain PyTorch."""
    kl_full_padding: bool = True
    """KL regularizer (KL, LLMU): average over every position of the retain batch padded to
    ``max_length``, as the reference code (default). False trims padding columns no row uses:
    faster, but the KL's average then runs over fewer positions (a different, larger value)."""
    fused_forward: bool = True
    """Each micro-batch's parts (forget, retain, refusals ...) through the model as one batch, and the
    parts a live reference reads through it as one (``compute_loss(fused=True)``); false: one forward
    per part. Losses and gradients agree to float rounding (``tests/test_fused_forward.py``), so it
    changes speed, not results, and a study may resume with the other value. Fusing is for
    accelerators, where small batches leave the device idle; on a CPU it is slower for the methods
    with a KL term, whose retain part is padded to ``max_length`` and pads every other part with it
    (figures per method: ``benchmarks/README.md``, "Latest figures")."""

    def __post_init__(self):
        _positive("lr", self.lr)
        _positive("epochs", self.epochs)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _batches("", self)
        _integer("seed", self.seed, 0, SEED_MAX)
        _integer("lora_rank", self.lora_rank, 0, 65_536)
        if self.deepspeed is not None:
            _name("deepspeed", self.deepspeed)
        if self.lr > 1:
            raise StudyInputError(f"lr must be at most 1, got {self.lr!r}")


@dataclass
class FinetuneConfig:
    """How a base model becomes the target (all data) and retain (retain data only) models."""

    lr: float = 1e-5
    """TOFU fine-tunes Llama-2-7b at 1e-5; a small model needs more."""
    epochs: float = 5
    batch_size: int = 4
    grad_accum: int = 4
    max_length: int = 500
    retain_model: bool = True
    """Also fine-tune a retain model (needed for Forget Quality)."""

    def __post_init__(self):
        _positive("finetune lr", self.lr)
        _positive("finetune epochs", self.epochs)
        _batches("finetune.", self)


@dataclass
class EvalConfig:
    batch_size: int = 32
    """Items per generation batch (scoring batches are larger)."""
    max_length: int = 200
    """Generation length including the prompt (docs/science.md §5)."""
    embedder: str = "builtin"
    """Sentence embedder for Cosine Similarity: builtin (all-MiniLM-L6-v2 from PyPI) or a name/path;
    the paper used paraphrase-MiniLM-L6-v2."""
    nli: str | None = None
    """NLI model for Entailment (the paper's: sileod/deberta-v3-base-tasksource-nli); None = missing."""
    per_epoch: bool = False
    """Evaluate after every epoch (needed for pruning)."""
    holdout: bool = False
    """Also score the split's holdout set when the data has one (built-in data does; TOFU directories
    may carry holdout01/05/10): membership-inference AUCs and PrivLeak (docs/science-beyond-paper.md §3)."""
    earlier_tasks: bool = False
    """Continual, beyond the paper: after each task also evaluate the forget sets of the tasks unlearned
    before it in the run (set ``earlier_forget``, in neither MU nor FE), so whether forgetting holds or
    comes back is read from the data (docs/science-beyond-paper.md §5). A scenario that does not unlearn
    tasks in sequence has no earlier task: nothing is added (so one ``--set`` can serve every scenario)."""
    known_rows: str = ""
    """A file of the general-set rows the untuned model answers (``experiments/probe_knowledge.py
    --known-out``; a path, or one relative to the repository): Real Authors / World Facts (real-world: the
    neighbours) keep only those, before ``data.ds_size``, as the built-in sets were chosen (docs/science.md,
    TOFU on two CPU cores). Empty: every row, as the paper."""

    def __post_init__(self):
        for name in ("batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StudyInputError(f"eval.{name} must be a positive integer, got {value!r}")
        _integer("eval.batch_size", self.batch_size, 1, MAX_BATCH)
        _integer("eval.max_length", self.max_length, 1, MAX_LENGTH)
        _name("eval.embedder", self.embedder)
        if self.nli is not None:
            _name("eval.nli", self.nli)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def flat(self) -> dict[str, object]:
        """``section.field -> value``: the parameters MLflow logs."""
        out = {}
        for section in dataclasses.fields(self):
            for key, value in dataclasses.asdict(getattr(self, section.name)).items():
                out[f"{section.name}.{key}"] = value
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Build from nested dicts (a preset or a saved configuration); unknown keys are errors."""
        sections = {}
        for section in dataclasses.fields(cls):
            values = dict(data.get(section.name, {}))
            section_cls = section.default_factory().__class__
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(values) - known
            if unknown:
                raise StudyInputError(f"unknown setting {section.name}.{sorted(unknown)[0]}; valid: {', '.join(sorted(known))}")
            sections[section.name] = section_cls(**values)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise StudyInputError(f"unknown section {sorted(unknown)[0]!r}; valid: {', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**sections)

    def replace(self, **changes: dict) -> "RunConfig":
        """A copy with ``section={field: value}`` changes applied (validated)."""
        data = self.to_dict()
        for section, values in changes.items():
            data[section].update(values)
        return RunConfig.from_dict(data)


# --------------------------------------------------------------------------------------------------
# The study over trials: what a sweep runs beyond one trial's RunConfig


# The stores a sweep uses unless told otherwise (sweep.py, study.search, study.reporting.analysis read these).
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
"""MLflow tracking store, relative to the working directory (the checkout)."""
DEFAULT_EXPERIMENT = "unlearning-study"
"""MLflow experiment name."""
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
"""Optuna storage, beside the MLflow store."""
SYSTEM_METRICS_S = 10.0
"""Seconds between samples of a trial's system metrics by default (MLflow's own default interval).
Measured here: 20-25 ms of CPU per sample, 0.22% of one core at this interval (README)."""

SAMPLERS = ("tpe", "grid", "paper")
OBJECTIVES = ("pareto", "average", "model_utility", "forget_efficacy")
KEEP = ("best", "all", "none")
COLLECTIVE_TIMEOUT_S = 1800  # default seconds a collective call (all-reduce ...) waits for the other ranks under torchrun
HEARTBEAT_S = 30  # default Optuna heartbeat (s); a trial silent for 2x this long is failed by the next worker
MAX_FAILURES = 5  # a worker stops a study after this many failed trials in a row
MAX_TRIALS = 100_000
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql", "journal")
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")



@dataclass
class StudySettings:
    """What a sweep runs, beyond one trial's ``RunConfig``: the Optuna study (name, methods, trials, sampler,
    objective, storage), where its runs go (tracking URI, experiment) and its policies (checkpoints,
    pruning, heartbeat, failures). Checked on construction, before any store is touched."""

    study_name: str
    methods: list[str]
    n_trials: int = 4
    sampler: str = "tpe"
    objective: str = "pareto"
    storage: str = DEFAULT_STORAGE
    tracking_uri: str = DEFAULT_TRACKING_URI
    experiment: str = DEFAULT_EXPERIMENT
    seed: int = 0
    keep_checkpoints: str = "best"
    prune: bool = False
    preset: str = "default"
    space: dict = dataclasses.field(default_factory=dict)
    """Range overrides ``name -> [low, high]`` (e.g. a preset's learning rates for a small model)."""
    heartbeat: int = HEARTBEAT_S
    """Seconds between a running trial's heartbeats; a trial silent for twice as long (its worker was
    killed) is failed, and its MLflow run ended FAILED, by the next worker that starts a trial."""
    max_failures: int = MAX_FAILURES
    """Stop the study after this many failed trials in a row (a setting that always diverges)."""
    fixed: list[str] = dataclasses.field(default_factory=list)
    """Searchable hyper-parameters the user fixed (``--set train.lr=...``): not searched, the trial
    configuration's value is used."""
    system_metrics: float = SYSTEM_METRICS_S
    """Seconds between samples of MLflow's system metrics (``system/*``: CPU, memory, disk, network,
    GPU) logged to each trial's run while it trains and evaluates; 0 = off."""
    collective_timeout: int = COLLECTIVE_TIMEOUT_S
    """Under torchrun: seconds a collective call of the training (all-reduce, gather) waits for the other
    ranks before the trial fails, so a rank that hangs ends the trial instead of the job waiting forever."""

    def __post_init__(self):
        check_study_name(self.study_name)
        check_store_url("Optuna storage", self.storage, STORAGE_SCHEMES)
        check_store_url("tracking store", self.tracking_uri, TRACKING_SCHEMES)
        if not isinstance(self.experiment, str) or not self.experiment.strip() or len(self.experiment) > 256 \
                or any(ord(c) < 32 for c in self.experiment):
            raise StudyInputError(f"experiment name must be 1 to 256 printable characters, got {self.experiment!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= SEED_MAX:
            raise StudyInputError(f"seed must be an integer from 0 to {SEED_MAX} (NumPy's range), got {self.seed!r}")
        if self.sampler not in SAMPLERS:
            raise one_of("sampler", self.sampler, SAMPLERS)
        if self.objective not in OBJECTIVES:
            raise one_of("objective", self.objective, OBJECTIVES)
        if self.keep_checkpoints not in KEEP:
            raise one_of("keep-checkpoints policy", self.keep_checkpoints, KEEP)
        if not isinstance(self.n_trials, int) or isinstance(self.n_trials, bool) or not 1 <= self.n_trials <= MAX_TRIALS:
            raise StudyInputError(f"n_trials must be a positive integer up to {MAX_TRIALS}, got {self.n_trials!r}")
        for name in ("heartbeat", "max_failures", "collective_timeout"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise StudyInputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
            if getattr(self, name) > 10**6:
                raise StudyInputError(f"{name} must be at most 1000000, got {getattr(self, name)!r}")
        if isinstance(self.system_metrics, bool) or not isinstance(self.system_metrics, (int, float)) \
                or not (self.system_metrics == 0 or 0.1 <= self.system_metrics <= 3600):
            raise StudyInputError(f"system_metrics must be 0 (off) or seconds from 0.1 to 3600, got {self.system_metrics!r}")
        if self.prune and self.objective == "pareto":
            raise StudyInputError("pruning needs a single objective: add --objective average (or model_utility, forget_efficacy)")
        if not self.methods:
            raise StudyInputError("no method given; e.g. --method ME+GD")
        from .methods import Method  # the registry (torch): imported when settings are checked

        for name in self.methods:
            try:
                Method.parse(name)
            except ValueError as error:
                raise StudyInputError(str(error)) from None
        for name, bounds in self.space.items():
            if name not in HYPERPARAMS:
                raise one_of("searchable hyper-parameter", name, HYPERPARAMS)
            try:
                low, high = (float(b) for b in bounds)
                dataclasses.replace(HYPERPARAMS[name], low=low, high=high, default=None)
            except (TypeError, ValueError):
                raise StudyInputError(f"search range of {name} must be [low, high] with 0 < low < high, got {bounds!r}") from None


def check_study_name(name) -> None:
    """A study name is one printable line of at most 200 characters without ``/``, ``#`` or ``..``:
    it becomes Optuna study names (``<name>/<method>``), MLflow tags and run names."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or name != name.strip() \
            or any(not c.isprintable() for c in name) or "/" in name or "\\" in name or "#" in name or ".." in name:
        raise StudyInputError(f"study name must be 1 to 200 printable characters without '/', '\\', '#' or '..', "
                              f"got {name!r}"[:300])


def check_store_url(what: str, url, schemes: tuple[str, ...]) -> None:
    """A store URL with a known scheme (``scheme://...`` or ``journal:<file>``); checked before any store
    is touched. The message shows the URL redacted."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if isinstance(url, str) and ":" in url else ""
    if not isinstance(url, str) or scheme not in schemes or (scheme != "journal" and "://" not in url) \
            or any(not c.isprintable() for c in url):
        shown = redact(url) if isinstance(url, str) else url
        raise StudyInputError(f"{what} {shown!r}: unknown scheme; valid: "
                              + ", ".join(f"{s}:<file>" if s == "journal" else f"{s}://..." for s in schemes))
    if scheme == "sqlite" and (not url.startswith("sqlite:///") or url[len("sqlite:///"):].split("?")[0] in ("", ":memory:")):
        raise StudyInputError(f"{what} {redact(url)!r} is in memory: nothing would be kept; name a file, "
                              "e.g. sqlite:///mlruns/optuna.db")
    if scheme in ("sqlite", "journal"):
        file = url[len("journal:"):] if scheme == "journal" else url[len("sqlite:///"):].split("?")[0]
        if not file.strip() or Path(file).expanduser().is_dir():
            raise StudyInputError(f"{what} {redact(url)!r}: {'is a folder' if file.strip() else 'names no file'}; "
                                  f"name a file, e.g. {'journal:mlruns/optuna.log' if scheme == 'journal' else 'sqlite:///mlruns/optuna.db'}")
    if scheme not in ("sqlite", "journal", "file"):  # a server: user:password@host:port/database
        rest = url.split("://", 1)[1]
        authority, _, path = rest.partition("?")[0].partition("/")
        if authority.count("@") > 1 or "@" in path or "#" in rest:
            raise StudyInputError(f"{what} {redact(url)!r} is malformed: an unencoded '@', '/' or '#' in the user "
                                  "name or password; percent-encode them (urllib.parse.quote(password, safe=''))")
