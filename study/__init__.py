"""unlearning-study: the package, one folder per layer, each importing only the layers below it.

* ``errors``, ``paths`` (the repository's files), ``config`` (a run's and a study's settings), ``presets``, ``paper`` (the paper's facts);
* ``inputs``: data, scenarios, batches, models;
* ``methods``: the losses, their registry, the forward pass; ``training``: the loop, ZeRO-3, torchrun;
* ``evaluation``: the metrics and one evaluation;
* ``trial``: one trial (runner, references, its MLflow run);
* ``search``: the study over trials (Optuna);
* ``reporting``: analysis, results, exports, sensitivity.
"""
