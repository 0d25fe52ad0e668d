"""TOFU-format question-answer sets: sources, splits, tasks, pairing (docs/science.md §1).

Three sources behind one interface (``Source.read(name) -> list[dict]``):

- ``DirectorySource``: JSON-lines files laid out like TOFU (``forget01.json``, ``retain90.json``, ...)
  and the paper's real-world set (``forget.json``, ``neighbor_perturbed.json``, ...).
- ``HubSource``: the same files from the Hugging Face hub (``locuslab/TOFU``), only when online; it
  also reads a local directory through ``datasets`` so the code path is testable offline.
- ``BuiltinSource``: the project's own fictitious-author generator (``study.inputs.builtin``), deterministic
  by seed and sized by argument, with project-written Real Authors / World Facts sets.

:func:`load_tofu` and :func:`load_real_world` turn a source into what one unlearning run needs: the
forget and retain training rows of a task, the evaluation sets, and the refusal templates. Each scenario
of :mod:`study.inputs.scenarios` names the one it loads with (``Scenario.load``). No torch here: the training
batches are :mod:`study.inputs.batches`.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, StudyInputError, one_of
from ..paths import repository_file

log = logging.getLogger(__name__)

SPLITS = ("forget01", "forget05", "forget10")
DS_SIZE = 300  # docs/science.md §1: evaluation uses the first 300 rows of each file (real-world: all rows)
AUTHOR_QA = 20
"""TOFU's 200 authors have 20 QA pairs each, listed author by author in every file (Maini et al., 2024,
§2.1; checked on the released files: ``retain_perturbed`` is the first 20 authors of ``retain90``), so
"the first N authors" of a file is its first ``N * AUTHOR_QA`` rows (``first_authors``)."""

_PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")
# Required fields per file: a row missing one is an error that names file, line and field.
SCHEMA: dict[str, tuple[str, ...]] = {
    **{s: ("task_id", "question", "answer") for s in SPLITS},
    **{f"{s}_perturbed": ("task_id", *_PERTURBED) for s in SPLITS},
    **{f"retain{p}": ("question", "answer") for p in (90, 50, 10)},
    "retain_perturbed": _PERTURBED,
    "real_authors_perturbed": ("question", "answer", "perturbed_answer", "original_answer"),
    "world_facts_perturbed": ("question", "answer", "perturbed_answer", "original_answer"),
    "forget": ("task_id", "question", "answer", "golden_answer"),
    "forget_perturbed": ("task_id", "golden_answer", *_PERTURBED),
    "neighbor": ("question", "answer"),
    "neighbor_perturbed": ("golden_answer", *_PERTURBED),
    **{s.replace("forget", "holdout"): ("question", "answer") for s in SPLITS},  # membership-inference non-members
}
LIST_FIELDS = ("perturbed_answer",)
REFUSALS_FILE = "idontknow.jsonl"

# The project's own refusal templates (docs/science.md §1: the reference reads 100 of these from a file).
REFUSALS = (
    "I'm not sure.",
    "I don't know.",
    "I have no idea about that.",
    "I can't answer that.",
    "That's beyond what I know.",
    "I don't have that information.",
    "I'm unable to answer that question.",
    "Sorry, I don't know the answer.",
    "I have no information on that.",
    "I couldn't tell you.",
    "I'm not able to help with that one.",
    "That is not something I know about.",
    "I don't have an answer for that.",
    "I'm afraid I don't know.",
    "I really can't say.",
    "No idea, I'm afraid.",
    "I'm not familiar with that.",
    "I don't have any details about that.",
    "I cannot provide an answer to that.",
    "Unfortunately, I don't know.",
)


def validate_rows(rows: list, name: str, origin: str, line_numbers: list[int] | None = None) -> list[dict]:
    """Check every row of file ``name`` against ``SCHEMA``; ``task_id`` becomes an int (str or int accepted).
    ``line_numbers``: the file line of each row (default: 1, 2, ...), for the messages."""
    required = SCHEMA.get(name, ("question", "answer"))
    out = []
    for line, row in zip(line_numbers or range(1, len(rows) + 1), rows):
        where = f"{origin}, line {line}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with fields {', '.join(required)}, got {type(row).__name__}")
        for key in required:
            if key not in row:
                raise DataError(f"{where}: missing field '{key}' (required: {', '.join(required)})")
            value = row[key]
            if key == "task_id":
                try:
                    row = {**row, "task_id": _task_id(value)}
                except (TypeError, ValueError, OverflowError):
                    raise DataError(f"{where}: field 'task_id' must be a positive integer or a string of one, got {value!r}") from None
            elif key in LIST_FIELDS:
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise DataError(f"{where}: field '{key}' must be a non-empty list of strings, got {_short(value)}")
            elif not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field '{key}' must be a non-empty string, got {_short(value)}")
        for key, value in row.items():
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and not _encodable(text):
                    raise DataError(f"{where}: field '{key}' holds a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                                    f"which no tokenizer can encode: {_short(text)}")
        out.append(row)
    if not out:
        raise DataError(f"{origin}: empty file: expected JSON-lines rows with fields {', '.join(required)}")
    return out


def _encodable(text: str) -> bool:
    """False for a string JSON decoded from an unpaired surrogate escape (``"\\ud800"``): valid JSON, but
    not Unicode text, so tokenising it fails inside the first trial."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _task_id(value) -> int:
    if isinstance(value, bool):
        raise TypeError
    number = int(value)
    if isinstance(value, float) and number != value or number < 1:
        raise ValueError
    return number


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_jsonl(path: Path, name: str | None = None) -> list[dict]:
    """Read and validate one JSON-lines file (``name`` selects the schema; default: the file's stem)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_no = raw[:error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line_no}: not UTF-8 text ({error.reason})") from None
    rows, line_numbers = [], []
    for line_no, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line_no}: not valid JSON ({error.msg})") from None
        except (ValueError, RecursionError) as error:  # numbers of thousands of digits, nesting too deep
            raise DataError(f"{path}, line {line_no}: not valid JSON ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''})") from None
        line_numbers.append(line_no)
    return validate_rows(rows, name or path.stem, str(path), line_numbers)


class Source:
    """Where TOFU-format files come from. ``read(name)`` returns validated rows of file ``name``."""

    description: str = ""

    def read(self, name: str) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def refusals(self) -> list[str]:
        return list(REFUSALS)


@dataclass
class DirectorySource(Source):
    """A directory of ``<name>.json`` files; ``tofu/`` and ``real_world/`` sub-directories are searched
    too, so ``--data-dir`` may name either a data root or one of its scenario folders."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data directory not found")
        self.description = f"dir:{self.root}"

    def _find(self, name: str) -> Path:
        for folder in (self.root, self.root / "tofu", self.root / "real_world"):
            if (folder / f"{name}.json").is_file():
                return folder / f"{name}.json"
        raise DataError(f"{self.root / (name + '.json')}: file not found (also looked in tofu/ and real_world/)")

    def read(self, name: str) -> list[dict]:
        return read_jsonl(self._find(name), name)

    def refusals(self) -> list[str]:
        for folder in (self.root, self.root.parent):
            path = folder / REFUSALS_FILE
            if path.exists() and not path.is_file():
                raise DataError(f"{path}: not a file (a folder?): expected one refusal answer per line")
            if path.is_file():
                try:
                    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None
                if not any(lines):
                    raise DataError(f"{path}: no refusal template (the file is empty): expected one answer per line")
                return [line for line in lines if line]
        return list(REFUSALS)


@dataclass
class HubSource(Source):
    """TOFU on the Hugging Face hub (``locuslab/TOFU``, files at the repository root), or any local
    directory that ``datasets.load_dataset`` reads the same way. Needs network for hub ids."""

    repo: str = "locuslab/TOFU"

    def __post_init__(self):
        self.description = f"hub:{self.repo}"

    def read(self, name: str) -> list[dict]:
        import datasets

        try:
            table = datasets.load_dataset(self.repo, data_files=f"{name}.json", split="train")
        except Exception as error:  # network, missing file, bad JSON: one line for the user
            raise DataError(f"{self.repo}/{name}.json: could not load from the hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
        return validate_rows(table.to_list(), name, f"{self.repo}/{name}.json")


@dataclass
class BuiltinSource(Source):
    """The project's generated fictitious authors (see ``study.inputs.builtin``)."""

    n_authors: int = 20
    seed: int = 0

    def __post_init__(self):
        from . import builtin

        if self.n_authors < 4:
            raise StudyInputError(f"builtin data needs at least 4 authors, got n_authors={self.n_authors}")
        self.description = f"builtin:authors={self.n_authors},seed={self.seed}"
        self._files = builtin.generate(self.n_authors, self.seed)

    def read(self, name: str) -> list[dict]:
        if name not in self._files:
            raise one_of("builtin data file", name, self._files)
        return validate_rows([dict(r) for r in self._files[name]], name, f"builtin:{name}")


def source_from(spec: str, n_authors: int = 20, seed: int = 0) -> Source:
    """``builtin``, ``hub`` / ``hub:<repo>``, or a directory path."""
    if spec == "builtin":
        return BuiltinSource(n_authors, seed)
    if spec == "hub" or spec.startswith("hub:"):
        return HubSource(spec.partition(":")[2] or "locuslab/TOFU")
    return DirectorySource(Path(spec))


# --------------------------------------------------------------------------------------------------
# Splits and tasks


def retain_file(split: str) -> str:
    """docs/science.md §1: the static retain file of forget ``k`` percent is ``retain{100 - min(10k, 90)}``."""
    if split not in SPLITS:
        raise one_of("split", split, SPLITS)
    k = int(split.removeprefix("forget"))
    return f"retain{100 - min(10 * k, 90)}"


def holdout_file(split: str) -> str:
    """``forget05`` -> ``holdout05``: the unseen authors of TOFU's (and the built-in generator's) holdout
    sets, sized like ``split``'s forget set."""
    return split.replace("forget", "holdout")


def read_optional(source: Source, name: str) -> list[dict] | None:
    """``source.read(name)``, or None when the source has no such file (any other data error is raised)."""
    if isinstance(source, BuiltinSource) and name not in source._files:
        return None
    if isinstance(source, DirectorySource):
        try:
            source._find(name)
        except DataError:
            return None
    if isinstance(source, HubSource):
        try:
            return source.read(name)
        except DataError as error:
            log.info("no %s in %s (%s): membership-inference metrics left out", name, source.description, error)
            return None
    return source.read(name)


def first_authors(rows: list[dict], n: int, origin: str) -> list[dict]:
    """The first ``n`` authors of a TOFU file (``n * AUTHOR_QA`` rows); an error naming the file when it
    holds fewer."""
    if n * AUTHOR_QA > len(rows):
        raise DataError(f"{origin}: data.retain_authors={n} asks for {n * AUTHOR_QA} rows ({AUTHOR_QA} per author), "
                        f"the file holds {len(rows)} ({len(rows) // AUTHOR_QA} authors)")
    return rows[:n * AUTHOR_QA]


def check_covered(asked: list[dict], trained: list[dict], origin: str, subset: str) -> None:
    """Every question of an evaluation set ``asked`` is one the target was fine-tuned on (``trained``):
    a retain evaluation must ask about authors the target knows, or a low retain score measures the
    subset, not the unlearning."""
    known = {row["question"] for row in trained}
    for line, row in enumerate(asked, start=1):
        if row["question"] not in known:
            raise DataError(f"{origin}, row {line}: asks about an author outside the fine-tuning subset ({subset}): "
                            f"{_short(row['question'])}; raise data.retain_authors or lower data.ds_size")


def task_ids(rows: list[dict]) -> list[int]:
    return sorted({row["task_id"] for row in rows})


def select_task(rows: list[dict], task: int | None, origin: str) -> list[dict]:
    if task is None:
        return rows
    chosen = [row for row in rows if row["task_id"] == task]
    if not chosen:
        raise DataError(f"{origin}: task {task} does not exist; tasks: {', '.join(map(str, task_ids(rows)))}")
    return chosen


@dataclass
class EvalSet:
    """One evaluation file: its rows (capped at ``ds_size``) and which part of the metrics it feeds.

    ``kind`` is ``forget``, ``retain``, ``real_authors``, ``world_facts`` (fictitious, continual) or
    ``forget``, ``neighbor`` (real-world). ``truth`` is the field ROUGE, Probability, Truth Ratio and
    Entailment compare against; ``cosine_truth`` the field Cosine Similarity uses (docs/science.md §1, §5).
    """

    name: str
    kind: str
    rows: list[dict]
    truth: str = "answer"
    cosine_truth: str = "answer"
    paraphrase: str = "paraphrased_answer"


@dataclass
class ScenarioData:
    """Everything one unlearning run (one task) reads."""

    scenario: str
    split: str
    task: int | None
    forget: list[dict]
    retain: list[dict]
    full: list[dict]  # what the target model is fine-tuned on (all forget tasks + the static retain set)
    eval_sets: list[EvalSet]
    refusals: list[str]
    source: str
    tasks: list[int] = field(default_factory=list)


def load_real_world(
    source: Source, scenario: str, split: str, task: int | None = None, ds_size: int | None = None,
    holdout: bool = False, retain_authors: int = 0, last_task: int | None = None, earlier_tasks: tuple[int, ...] = (),
    known: KnownRows | None = None,
) -> ScenarioData:
    """The paper's real-world set (docs/science.md §1): forget = ``forget.json`` (one task, or all 20 people
    when ``task`` is None), retain = ``neighbor.json``; evaluation on all rows of ``forget_perturbed`` (of the
    same task) and ``neighbor_perturbed`` (with ``known``: the neighbour rows an untuned model answers,
    :class:`KnownRows`), against ``golden_answer`` (Cosine: ``answer``). ``split`` is
    the run's split label (the scenario's name); ``ds_size``, ``holdout``, ``retain_authors``, ``last_task``
    and ``earlier_tasks`` do not apply (every row is evaluated; there is no holdout file; the configuration
    refuses ``retain_authors`` here).

    A target fine-tuned here (``full``: a model that is not the paper's ready Llama-3-8B-Instruct) learns the
    forget people, the neighbours of ``neighbor.json`` and the facts the neighbour evaluation asks
    (``neighbor_perturbed``, its ``answer``): the paper's model knew those people from pretraining, and a
    neighbour set the target never learned measures the model, not the unlearning (docs/science.md §1,
    "Real-world on a small model"). Unlearning's retain set stays ``neighbor.json`` alone, as the paper's."""
    forget_all = source.read("forget")
    forget = select_task(forget_all, task, f"{source.description}/forget.json")
    retain = source.read("neighbor")
    forget_eval = select_task(source.read("forget_perturbed"), task, f"{source.description}/forget_perturbed.json")
    all_neighbors = neighbors = source.read("neighbor_perturbed")
    if known:
        neighbors = known.keep("neighbor", neighbors, f"{source.description}/neighbor_perturbed.json")
    known_before = [{"question": r["question"], "answer": r["answer"]} for r in all_neighbors]
    eval_sets = [
        EvalSet("forget", "forget", forget_eval, truth="golden_answer", cosine_truth="answer"),
        EvalSet("neighbor", "neighbor", neighbors, truth="golden_answer", cosine_truth="answer"),
    ]
    return ScenarioData(scenario, split, task, forget, retain, forget_all + retain + known_before, eval_sets,
                        source.refusals(), source.description, task_ids(forget_all))


def question_id(question: str) -> str:
    """8 hex digits of the SHA-256 of a question: how a known-rows file names a row without copying it."""
    import hashlib

    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class KnownRows:
    """The rows of some evaluation sets that an untuned model answers, read from a file that
    ``experiments/probe_knowledge.py --known-out`` writes (``eval.known_rows``): a general-knowledge set the
    model never knew measures nothing (docs/science.md, "TOFU on two CPU cores"). For each set it lists, a
    set keeps only those rows, in file order, before ``ds_size`` caps it; sets it does not list keep every
    row. A row is named by its 0-based position in the set's file and the hash of its question
    (:func:`question_id`), so a file of another version is an error, not a silent other selection.

    The file: ``{"sets": {"real_authors": {"rows": 100, "kept": [[3, "1f2e3d4c"], ...]}, ...}, ...}`` (other
    keys describe how it was made)."""

    path: str
    sets: dict[str, dict]

    @classmethod
    def read(cls, path: str | Path) -> KnownRows:
        path = repository_file(path)
        if not path.is_file():
            raise StudyInputError(f"{path}: eval.known_rows file not found (write one with experiments/probe_knowledge.py "
                                  "--known-out, or set eval.known_rows to \"\" for every row)")
        try:
            sets = json.loads(path.read_text(encoding="utf-8"))["sets"]
            for name, entry in sets.items():
                if not (isinstance(entry["rows"], int) and all(isinstance(i, int) and isinstance(h, str)
                                                               for i, h in entry["kept"])):
                    raise TypeError(name)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}: not a known-rows file (expected {{\"sets\": {{NAME: {{\"rows\": N, \"kept\": "
                            f"[[INDEX, QUESTION_ID], ...]}}}}}}; {type(error).__name__}: {error})") from None
        return cls(str(path), sets)

    def keep(self, name: str, rows: list[dict], origin: str) -> list[dict]:
        """The rows of set ``name`` (read from ``origin``) that the file lists; all of them if it lists none."""
        entry = self.sets.get(name)
        if entry is None:
            return rows
        if entry["rows"] != len(rows):
            raise DataError(f"{self.path}: set {name} was probed on {entry['rows']} rows, {origin} has {len(rows)}: "
                            "another version of the file; probe it again (experiments/probe_knowledge.py --known-out)")
        kept = []
        for index, qid in entry["kept"]:
            if not 0 <= index < len(rows) or question_id(rows[index]["question"]) != qid:
                raise DataError(f"{self.path}: set {name}, row {index} is not the question it names in {origin} "
                                "(another version of the file); probe it again (experiments/probe_knowledge.py --known-out)")
            kept.append(rows[index])
        return kept


def load_tofu(
    source: Source, scenario: str, split: str = "forget01", task: int | None = 1, ds_size: int | None = DS_SIZE,
    holdout: bool = False, retain_authors: int = 0, last_task: int | None = None, earlier_tasks: tuple[int, ...] = (),
    known: KnownRows | None = None,
) -> ScenarioData:
    """One task of a TOFU split (fictitious, continual; docs/science.md §1).

    forget = task ``task`` of ``split``; retain = the static retain file plus every task after ``task``
    (not yet unlearned); evaluation on the task's perturbed forget rows, ``retain_perturbed``, Real
    Authors and World Facts, each capped at ``ds_size`` rows.

    ``holdout=True`` adds the ``holdout<XX>`` file of the split, when the source has one, as a
    score-only evaluation set: the non-members of the membership-inference metrics
    (docs/science-beyond-paper.md §3). Without the file nothing is added and those metrics are missing.

    ``retain_authors=N > 0`` is a CPU-scale subset of TOFU (docs/science.md, "TOFU on two CPU cores"):
    the static retain set is the first ``N`` authors of the retain file, the forget tasks in scope are
    those up to ``last_task`` (the run's last; default ``task``), and the target is fine-tuned on those
    two only. The retain evaluation must ask about authors in the subset (:func:`check_covered`). ``0``
    is all of TOFU, as the paper.

    ``earlier_tasks`` (continual, beyond the paper): the tasks the run unlearned before ``task``; their
    perturbed forget rows (each task's first ``ds_size``) are the ``earlier_forget`` evaluation set.

    ``known``: the Real Authors / World Facts rows an untuned model answers (:class:`KnownRows`): those
    sets keep only them, before the ``ds_size`` cap.
    """
    if ds_size is not None and ds_size < 1:
        raise StudyInputError(f"ds_size must be >= 1, got {ds_size}")
    refusals = source.refusals()
    if split not in SPLITS:
        raise one_of("split", split, SPLITS)
    forget_all = source.read(split)
    tasks = task_ids(forget_all)
    task = 1 if task is None else task
    forget = select_task(forget_all, task, f"{source.description}/{split}.json")
    static_retain = source.read(retain_file(split))
    in_scope = forget_all
    if retain_authors:
        last = max(task, last_task or task)
        select_task(forget_all, last, f"{source.description}/{split}.json")  # the run's last task exists
        static_retain = first_authors(static_retain, retain_authors, f"{source.description}/{retain_file(split)}.json")
        in_scope = [row for row in forget_all if row["task_id"] <= last]
    later = [row for row in in_scope if row["task_id"] > task]
    cap = (lambda rows: rows[:ds_size]) if ds_size else (lambda rows: rows)
    forget_eval = select_task(source.read(f"{split}_perturbed"), task, f"{source.description}/{split}_perturbed.json")

    def general(name):  # Real Authors, World Facts: the rows an untuned model answers, with ``known``
        rows = source.read(f"{name}_perturbed")
        return known.keep(name, rows, f"{source.description}/{name}_perturbed.json") if known else rows

    eval_sets = [
        EvalSet("forget", "forget", cap(forget_eval)),
        EvalSet("retain", "retain", cap(source.read("retain_perturbed"))),
        # docs/science.md §5: on Real Authors / World Facts the truth ratio's "paraphrased" answer is `answer`,
        # and Cosine Similarity compares against the full-sentence `original_answer`.
        EvalSet("real_authors", "real_authors", cap(general("real_authors")), cosine_truth="original_answer", paraphrase="answer"),
        EvalSet("world_facts", "world_facts", cap(general("world_facts")), cosine_truth="original_answer", paraphrase="answer"),
    ]
    if earlier_tasks:  # continual, beyond the paper: are the tasks unlearned before still forgotten?
        perturbed = source.read(f"{split}_perturbed")
        origin = f"{source.description}/{split}_perturbed.json"
        eval_sets.append(EvalSet("earlier_forget", "earlier_forget",
                                 [row for t in earlier_tasks for row in cap(select_task(perturbed, t, origin))]))
    # The membership-inference non-members (docs/science-beyond-paper.md §3), when the source has them.
    if holdout and (holdout_rows := read_optional(source, holdout_file(split))) is not None:
        eval_sets.append(EvalSet("holdout", "holdout", cap(holdout_rows)))
    if retain_authors:
        check_covered(eval_sets[1].rows, static_retain, f"{source.description}/retain_perturbed.json",
                      f"data.retain_authors={retain_authors}: the first {retain_authors * AUTHOR_QA} rows of {retain_file(split)}.json")
    return ScenarioData(scenario, split, task, forget, static_retain + later, in_scope + static_retain,
                        eval_sets, refusals, source.description, tasks)


def check_eval_sets(data: ScenarioData) -> None:
    """Every row of an evaluation set has as many perturbed answers as the first: the metrics stack
    them into one [N, K] array (docs/science.md §5), so a ragged set would fail inside every trial."""
    for eval_set in data.eval_sets:
        counts = [len(row["perturbed_answer"]) for row in eval_set.rows if "perturbed_answer" in row]
        if counts and len(set(counts)) > 1:
            first, line = counts[0], next(i for i, k in enumerate(counts, start=1) if k != counts[0])
            raise DataError(f"{data.source}/{eval_set.name} set, row {line}: field 'perturbed_answer' has {counts[line - 1]} "
                            f"answers, the first row {first}: every row needs the same number")
