"""The general sets an untuned model answers (``eval.known_rows``, ``study.inputs.data.KnownRows``): a
known-rows file keeps some rows of TOFU's Real Authors / World Facts (the real-world neighbours), by
position and question hash, before ``ds_size``; another version of the data is one line, not a silent
other selection; the reference evaluations' cache key follows the file's content; and
``experiments/probe_knowledge.py --known-out`` writes a file the loader reads back.

Expected rows are read straight from TOFU's JSON files, and the hashes computed here with hashlib."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from study import presets
from study.errors import DataError, StudyInputError
from study.inputs import data, scenarios

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _qid(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:8]


def _known_file(path: Path, sets: dict[str, tuple[int, list[int], list[dict]]]) -> Path:
    """sets: name -> (rows in the file, kept positions, the file's rows)."""
    path.write_text(json.dumps({"sets": {name: {"rows": n, "kept": [[i, _qid(rows[i]["question"])] for i in kept]}
                                         for name, (n, kept, rows) in sets.items()}}))
    return path


def _load(tofu: Path, known: Path | None, ds_size: int = 40):
    return scenarios.load_scenario(data.DirectorySource(tofu), "fictitious", "forget01", 1, ds_size=ds_size,
                                   known=data.KnownRows.read(known) if known else None)


def test_known_rows_keep_the_listed_general_rows_in_file_order_before_the_cap(shared_data, tmp_path):
    tofu = shared_data / "tofu"
    authors = _rows(tofu / "real_authors_perturbed.json")
    facts = _rows(tofu / "world_facts_perturbed.json")
    assert (len(authors), len(facts)) == (100, 117)
    # rows beyond ds_size (70, 99) are kept: the selection comes before the cap
    known = _known_file(tmp_path / "known.json", {"real_authors": (100, [2, 5, 70, 99], authors)})
    run = _load(tofu, known, ds_size=3)
    sets = {s.name: s.rows for s in run.eval_sets}
    assert [r["question"] for r in sets["real_authors"]] == [authors[i]["question"] for i in (2, 5, 70)]
    assert [r["question"] for r in sets["world_facts"]] == [r["question"] for r in facts[:3]]  # not listed: every row
    # forget and retain are not general sets: untouched
    plain = {s.name: s.rows for s in _load(tofu, None, ds_size=3).eval_sets}
    assert sets["forget"] == plain["forget"] and sets["retain"] == plain["retain"]


def test_known_rows_of_another_data_version_end_in_one_line(shared_data, tmp_path):
    tofu = shared_data / "tofu"
    authors = _rows(tofu / "real_authors_perturbed.json")
    shifted = [authors[1]] + authors  # the same rows one position down: row 4 is now another question
    with pytest.raises(DataError) as error:
        _load(tofu, _known_file(tmp_path / "shifted.json", {"real_authors": (100, [4], shifted)}))
    assert "shifted.json: set real_authors, row 4 is not the question it names" in str(error.value)
    assert "real_authors_perturbed.json" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataError, match=r"probed on 99 rows, .*real_authors_perturbed.json has 100"):
        _load(tofu, _known_file(tmp_path / "short.json", {"real_authors": (99, [0], authors)}))
    with pytest.raises(StudyInputError, match="missing.json: eval.known_rows file not found"):
        data.KnownRows.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"sets": {"real_authors": {"rows": 100, "kept": [[1]]}}}')
    with pytest.raises(DataError, match="bad.json: not a known-rows file"):
        data.KnownRows.read(tmp_path / "bad.json")


def test_the_reference_evaluations_key_follows_the_known_rows_content(shared_data, tmp_path):
    from study.trial.references import ReferenceModels

    authors = _rows(shared_data / "tofu" / "real_authors_perturbed.json")
    one = _known_file(tmp_path / "one.json", {"real_authors": (100, [0, 1], authors)})
    same = _known_file(tmp_path / "same.json", {"real_authors": (100, [0, 1], authors)})
    other = _known_file(tmp_path / "other.json", {"real_authors": (100, [0, 2], authors)})

    def key(path):
        settings = [f"eval.known_rows={json.dumps(str(path))}"] if path else []
        return ReferenceModels(presets.run_config("smoke", settings=settings), None, None, "cpu").eval_key()

    assert key(one) == key(same)  # the content, not the file name
    assert len({key(None), key(one), key(other)}) == 3


@pytest.mark.slow
def test_probe_knowledge_writes_a_known_rows_file_the_loader_reads(shared_data, tmp_path):
    """The smoke model answers nothing, so threshold 0 keeps every row and a threshold above 1 none: the
    file's format, positions and hashes are what is checked, through the loader."""
    tofu = shared_data / "tofu"
    out = tmp_path / "known.json"
    done = subprocess.run([sys.executable, "experiments/probe_knowledge.py", "--data-dir", str(tofu), "--scenario",
                           "fictitious", "--model", "tiny-llama", "--sets", "real_authors", "world_facts",
                           "--max-length", "40", "--known-threshold", "0", "--known-out", str(out), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "real_authors: 100 of 100 rows answered" in done.stdout and "world_facts: 117 of 117" in done.stdout
    run = _load(tofu, out, ds_size=300)
    sets = {s.name: s.rows for s in run.eval_sets}
    assert sets["real_authors"] == _rows(tofu / "real_authors_perturbed.json")
    assert sets["world_facts"] == _rows(tofu / "world_facts_perturbed.json")
    bad = subprocess.run([sys.executable, "experiments/probe_knowledge.py", "--data-dir", str(tofu), "--scenario",
                          "fictitious", "--model", "tiny-llama", "--sets", "real_author"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --sets real_author: not a set of the fictitious scenario; valid: forget, retain, real_authors, world_facts"]
