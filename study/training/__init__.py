"""Training: the thin loop (``train``: unlearning and fine-tuning, one fit interface), DeepSpeed ZeRO-3 on
it (``zero``), and the ``torchrun`` entry point of one multi-process trial (``distributed``). The losses
it optimises are :mod:`study.methods`."""
