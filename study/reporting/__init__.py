"""Reading the runs back: runs and curves frames, tables and figures (``analysis``, what the notebooks
use), seeded reproductions with intervals and the paper's claims (``results``), the committed record of a
study (``exports``) and the methods' Pareto fronts over their own spaces (``sensitivity``)."""
