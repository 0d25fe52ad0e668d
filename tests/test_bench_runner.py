"""benchmarks/run_all.py: each script's result line becomes a table row with the script's wall time
(issue 14: ``make bench`` must show where its minutes go)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_script_becomes_a_row_with_its_result_and_its_wall_time(tmp_path):
    run_all = _run_all()
    script = tmp_path / "bench_sleepy.py"
    script.write_text("import time\nprint('warming up')\ntime.sleep(1.2)\n"
                      "print('sleepy: 0.5x (two naps, cpu) target <= 0.75: met')\n")
    result = run_all.run_one("sleepy", str(script), [], timeout=60)
    assert result["ok"] and result["name"] == "sleepy" and result["ratio"] == "0.5" and result["status"] == "met"
    assert 1.2 <= result["seconds"] < 30
    lines = run_all.table([result, {"name": "gone", "status": "bench_gone.py not found", "ok": False}]).splitlines()
    assert lines[0] == "| benchmark | measured | target | met? | wall s |"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # The script's own wall time, whole seconds (at least its 1.2 s nap; startup varies with the machine's load).
    assert cells[:4] == ["sleepy", "0.5x (two naps, cpu)", "<= 0.75", "met"] and int(cells[4]) == round(result["seconds"]) >= 1
    assert lines[3] == "| gone | — | — | bench_gone.py not found | — |"


def test_a_failing_script_is_a_failed_row(tmp_path):
    run_all = _run_all()
    script = tmp_path / "bench_broken.py"
    script.write_text("import sys\nprint('no result')\nsys.exit(3)\n")
    result = run_all.run_one("broken", str(script), [], timeout=60)
    assert not result["ok"] and result["status"] == "failed (exit 3)"


def test_opt_in_benchmarks_run_only_when_named(monkeypatch):
    """Issue 27: bench_precision.py (~5 min) stays out of `make bench` unless named with --only."""
    run_all = _run_all()
    ran = []
    monkeypatch.setattr(run_all, "run_one", lambda name, script, extra, timeout: ran.append(name) or
                        {"name": name, "status": "met", "ok": True, "ratio": "1", "details": "", "target": "n/a"})
    assert run_all.main([]) == 0 and "precision" not in ran and ran == [n for n in run_all.BENCHMARKS if n != "precision"]
    ran.clear()
    assert run_all.main(["--only", "precision"]) == 0 and ran == ["precision"]
