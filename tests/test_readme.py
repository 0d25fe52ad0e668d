"""Every shell command in the README's fenced code blocks, executed or parse-checked, so none can rot.

Each command is matched to exactly one checker below. Cheap commands run for real (``--help``,
``--dry-run``, ``export``); the expensive ones (studies, servers, the UIs, GPU and ``torchrun``
commands, ``make demo`` / ``make test``) are checked for their script or entry point and run only as
far as their options parse: ``sweep.py`` with ``--dry-run`` appended, ``make -n``, the entry point's
own parser with the work replaced by a recorder. A command no checker claims fails the test.

Placeholder data directories (``/path/to/...``) are replaced by the shared data directory (the tests'
``shared_data`` fixture: skipped locally without it, a failure under CI).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# Words that start a command: an untagged block holding one of them must be tagged (and so checked).
COMMAND_WORDS = {"python", "python3", "make", "torchrun", "export", "mlflow", "jupyter", "pip", "conda", "papermill"}
VENV = ".venv/bin/"


@dataclass
class Command:
    line: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # exported earlier in the same block

    def __str__(self) -> str:
        return self.line


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S)]


def readme_commands(text: str | None = None) -> list[Command]:
    """The commands of the shell blocks, one per line (``\\`` continues a line), comments and a trailing
    ``&`` removed; ``export`` lines are commands too and set the environment of the block's later ones."""
    commands = []
    for language, body in fenced_blocks(README.read_text() if text is None else text):
        if language not in SHELL_LANGUAGES:
            continue
        env: dict[str, str] = {}
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if not argv:
                continue
            if argv[-1] == "&":
                argv = argv[:-1]
            line = shlex.join(argv)
            own = {}  # NAME=VALUE words before the program: its environment
            while argv[0] != "export" and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
                own.update([argv.pop(0).split("=", 1)])
            commands.append(Command(line, argv, {**env, **own}))
            if argv[0] == "export":
                env.update(item.split("=", 1) for item in argv[1:])
    return commands


COMMANDS = readme_commands()


# --------------------------------------------------------------------------------------------------
# Checkers: each returns normally when the command ran or parsed, and fails otherwise.


def _program(argv: list[str]) -> list[str]:
    """``python X`` / ``.venv/bin/python X`` -> ``[X, ...]``; other ``.venv/bin/`` tools keep their name."""
    head = argv[0].removeprefix(VENV)
    if head in ("python", "python3"):
        return argv[1:]
    return [head, *argv[1:]]


def _placeholders(args: list[str], request) -> list[str]:
    out = list(args)
    for i, value in enumerate(out):
        if value.startswith("/path/to/"):
            out[i] = str(request.getfixturevalue("shared_data"))
    return out


def check_make(command: Command, request, monkeypatch, capsys) -> None:
    """``make TARGET``: the target exists and its recipe expands (``make -n``, nothing run)."""
    result = subprocess.run(["make", "-n", *command.argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if command.argv[1:] == ["demo"]:
        assert "experiments/sweep.py" in result.stdout
    if command.argv[1:] == ["test"]:
        assert "ruff check" in result.stdout and "pytest" in result.stdout


def check_export(command: Command, request, monkeypatch, capsys) -> None:
    """``export NAME=VALUE``: a variable the code reads (the later commands of the block get it)."""
    sources = (ROOT / "experiments" / "sweep.py").read_text() + (ROOT / "experiments" / "services.py").read_text()
    for item in command.argv[1:]:
        name, _, value = item.partition("=")
        assert value, f"export without a value: {item}"
        # MLflow itself reads MLFLOW_TRACKING_URI; sweep.py and services.py read both.
        assert name in sources, f"{name} is read by nothing in experiments/"


def check_sweep(command: Command, request, monkeypatch, capsys) -> None:
    """``experiments/sweep.py``: ``--help`` runs; any other command runs with ``--dry-run`` (its plan, no
    training), in this process, with the block's exported variables."""
    from experiment_scripts import load

    sweep = load("sweep")
    args = _placeholders(_program(command.argv)[1:], request)
    for name, value in command.env.items():
        monkeypatch.setenv(name, value)
    if "--help" in args:
        with pytest.raises(SystemExit) as exit_:
            sweep.main(args)
        assert exit_.value.code == 0
        assert "--preset" in capsys.readouterr().out
        return
    if "--dry-run" not in args:
        args.append("--dry-run")
    monkeypatch.chdir(ROOT)
    assert sweep.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("study "), out[:500]
    for value in command.env.values():  # exported URLs: shown redacted, never with their password
        assert "PASSWORD" not in out


def check_services(command: Command, request, monkeypatch, capsys) -> None:
    """``experiments/services.py up|init``: the real parser and ``_main``; the servers and store creation
    replaced by recorders."""
    from experiment_scripts import load

    services = load("services")
    args = _program(command.argv)[1:]
    for name, value in command.env.items():
        monkeypatch.setenv(name, value)
    calls = []

    def no_server(*a, **k):
        raise services.ServiceError("not started by the README test")

    monkeypatch.setattr(services, "init_stores", lambda *a: calls.append(a))
    monkeypatch.setattr(services, "postgres", no_server)
    monkeypatch.setattr(services, "mlflow_server", no_server)
    code = services._main(args)
    err = capsys.readouterr().err
    if args[0] == "init":
        assert code == 0, err
        assert calls and calls[0][0] == command.env.get("OPTUNA_STORAGE", calls[0][0])
    else:
        assert code == 2 and "not started by the README test" in err, err


def check_reproduce(command: Command, request, monkeypatch, capsys) -> None:
    """``experiments/reproduce.py``: runs with ``--dry-run`` appended (its plan, its estimate, and each
    setting's sweep.py command through sweep.py's own ``--dry-run``; nothing trained), in this process."""
    from experiment_scripts import load

    args = _placeholders(_program(command.argv)[1:], request)
    if "--dry-run" not in args:
        args.append("--dry-run")
    monkeypatch.chdir(ROOT)
    assert load("reproduce").main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "studies" in out and "estimate:" in out and "checked:" in out, out[-2000:]


def check_gpu_check(command: Command, request, monkeypatch, capsys) -> None:
    """``experiments/gpu_check.py`` (a minute on a GPU): its options parse."""
    from experiment_scripts import load

    load("gpu_check").build_parser().parse_args(_program(command.argv)[1:])


def check_analysis(command: Command, request, monkeypatch, capsys) -> None:
    """``python -m study.reporting.analysis NOTEBOOK ...``: the real parser; the notebook exists; its execution is
    replaced by a recorder (the notebooks are executed by tests/test_notebooks.py)."""
    from study.reporting import analysis

    args = _program(command.argv)[2:]
    calls = []
    monkeypatch.setattr(analysis, "run_notebook", lambda path, parameters, output: calls.append((path, parameters)))
    monkeypatch.chdir(ROOT)
    assert analysis.main(args) == 0
    (path, parameters), = calls
    assert (ROOT / path).is_file(), path
    assert set(parameters) >= {"tracking_uri", "experiment"}


def check_torchrun(command: Command, request, monkeypatch, capsys) -> None:
    """``torchrun ... experiments/sweep.py ...`` or ``torchrun ... -m study.trial.distributed ...``: torchrun's own
    parser, then the script's; the sweep's plan is checked as each of the ``--nproc_per_node`` processes checks
    it (the batch geometry over that many processes, the DeepSpeed config), the entry's configuration as it
    builds it (no process is started)."""
    from torch.distributed.run import get_args_parser

    from study.trial import distributed

    launch = get_args_parser().parse_args(command.argv[1:])
    if not launch.module:
        from experiment_scripts import load

        assert launch.training_script == "experiments/sweep.py", launch
        sweep = load("sweep")
        monkeypatch.setattr(sweep, "world_size", lambda: int(launch.nproc_per_node))
        monkeypatch.chdir(ROOT)
        cfg, settings, _ = sweep.plan(sweep.build_parser().parse_args([*launch.training_script_args, "--dry-run"]))
        assert cfg.train.deepspeed and settings.methods
        return
    assert launch.training_script == "study.trial.distributed", launch
    args = distributed.build_parser().parse_args(launch.training_script_args)
    monkeypatch.setenv("WORLD_SIZE", str(launch.nproc_per_node))
    cfg, _ = distributed._configure(args)
    assert cfg.method.name == (args.method or cfg.method.name) and cfg.train.deepspeed


def check_mlflow_ui(command: Command, request, monkeypatch, capsys) -> None:
    """``.venv/bin/mlflow ui ...``: the venv is the Makefile's, the options parse with MLflow's own CLI,
    the variables set before it are MLflow's, and the command is the one ``sweep.py`` prints
    (``study.trial.tracking.ui_command``)."""
    from mlflow import environment_variables
    from mlflow.cli import cli

    from study.config import DEFAULT_TRACKING_URI
    from study.trial.tracking import ui_command

    _check_venv(command)
    argv = _program(command.argv)
    assert command.line == ui_command(DEFAULT_TRACKING_URI)
    for name in command.env:
        assert hasattr(environment_variables, name), f"MLflow reads no {name}"
    group = cli.make_context("mlflow", argv[1:])
    name, *rest = argv[1:]
    cli.get_command(group, name).make_context(name, rest, parent=group)


def _check_venv(command: Command) -> None:
    if command.argv[0].startswith(VENV):
        assert re.search(r"^VENV\s*:=\s*\.venv$", (ROOT / "Makefile").read_text(), re.M), "the Makefile's venv moved"


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def check_pip_install(command: Command, request, monkeypatch, capsys) -> None:
    """``pip install -e '.[EXTRA]'`` (not run: it downloads): every extra exists in pyproject.toml."""
    _check_venv(command)
    argv = _program(command.argv)
    if argv[:2] == ["-m", "pip"]:
        argv = argv[1:]
    assert argv[:2] == ["pip", "install"], argv
    targets = [a for a in argv[2:] if not a.startswith("-")]
    assert targets, argv
    for target in targets:
        match = re.fullmatch(r"\.\[([\w,-]+)\]", target)
        assert match, f"installs {target!r}: only the project's own extras are checked"
        for extra in match.group(1).split(","):
            assert extra in _extras(), f"no extra {extra!r} in pyproject.toml"


def check_jupyter_lab(command: Command, request, monkeypatch, capsys) -> None:
    """``.venv/bin/jupyter lab DIR`` (a server, not run): the directory exists, and JupyterLab is what the
    README's install line brings (the ``notebooks`` extra)."""
    _check_venv(command)
    argv = _program(command.argv)
    assert argv[:2] == ["jupyter", "lab"], argv
    for path in argv[2:]:
        assert (ROOT / path).is_dir(), path
    assert any(r.startswith("jupyterlab") for r in _extras()["notebooks"])
    # make setup installs the notebooks extra (tests/test_notebooks.py runs `jupyter lab --version`).
    setup = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stderr
    installs = [line for line in setup.stdout.splitlines() if "pip install" in line and " -e " in line]
    assert any(re.search(r"\.\[[\w,-]*\bnotebooks\b[\w,-]*\]", line) for line in installs), installs


def check_papermill(command: Command, request, monkeypatch, capsys) -> None:
    """``.venv/bin/papermill NOTEBOOK OUT -p NAME VALUE ...`` (executed for real by
    tests/test_notebooks.py): papermill's own CLI parses it, papermill is a dependency, the notebook
    exists and has a ``parameters`` cell assigning every ``-p`` name."""
    import nbformat
    from papermill.cli import papermill

    _check_venv(command)
    argv = _program(command.argv)
    assert any(d.startswith("papermill") for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    context = papermill.make_context("papermill", argv[1:])
    notebook = ROOT / context.params["notebook_path"]
    assert notebook.is_file(), notebook
    # The executed copy's folder exists in a fresh clone (tracked), so the line runs as written.
    folder = Path(context.params["output_path"]).parent
    tracked = subprocess.run(["git", "ls-files", str(folder)], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert (ROOT / folder).is_dir() and tracked, f"{folder}/ is not in the repository: papermill cannot write there"
    names = [name for name, _ in context.params["parameters"]]
    assert {"tracking_uri", "experiment"} <= set(names), names
    cells = [c for c in nbformat.read(str(notebook), as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    for name in names:
        assert re.search(rf"^{name} = ", cells[0].source, re.M), f"{notebook.name} takes no parameter {name}"


def checker_for(command: Command):
    argv = _program(command.argv)
    head = command.argv[0].removeprefix(VENV)
    if head == "make":
        return check_make
    if head == "export":
        return check_export
    if head == "torchrun":
        return check_torchrun
    if argv[:2] == ["mlflow", "ui"]:
        return check_mlflow_ui
    if argv[:2] == ["jupyter", "lab"]:
        return check_jupyter_lab
    if head == "papermill":
        return check_papermill
    if argv[:2] == ["pip", "install"] or argv[:3] == ["-m", "pip", "install"]:
        return check_pip_install
    if head in ("python", "python3"):
        scripts = {"experiments/sweep.py": check_sweep, "experiments/services.py": check_services,
                   "experiments/gpu_check.py": check_gpu_check, "experiments/reproduce.py": check_reproduce}
        if argv and argv[0] in scripts:
            assert (ROOT / argv[0]).is_file(), argv[0]
            return scripts[argv[0]]
        if argv[:2] == ["-m", "study.reporting.analysis"]:
            return check_analysis
    return None


# Checkers that import MLflow's CLI or torch's launcher take several seconds each.
SLOW = {check_mlflow_ui, check_torchrun, check_make}


def _param(command: Command):
    checker = checker_for(command)
    marks = [pytest.mark.slow] if checker in SLOW else []
    return pytest.param(command, id=command.line[:80], marks=marks)


# --------------------------------------------------------------------------------------------------


def test_the_readme_has_commands_in_tagged_blocks():
    assert len(COMMANDS) >= 15, [c.line for c in COMMANDS]
    for language, body in fenced_blocks(README.read_text()):
        if language in SHELL_LANGUAGES:
            continue
        for line in body.splitlines():
            words = line.split()
            if words and words[0].removeprefix(VENV) in COMMAND_WORDS:
                pytest.fail(f"a command in a ```{language} block is never checked; tag the block bash: {line}")


def test_every_command_has_a_checker():
    """A new README command needs a checker here (run it, or parse it); none is left unchecked."""
    unclaimed = [c.line for c in COMMANDS if checker_for(c) is None]
    assert not unclaimed, f"README commands neither executed nor parse-checked by tests/test_readme.py: {unclaimed}"


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_readme_command(command, request, monkeypatch, capsys):
    checker = checker_for(command)
    assert checker is not None, f"no checker for {command}"
    checker(command, request, monkeypatch, capsys)


def test_unknown_commands_are_not_claimed():
    """The checker table does not silently accept what it does not know."""
    text = "```bash\npython experiments/nope.py\nmake demo\ncurl http://example.org\npython -m study.reporting.analysis x.ipynb\n```\n"
    claimed = [checker_for(c) is not None for c in readme_commands(text)]
    assert claimed == [False, True, False, True]


def test_a_bad_option_fails_the_sweep_check(request, monkeypatch, capsys):
    """A README command whose option went away fails its check (argparse exits 2)."""
    with pytest.raises(SystemExit) as exit_:
        check_sweep(Command("python experiments/sweep.py --no-such-option", ["python", "experiments/sweep.py",
                                                                               "--no-such-option"]),
                    request, monkeypatch, capsys)
    assert exit_.value.code == 2


def test_science_pointers_name_existing_sections():
    """Docstrings and comments cite ``docs/science.md §N``: every N is a section of that file, and no
    file sends readers to documents a clone does not have."""
    science = (ROOT / "docs" / "science.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", science, re.M))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    cited, stale = set(), []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".ipynb") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"docs/science\.md §(\d+)((?:, ?§\d+|-§\d+)*)", text):
            cited.update(re.findall(r"\d+", match.group(0).split("md", 1)[1]))
        if name != "tests/test_readme.py" and re.search(r"shared/docs|REFERENCE(\.md| §| section)|docs/STYLE\.md", text):
            stale.append(name)
    assert cited and cited <= sections, f"cited sections {sorted(cited - sections)} are not in docs/science.md"
    assert not stale, f"pointers to documents outside the repository in {stale}"


def test_science_published_figures_match_the_code():
    """docs/science.md's published MU / FE table is the one the notebooks compare against."""
    from study.reporting import analysis

    rows = re.findall(r"^\| ([\w+]+) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \|$",
                      (ROOT / "docs" / "science.md").read_text(), re.M)
    table = {m: {split: (float(v[2 * i]), float(v[2 * i + 1])) for i, split in enumerate(analysis.SPLITS)}
             for m, *v in rows}
    assert table == analysis._PUBLISHED


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation but ``-`` and ``_``
    dropped, each space a hyphen; a repeated heading gets ``-1``, ``-2``, ... (code blocks hold no headings)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_heading_anchors_follow_githubs_rule():
    text = "# Results\n## 4. Training settings\n```\n# not a heading\n```\n## TOFU: the `tofu-cpu` preset\n## Results\n"
    assert heading_anchors(text) == {"results", "4-training-settings", "tofu-the-tofu-cpu-preset", "results-1"}


def test_every_link_between_the_projects_documents_resolves():
    """Every relative link in a tracked Markdown file names a file of the repository and, with ``#anchor``,
    a heading of that file: a renamed section or moved document fails here rather than on a reader."""
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    broken, checked = [], 0
    for name in tracked:
        source = ROOT / name
        text = re.sub(r"^```.*?^```", "", source.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (source.parent / path).resolve() if path else source
            checked += 1
            if not file.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
                broken.append(f"{name}: {target} (no such heading)")
    assert checked > 50 and not broken, "\n".join(broken)
