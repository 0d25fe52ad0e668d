"""The committed record of a study: every run it used, read from MLflow once and written as files that
rebuild its tables, figures, claims and notebooks with no MLflow store.

An export is a folder (``<results folder>/export/``) holding

* ``runs.parquet``: one row per run and task (``step``: the MLflow step of its values; continual trials
  log every metric once per task, the other runs once), trials and targets alike (``kind``): the columns
  of a runs frame (:func:`study.reporting.analysis.fetch_runs`: every setting read from tags and parameters, every
  logged metric of every set, MU's and FE's terms included; ``data_digest``: the data the trial read),
  then every logged parameter as
  ``param/<key>`` (the whole ``RunConfig``);
* ``items.parquet``: every per-item table the runs logged (``eval/items*.csv``), one row per item, with
  ``run_id`` and ``file`` (``items_task<k>.csv`` / ``items.csv``) in front;
* ``provenance.json``: :data:`FORMAT` and :data:`FORMAT_VERSION`, the commit, date, package versions,
  CPU / GPU and command that made it, the studies it holds, and each data file's SHA-256 and row count.
  Its presence marks a results folder as rebuilt from an export (:data:`MARKER`).

Parquet through pandas / pyarrow: a maintained columnar format that keeps dtypes (nullable integers,
booleans, timestamps, text) exactly, so a frame read back equals the one written, compressed (zstd).
MLflow's own run export would need an MLflow store to read back, which is what an export replaces.

Reading checks everything before a value is used: a missing or truncated file, a file that differs from
the hash ``provenance.json`` recorded, or an export of another :data:`FORMAT_VERSION` raises
:class:`ExportError` with one line naming the file. Writing over an export keeps its runs that the new
rows do not cover (so an export grows study by study) and refuses rows that disagree with it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import StudyInputError
from ..paths import ROOT as REPOSITORY

__all__ = ["FORMAT", "FORMAT_VERSION", "EXPORT_DIR", "MARKER", "RUNS_FILE", "ITEMS_FILE", "ExportError", "Export",
           "has_export", "provenance", "write_export", "read_export", "merge_runs", "last_step", "items_of",
           "finished_trials", "trial_digests"]

FORMAT = "unlearning-study export"
FORMAT_VERSION = 1
"""Raised whenever a column is renamed or removed or a file changes meaning; a reader accepts only its own."""
EXPORT_DIR = "export"
"""The export's folder inside a results folder."""
MARKER = "provenance.json"
"""The file whose presence makes a folder an export (and a results folder one rebuilt from it)."""
RUNS_FILE = "runs.parquet"
ITEMS_FILE = "items.parquet"
PARAM_PREFIX = "param/"
KEY = ("run_id", "step")
"""One row of ``runs.parquet`` per run and step."""
COMPARED = ("model_utility", "forget_efficacy")
"""Values an export and a store must agree on for the runs both hold."""


class ExportError(StudyInputError):
    """An export that cannot be used: the one-line message names the file and what is wrong."""


@dataclass(frozen=True)
class Export:
    """An export read back: ``runs`` (every row of ``runs.parquet``), ``items`` (``items.parquet``) and
    ``provenance`` (``provenance.json``)."""

    folder: Path
    runs: pd.DataFrame
    items: pd.DataFrame
    provenance: dict


def has_export(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (a results folder or an export folder) holds an export (:data:`MARKER`)."""
    folder = Path(folder)
    return (folder / MARKER).exists() or (folder / EXPORT_DIR / MARKER).exists()


def _export_dir(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder if folder.name == EXPORT_DIR or (folder / MARKER).exists() else folder / EXPORT_DIR


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hardware() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        gpu = "unknown (torch absent)"
    return {"cpu": cpu, "cpu_count": str(os.cpu_count()), "gpu": gpu, "platform": platform.platform()}


def provenance(command: str, studies: Iterable[str] = ()) -> dict:
    """What made an export: the format, commit (``study.trial.tracking.code_version``), UTC date, Python and
    package versions, CPU / GPU, the command and the studies."""
    from importlib.metadata import PackageNotFoundError, version

    from ..trial.tracking import code_version, package_versions

    packages = package_versions()
    for name in ("pandas", "pyarrow", "scipy"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "absent"
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "commit": code_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
            "python": platform.python_version(), "packages": dict(sorted(packages.items())), **_hardware(),
            "studies": sorted(set(studies))}


def finished_trials(export: Export | None) -> pd.Series:
    """Per trial study name (``<study>/<method>``) of ``export``, its number of FINISHED trials."""
    if export is None or export.runs.empty:
        return pd.Series(dtype=int)
    runs = last_step(export.runs)
    done = runs[(runs["kind"] == "trial") & (runs["status"] == "FINISHED")]
    return done.groupby("study_name")["run_id"].nunique()


def trial_digests(export: Export | None) -> dict[str, set[str]]:
    """Per trial study name (``<study>/<method>``) of ``export``, the data digests its FINISHED trials recorded
    (``study.trial.runner.data_digest``; none for runs made before the digest was recorded)."""
    if export is None or export.runs.empty or "data_digest" not in export.runs.columns:
        return {}
    runs = last_step(export.runs)
    done = runs[(runs["kind"] == "trial") & (runs["status"] == "FINISHED") & runs["data_digest"].notna()]
    return {name: set(group) for name, group in done.groupby("study_name")["data_digest"]}


def last_step(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of an export's ``runs`` (its last step: the values MLflow reports as the run's),
    without ``step`` and the ``param/*`` columns: the runs frame :func:`study.reporting.analysis.fetch_runs` gives."""
    if runs.empty:
        return runs.drop(columns=[c for c in runs.columns if c == "step" or c.startswith(PARAM_PREFIX)])
    order = runs.reset_index(drop=True).reset_index(names="_row")
    last = order.sort_values(["step", "_row"]).groupby("run_id", sort=False).tail(1).sort_values("_row")
    keep = [c for c in runs.columns if c != "step" and not c.startswith(PARAM_PREFIX)]
    return last[keep].reset_index(drop=True)


def _differs(a, b) -> bool:
    a, b = float(a), float(b)
    return not (math.isnan(a) and math.isnan(b)) and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def merge_runs(old: pd.DataFrame, new: pd.DataFrame, where: str) -> pd.DataFrame:
    """``old``'s rows for the runs ``new`` lacks, then ``new``'s (both export ``runs`` tables). A run in
    both must agree on :data:`COMPARED` at its last step, and a trial study in both must not hold other
    runs in each, else :class:`ExportError` naming ``where`` (the export's runs file) and the run or
    study: nothing is overwritten silently."""
    if old.empty:
        return new.reset_index(drop=True)
    if new.empty:
        return old.reset_index(drop=True)
    both = set(old["run_id"]) & set(new["run_id"])
    if both:
        a, b = last_step(old).set_index("run_id"), last_step(new).set_index("run_id")
        for run_id in sorted(both):
            for column in COMPARED:
                if column in a.columns and column in b.columns and _differs(a.at[run_id, column], b.at[run_id, column]):
                    raise ExportError(f"{where}: run {run_id} has {column} {a.at[run_id, column]!r} there but "
                                      f"{b.at[run_id, column]!r} in the store; move the export away to rebuild it")
    if "study_name" in old.columns and "study_name" in new.columns:
        trials = lambda f: f[f["kind"] == "trial"].groupby("study_name")["run_id"].agg(set)  # noqa: E731
        before, now = trials(old), trials(new)
        for study in sorted(set(before.index) & set(now.index)):
            if before[study] - now[study] and now[study] - before[study]:
                raise ExportError(f"{where}: study {study} holds runs {', '.join(sorted(before[study]))} there but "
                                  f"{', '.join(sorted(now[study]))} in the store; move the export away (or restore "
                                  "the store that made it)")
    kept = old[~old["run_id"].isin(both)]
    frames = [f for f in (kept, new) if not f.empty]
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return merged


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_parquet(tmp, index=False, compression="zstd", engine="pyarrow")
    os.replace(tmp, path)


def portable(runs: pd.DataFrame, root: Path = REPOSITORY) -> pd.DataFrame:
    """``runs`` with every absolute path beside the repository (a data folder given to ``--data-dir`` as
    ``../shared/data/tofu``, which sweep.py records resolved) written relative to the repository root
    again, so a committed export names no machine's folders. Other cells are left as they are."""
    prefix = str(root.parent) + os.sep

    def relative(value):
        if isinstance(value, str) and value.startswith(prefix):
            return os.path.relpath(value, root)
        return value

    columns = [c for c in runs.columns if not pd.api.types.is_numeric_dtype(runs[c])
               and runs[c].map(lambda v: isinstance(v, str) and v.startswith(prefix)).any()]
    return runs.assign(**{c: runs[c].map(relative) for c in columns}) if columns else runs


def write_export(folder: str | os.PathLike, runs: pd.DataFrame, items: pd.DataFrame, command: str,
                 studies: Iterable[str] = ()) -> Export:
    """Write (or grow) the export in ``folder/export``: ``runs`` (rows keyed :data:`KEY`) and ``items``
    merged with an export already there (:func:`merge_runs`; its items for the runs ``runs`` replaces go),
    then ``provenance.json`` last (so a folder interrupted while writing has no valid marker, and a
    reader says so). Returns the export as written (the merged frames, in memory)."""
    out = _export_dir(folder)
    studies = set(studies)
    runs = portable(runs)
    if (out / MARKER).exists():
        old = read_export(out)
        runs = merge_runs(old.runs, runs, str(out / RUNS_FILE))
        old_items = old.items[~old.items["run_id"].isin(set(items.get("run_id", ())))] if not old.items.empty else old.items
        items = pd.concat([f for f in (old_items, items) if not f.empty], ignore_index=True) \
            if not (old_items.empty and items.empty) else items
        studies |= set(old.provenance.get("studies", ()))
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    files = {}
    for name, frame in ((RUNS_FILE, runs), (ITEMS_FILE, items)):
        _write_parquet(frame, out / name)
        files[name] = {"sha256": _sha256(out / name), "rows": len(frame)}
    record = {**provenance(command, studies), "files": files}
    (out / MARKER).write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return Export(out, runs, items, record)


def read_export(folder: str | os.PathLike) -> Export:
    """The export in ``folder`` (a results folder or its ``export/``), every file checked first
    (:class:`ExportError`, one line naming the file: missing, truncated, changed since written, or of
    another :data:`FORMAT_VERSION`)."""
    out = _export_dir(folder)
    marker = out / MARKER
    if not marker.exists():
        raise ExportError(f"{marker}: missing; no export here (write one with experiments/reproduce.py)")
    try:
        record = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{marker}: not valid JSON (truncated?): {err}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ExportError(f"{marker}: not an export of this project (field 'format' should be {FORMAT!r})")
    if record.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{marker}: export format version {record.get('format_version')!r}, this code reads "
                          f"{FORMAT_VERSION}; check out the commit that wrote it ({record.get('commit', 'unknown')}) "
                          f"or rebuild it")
    frames = {}
    for name in (RUNS_FILE, ITEMS_FILE):
        path = out / name
        expected = record.get("files", {}).get(name)
        if not path.exists():
            raise ExportError(f"{path}: missing (provenance.json lists it)")
        if not isinstance(expected, Mapping) or "sha256" not in expected:
            raise ExportError(f"{marker}: field 'files.{name}.sha256' missing")
        if _sha256(path) != expected["sha256"]:
            raise ExportError(f"{path}: truncated or changed since it was written (its SHA-256 differs from "
                              f"the one in provenance.json)")
        try:
            frames[name] = pd.read_parquet(path, engine="pyarrow")
        except Exception as err:  # noqa: BLE001  (pyarrow raises several types for a bad file)
            raise ExportError(f"{path}: unreadable parquet: {str(err).splitlines()[0]}") from None
        if len(frames[name]) != expected.get("rows"):
            raise ExportError(f"{path}: {len(frames[name])} rows, provenance.json says {expected.get('rows')}")
    runs = frames[RUNS_FILE]
    missing = [c for c in (*KEY, "kind", "study_name", "model_utility") if c not in runs.columns]
    if missing:
        raise ExportError(f"{out / RUNS_FILE}: column(s) {', '.join(missing)} missing")
    return Export(out, runs, frames[ITEMS_FILE], record)


def items_of(items: pd.DataFrame, run_id: str, file: str | None = None) -> pd.DataFrame | None:
    """One per-item table of an export's ``items`` (``file`` None: the run's last task's, else its
    ``items.csv``), with the columns that table had (all-empty columns of other tables dropped); None
    when the run logged none."""
    if items.empty:
        return None
    mine = items[items["run_id"] == run_id]
    if mine.empty:
        return None
    if file is None:
        names = sorted(set(mine["file"]), key=lambda n: (n.startswith("items_task"), _task_of(n)))
        file = names[-1]
    rows = mine[mine["file"] == file]
    if rows.empty:
        return None
    from ..evaluation.metrics import METRICS

    rows = rows.drop(columns=["run_id", "file"])
    empty = [c for c in rows.columns if c not in METRICS and rows[c].isna().all()]
    return rows.drop(columns=empty).reset_index(drop=True)


def _task_of(name: str) -> int:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0

