"""Evaluation: the per-item metric registry, Model Utility and Forget Efficacy (``metrics``), and one
evaluation of a model on a scenario's sets (``evaluate``, the public entry, which describes the layout of
its parts: ``engine``, ``generation``, ``scoring``, ``items``, ``summary``, ``metric_models``, ``reference``)."""
