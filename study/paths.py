"""Where the repository is, and a file a preset names relative to it.

Presets name repository files by relative paths (``experiments/deepspeed/zero3.json``,
``experiments/known/smollm2-135m-tofu.json``) so that a clone anywhere reads the same files; a path that
exists from the working directory, or an absolute one, is taken as given."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (the folder that holds ``study/``)."""


def repository_file(path: str | Path) -> Path:
    """``path`` as given when it names a file from here (or is absolute), else the same path under
    :data:`ROOT` when that is a file; otherwise ``path`` unchanged, for the caller's "not found" line."""
    path = Path(path).expanduser()
    if not path.is_file() and not path.is_absolute() and (ROOT / path).is_file():
        return ROOT / path
    return path
