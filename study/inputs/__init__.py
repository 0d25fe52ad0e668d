"""What a run reads: the question-answer sets (``data``: sources, schema, the per-scenario loaders; ``builtin``:
the generated authors), the scenario registry (``scenarios``), the training batches (``batches``) and the
models with their prompt formats and checkpoints (``models``)."""
