"""Presets and ``--set`` overrides: the one loader from a preset name to a validated ``RunConfig``.

A preset (``experiments/presets/<name>.toml``, or any ``.toml`` path) has a ``description``, a
``[study]`` table (sweep.py's study settings) and ``[config.<section>]`` tables, each a diff from
``study/config.py``'s defaults. ``--set section.field=value`` (a TOML value; bare text is taken as a
string) overrides one field. sweep.py, ``study.trial.distributed``, experiments/reproduce.py and the
benchmarks all read presets through here, so a preset or an override means the same everywhere.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path

from .errors import StudyInputError
from .paths import ROOT

PRESETS = ROOT / "experiments" / "presets"
"""Where the named presets live."""


def available() -> dict[str, Path]:
    """Preset name -> file, sorted by name."""
    return {p.stem: p for p in sorted(PRESETS.glob("*.toml"))}


def path_of(preset: str | Path) -> Path:
    """The file of a preset name or ``.toml`` path; an unknown one is an error that lists the names."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS / f"{preset}.toml"
    if not path.is_file():
        raise StudyInputError(f"preset {str(preset)!r} not found; presets: {', '.join(available())}, or a .toml path")
    return path


def read(preset: str | Path) -> dict:
    """The whole preset: ``{"description": ..., "study": {...}, "config": {section: {...}}}`` (the two
    tables always present, as fresh dicts the caller may change)."""
    path = path_of(preset)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StudyInputError(f"preset {path}: not valid TOML: {error}") from None
    tables = {"study": data.get("study", {}), **{f"config.{k}": v for k, v in data.get("config", {}).items()}
              } if isinstance(data.get("config", {}), dict) else {"config": data["config"]}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise StudyInputError(f"preset {path}: [{name}] must be a table, got {type(table).__name__} {table!r}"[:300])
    if not isinstance(data.get("description", ""), str):
        raise StudyInputError(f"preset {path}: description must be a string")
    return {"description": data.get("description", ""), "study": dict(data.get("study", {})),
            "config": {k: dict(v) for k, v in data.get("config", {}).items()}}


def parse_setting(item: str) -> tuple[str, str, object]:
    """``"section.field=value"`` -> (section, field, value); the value is read as TOML (``1e-5``,
    ``true``, ``[1, 2]``, ``"text"``), and taken as plain text where it is not TOML."""
    key, sep, text = item.partition("=")
    section, dot, field = key.strip().partition(".")
    if not sep or not dot or not section or not field:
        raise StudyInputError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=1e-5")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return section, field, value


def apply_settings(config: dict, settings: Iterable[str]) -> list[str]:
    """Write each ``--set`` item into ``config`` (``{section: {field: value}}``); returns the keys set,
    ``section.field``, in order."""
    keys = []
    for item in settings:
        section, field, value = parse_setting(item)
        config.setdefault(section, {})[field] = value
        keys.append(f"{section}.{field}")
    return keys


def check_types(config: dict) -> None:
    """Each value against its field's type, before any dataclass uses it (a name must be text, a batch
    size an integer ...). Unknown sections and fields are left to ``RunConfig.from_dict``, which lists
    the valid ones."""
    from .config import RunConfig

    def fits(value, hint) -> bool:
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            return any(fits(value, arg) for arg in typing.get_args(hint))
        if typing.get_origin(hint) is list:
            return isinstance(value, list) and all(fits(v, typing.get_args(hint)[0]) for v in value)
        if hint is type(None):
            return value is None
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, hint)

    for section in dataclasses.fields(RunConfig):
        hints = typing.get_type_hints(section.default_factory)
        for key, value in config.get(section.name, {}).items():
            if key in hints and not fits(value, hints[key]):
                expected = str(hints[key]).replace("<class '", "").replace("'>", "").replace("typing.", "")
                raise StudyInputError(f"setting {section.name}.{key} must be of type {expected}, got {value!r}")


def build(config: dict):
    """``RunConfig`` from ``{section: {field: value}}``, type-checked; a bad setting is one clear error."""
    from .config import RunConfig

    check_types(config)
    try:
        return RunConfig.from_dict(config)
    except TypeError as error:
        raise StudyInputError(f"bad setting: {error}") from None


def run_config(preset: str | Path, method: str | None = None, settings: Iterable[str] = ()):
    """The ``RunConfig`` of a preset, a method name (replacing the preset's) and ``--set`` overrides."""
    config = read(preset)["config"]
    apply_settings(config, settings)
    if method:
        config.setdefault("method", {})["name"] = method
    return build(config)
