"""The package's layers import one another one way, bottom to top: no circle between modules, not even
through an import inside a function (``study.training.train`` once imported ``study.trial.distributed``
lazily, which imported it back), and no layer importing one above it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "study"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "credentials", "paths"}),
    frozenset({"inputs", "methods"}),
    frozenset({"config", "presets", "paper"}),
    frozenset({"training", "evaluation"}),
    frozenset({"trial"}),
    frozenset({"search"}),
    frozenset({"reporting"}),
)
"""study/'s layers, bottom first (docs/extending.md, "Where things live"): a module of one may import the layers below it and its
own, never one above."""


def module_name(path: Path) -> str:
    """``study/trial/runner.py`` -> ``study.trial.runner``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str], name: str | None = None) -> set[str]:
    """The package modules that ``path`` (module ``name``) imports anywhere in its code: top-level or inside a
    function, relative (``from .x import y``, ``from . import x``, ``from ..x.y import z``) or absolute
    (``study.x.y``). An imported name that is a module counts as that module, else its package does."""
    name = name or module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + ((node.module or "").split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "study":
                base = node.module.split(".")
            else:
                continue
            for alias in node.names:
                full = ".".join([*base, alias.name])
                found.add(full if full in known else ".".join(base))
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("study.")}
    return (found & known) - {name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(path, set(found), name) for name, path in found.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, layer in enumerate(LAYERS) if top in layer), -1)


def test_the_parser_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "study" / "p"
    package.mkdir(parents=True)
    source = package / "probe.py"
    source.write_text("from . import a, b as bee\nfrom .c import x\nimport study.d\nfrom study.e import y\n"
                      "from study import f\nimport torch.distributed\nfrom ..g.h import z\n"
                      "def later():\n    from .i import w\n")
    known = {"study.p.a", "study.p.b", "study.p.c", "study.d", "study.e", "study.f", "study.g.h", "study.p.i", "study.p.probe"}
    assert imported_modules(source, known, "study.p.probe") == known - {"study.p.probe"}


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["study.training.train"] and "study.trial.runner" in graph  # the parse found the package
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"study modules import each other in a circle: {' -> '.join(error.args[1])}") from None
    assert set(order) == set(graph)


def test_every_module_sits_in_a_layer_and_imports_none_above_it():
    graph = import_graph()
    assert not [m for m in graph if m != "study" and layer_of(m) < 0], "a module outside every layer of LAYERS"
    upward = sorted((m, d) for m, deps in graph.items() for d in deps if m != "study" and layer_of(d) > layer_of(m))
    assert not upward, f"imports of a layer above: {upward}"


def test_training_sits_below_deepspeed_and_the_task_loop():
    """study.training.train is the loop; study.training.zero (DeepSpeed) builds on it, study.trial.runner
    chooses between them, study.trial.distributed (the torchrun entry point) drives study.trial.runner."""
    graph = import_graph()
    assert not graph["study.training.train"] & {"study.training.zero", "study.trial.runner", "study.trial.distributed"}
    assert {"study.training.train", "study.training.zero"} <= graph["study.trial.runner"]
    assert "study.trial.distributed" not in graph["study.trial.runner"]
    assert {"study.trial.runner", "study.training.zero"} <= graph["study.trial.distributed"]


def test_the_evaluation_parts_do_not_import_their_entry_and_no_module_borrows_a_private_name():
    """``study.evaluation.*`` are the parts ``study.evaluation.evaluate`` assembles: none imports it back. No module
    imports another's private (``_``-prefixed) name (``references`` once took ``runner._hash``)."""
    graph = import_graph()
    for name in graph:
        if name.startswith("study.evaluation.") and name != "study.evaluation.evaluate":
            assert "study.evaluation.evaluate" not in graph[name], f"{name} imports study.evaluation.evaluate"
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("study")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.relative_to(PACKAGE.parent)} imports private {private} from {node.module}"


def test_the_methods_sit_below_training_and_the_data_below_the_scenarios():
    """study.methods (the losses, their registry, the forward pass) imports only the errors; the training
    loop uses it, never the reverse. study.inputs.data (rows from files) knows no scenario, and no torch:
    each scenario of study.inputs.scenarios names the loader it uses."""
    graph = import_graph()
    methods = set().union(*(deps for name, deps in graph.items() if name.startswith("study.methods")))
    assert {d for d in methods if not d.startswith("study.methods")} == {"study.errors"}
    assert "study.methods" in graph["study.training.train"]
    assert "study.inputs.data" in graph["study.inputs.scenarios"] and "study.inputs.scenarios" not in graph["study.inputs.data"]
    assert "study.inputs.batches" in graph["study.training.train"]
    source = (PACKAGE / "inputs" / "data.py").read_text()
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in imports if "torch" in {a.name.split(".")[0] for a in n.names} | {(getattr(n, "module", "") or "").split(".")[0]}]


def test_a_metric_enters_mu_and_fe_only_when_it_says_so():
    from study.evaluation import metrics as M

    spec = M.MetricSpec("new", True, "new_key")
    assert not spec.in_model_utility and not spec.in_forget_efficacy
    # The paper's aggregates: MU over its six metrics, FE over five (not Token Entropy), docs/science.md §5.
    assert M.MU_METRICS == ("rouge", "probability", "truth_ratio", "token_entropy", "cosine", "entailment")
    assert M.FE_METRICS == ("rouge", "probability", "truth_ratio", "cosine", "entailment")
