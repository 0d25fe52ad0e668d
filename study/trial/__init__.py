"""One trial: the task loop that unlearns and evaluates (``runner``, which knows no tracker), the models a
trial is compared with (``references``: target, retain models), its MLflow run (``runs``, ``tracking``) and
the creation of shared things exactly once across workers (``claims``). The study over trials, Optuna, is
:mod:`study.search`."""
