"""The package's modules import one another one way: no circle, not even through an import inside a
function (``study.train`` once imported ``study.distributed`` lazily, which imported ``study.train``)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "study"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports anywhere in its code: top-level or inside a function,
    relative (``from .train import x``, ``from . import train``) or absolute (``study.train``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "study"):
                parts = (node.module or "").split(".")[1 if node.level == 0 else 0:]
                found |= {parts[0]} if parts and parts[0] else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("study.")}
    return (found & modules) - {path.stem}


SUBPACKAGES = ("evaluation", "methods")
"""Packages inside study/: each is one node of the graph (what any of its modules imports from above)."""


def imported_from_above(package: str, modules: set[str]) -> set[str]:
    """The top-level modules and packages that the modules of ``study/<package>/`` import (``from ..x``)."""
    found = set()
    for path in sorted((PACKAGE / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                parts = (node.module or "").split(".")
                found |= {parts[0]} if parts[0] else {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("study."):
                found.add(node.module.split(".")[1])
    return (found & modules) - {package}


def import_graph() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")} | set(SUBPACKAGES)
    graph = {path.stem: imported_modules(path, modules) for path in sorted(PACKAGE.glob("*.py"))}
    return {**graph, **{p: imported_from_above(p, modules) for p in SUBPACKAGES}}


def test_the_parser_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("from . import a, b as bee\nfrom .c import x\nimport study.d\nfrom study.e import y\n"
                      "from study import f\nimport torch.distributed\nfrom .probe import z\n"
                      "def later():\n    from .g import w\n")
    assert imported_modules(source, set("abcdefg") | {"probe", "distributed"}) == set("abcdefg")


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["train"] and "zero" in graph and "runner" in graph  # the parse found the package
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"study modules import each other in a circle: {' -> '.join(error.args[1])}") from None
    assert set(order) == set(graph)


def test_training_sits_below_deepspeed_and_the_task_loop():
    """study.train is the loop; study.zero (DeepSpeed) builds on it, study.runner chooses between them,
    study.distributed (the torchrun entry point) drives study.runner."""
    graph = import_graph()
    assert not graph["train"] & {"zero", "runner", "distributed"}
    assert graph["zero"] & {"runner", "distributed"} == set()
    assert {"train", "zero"} <= graph["runner"] and "distributed" not in graph["runner"]
    assert {"runner", "zero"} <= graph["distributed"]


def test_the_evaluation_package_imports_nothing_above_it_and_no_module_borrows_a_private_name():
    """``study.evaluation.*`` are the parts ``study.evaluate`` assembles: none imports it back. No module
    imports another's private (``_``-prefixed) name (``references`` once took ``runner._hash``)."""
    for path in sorted((PACKAGE / "evaluation").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert (node.module or "").split(".")[0] != "evaluate", f"{path.name} imports study.evaluate"
    for path in sorted([*PACKAGE.glob("*.py"), *(p for sub in SUBPACKAGES for p in (PACKAGE / sub).glob("*.py"))]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("study")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.relative_to(PACKAGE.parent)} imports private {private} from {node.module}"


def test_the_methods_sit_below_training_and_the_data_below_the_scenarios():
    """study.methods (the losses, their registry, the forward pass) imports only the errors; the training
    loop uses it, never the reverse. study.data (rows from files) knows no scenario: each scenario of
    study.scenarios names the loader it uses."""
    graph = import_graph()
    assert graph["methods"] == {"errors"}
    assert "methods" in graph["train"] and not graph["methods"] & {"train", "runner", "data", "batches"}
    assert "data" in graph["scenarios"] and "scenarios" not in graph["data"]
    assert "batches" in graph["train"]
    imports = [n for n in ast.walk(ast.parse((PACKAGE / "data.py").read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in imports if "torch" in {a.name.split(".")[0] for a in n.names} | {(getattr(n, "module", "") or "").split(".")[0]}]


def test_a_metric_enters_mu_and_fe_only_when_it_says_so():
    from study import metrics as M

    spec = M.MetricSpec("new", True, "new_key")
    assert not spec.in_model_utility and not spec.in_forget_efficacy
    # The paper's aggregates: MU over its six metrics, FE over five (not Token Entropy), docs/science.md §5.
    assert M.MU_METRICS == ("rouge", "probability", "truth_ratio", "token_entropy", "cosine", "entailment")
    assert M.FE_METRICS == ("rouge", "probability", "truth_ratio", "cosine", "entailment")
