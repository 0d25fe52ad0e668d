"""The training batches: question-answer items tokenised, paired and collated (torch).

``QADataset`` (fine-tuning the target and retain models), ``UnlearningDataset`` (a forget item with its
fixed partners: a retain item and a refusal, the parts a method needs) and ``collate`` (right padding,
trimmed to the batch's longest row). The rows come from :mod:`study.inputs.data`, which stays torch-free.
"""

from __future__ import annotations

import torch

from ..errors import StudyInputError


class QADataset(torch.utils.data.Dataset):
    """Plain question-answer fine-tuning (target and retain models): ``{"retain": encoded}`` items."""

    def __init__(self, rows, tokenizer, prompt, max_length: int, part: str = "retain"):
        from .models import encode_qa

        self.items = [encode_qa(tokenizer, prompt, r["question"], r["answer"], max_length) for r in rows]
        self.part = part

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return {self.part: self.items[index], "index": index}


class UnlearningDataset(torch.utils.data.Dataset):
    """Forget items with their fixed partners: one retain item and one refusal template per index.

    Pairing follows the reference code (which reseeds the global RNG with the item index in
    ``__getitem__``) with a local ``torch.Generator`` seeded by the index, so every epoch sees the same
    pairs and the global RNG is never touched. Only the batch parts that the method ``needs`` are built:
    ``forget``, ``forget_idk``, ``retain``, ``retain_idk``, ``forget_retain_answer``.
    """

    def __init__(self, forget, retain, refusals, tokenizer, prompt, max_length: int, needs,
                 forget_labels: str = "answer", seed: int = 0, full_width_parts=()):
        from .models import encode_qa

        if not forget:
            raise StudyInputError("the forget set is empty: nothing to unlearn")
        if not retain and needs & {"retain", "retain_idk", "forget_retain_answer"}:
            raise StudyInputError("the retain set is empty, but the method's regularizer needs retain items")
        self.needs = frozenset(needs)
        self.full_width_parts = frozenset(full_width_parts)
        """Parts collated at their full padded width (``max_length``): see :func:`collate`."""
        self.items = []
        for index, row in enumerate(forget):
            generator = torch.Generator().manual_seed(seed + index)
            retain_row = retain[int(torch.randint(len(retain), (1,), generator=generator))] if retain else None
            refusal = refusals[int(torch.randint(len(refusals), (1,), generator=generator))]
            item = {"index": index}
            build = {
                "forget": lambda: encode_qa(tokenizer, prompt, row["question"], row["answer"], max_length, forget_labels),
                "forget_idk": lambda: encode_qa(tokenizer, prompt, row["question"], refusal, max_length),
                "retain": lambda: encode_qa(tokenizer, prompt, retain_row["question"], retain_row["answer"], max_length),
                "retain_idk": lambda: encode_qa(tokenizer, prompt, retain_row["question"], refusal, max_length),
                "forget_retain_answer": lambda: encode_qa(tokenizer, prompt, row["question"], retain_row["answer"], max_length),
            }
            for part, make in build.items():
                if part in self.needs:
                    item[part] = make()
            self.items.append(item)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def collate(items: list[dict], trim: bool = True, full_width_parts=()) -> dict:
    """Stack batch parts; with ``trim``, cut padding columns that no row uses (no attention and no
    label). That changes no label-based loss (labels there are -100), and ``full`` label mode keeps
    every column anyway because its labels cover the padding (docs/science.md §3, ME+GD's ``mask=false``).

    It does change a loss that averages over *positions* regardless of labels: the KL regularizer
    (KL and LLMU's KL term) divides by ``B * T``, and the reference code pads every retain batch to
    ``max_length``. Parts in ``full_width_parts`` are therefore left at their full padded width
    (``UnlearningDataset.full_width_parts``, set by ``study.training.train.unlearning_dataset``)."""
    batch: dict = {"index": torch.tensor([item["index"] for item in items])}
    for part in items[0]:
        if part == "index":
            continue
        if part.startswith("ref_logprobs"):
            batch[part] = torch.stack([item[part] for item in items])
            continue
        tensors = {key: torch.stack([item[part][key] for item in items]) for key in ("input_ids", "attention_mask", "labels")}
        if trim and part not in full_width_parts:
            used = (tensors["attention_mask"].bool() | (tensors["labels"] != -100)).any(dim=0)
            length = int(used.nonzero().max()) + 1 if used.any() else 1
            tensors = {key: value[:, :length] for key, value in tensors.items()}
        batch[part] = tensors
    return batch
