#!/usr/bin/env python
"""What an untuned model already knows of a scenario's evaluation sets, before any fine-tuning.

The real-world scenario unlearns what the model knew before (the paper's Llama-3-8B-Instruct answers
questions about 20 real people). A small model may not know those people at all: then there is nothing
to unlearn, and the neighbour set's Model Utility measures the model, not the unlearning. This script
measures it: it evaluates the untuned model with the project's evaluation (ROUGE-L recall against the
truth field, Probability, Truth Ratio; docs/science.md §5) and prints per-set means with their item
count, and writes the per-item table.

    python experiments/probe_knowledge.py --data-dir ../shared/data/real_world
    python experiments/probe_knowledge.py --data-dir ../shared/data/tofu --scenario fictitious --limit 40
    python experiments/probe_knowledge.py --data-dir ../shared/data/real_world --out docs/results/probe

``--limit N`` keeps the first N rows of each set (real-world: ``--per-task K`` keeps each person's
first K questions instead, so every person is asked about); ``--sets`` evaluates some sets only.

``--known-out FILE`` writes the rows the model answers (ROUGE-L recall >= ``--known-threshold``, 1.0 by
default: the whole answer, as the built-in general sets were chosen) of the general sets probed (Real
Authors, World Facts; real-world: the neighbours), by position and question hash, no text
(``study.inputs.data.KnownRows``); ``--set eval.known_rows=FILE`` then evaluates only those:

    python experiments/probe_knowledge.py --data-dir ../shared/data/tofu --scenario fictitious \
        --sets real_authors world_facts --known-out experiments/known/smollm2-135m-tofu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.errors import StudyInputError  # noqa: E402  (after the path)
from study.inputs.scenarios import SCENARIOS  # noqa: E402

MEASURES = ("rouge", "probability", "truth_ratio")
GENERAL = ("real_authors", "world_facts", "neighbor")
"""The sets a known-rows file may select (``study.inputs.data.load_tofu``, ``load_real_world``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe_knowledge.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    a = parser.add_argument
    a("--data-dir", required=True, help="a folder of TOFU-format files (TOFU or the real-world set)")
    a("--scenario", default="real-world", choices=sorted(SCENARIOS), help="which sets (default: %(default)s)")
    a("--model", default="smollm2-135m", help="model family, id or path (default: %(default)s)")
    a("--limit", type=int, default=None, help="first N rows of each set (default: all)")
    a("--per-task", type=int, default=None, help="real-world: each person's first K questions")
    a("--batch-size", type=int, default=16, help="generation batch (default: %(default)s)")
    a("--max-length", type=int, default=200, help="generation length incl. the prompt (default: %(default)s)")
    a("--sets", nargs="+", default=None, help="evaluate only these sets (default: every set of the scenario)")
    a("--out", default=None, help="folder for items.csv.gz and summary.json (default: print only)")
    a("--known-out", default=None, help="write the general-set rows the model answers here (a known-rows file)")
    a("--known-threshold", type=float, default=1.0,
      help="ROUGE-L recall from which a row counts as answered (default: %(default)s)")
    a("--no-progress", action="store_true")
    return parser


def _per_task(rows: list[dict], k: int) -> list[dict]:
    seen: dict = {}
    kept = []
    for row in rows:
        key = row.get("task_id", row.get("name"))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= k:
            kept.append(row)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ("limit", "per_task"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise StudyInputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        from study.inputs import data, models
        from study.inputs.data import question_id
        from study.evaluation import evaluate

        sc = SCENARIOS[args.scenario]  # its first default task (real-world: every person at once)
        source = data.DirectorySource(Path(args.data_dir).expanduser())
        loaded = sc.load(source, task=next(iter(sc.default_tasks), None))
    except StudyInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = [s.name for s in loaded.eval_sets]
    unknown = [name for name in args.sets or [] if name not in names]
    if unknown:
        print(f"error: --sets {unknown[0]}: not a set of the {args.scenario} scenario; valid: {', '.join(names)}",
              file=sys.stderr)
        return 2
    # a known-rows file names rows by their place in the whole file: refused before the probe runs, not after
    full = {s.name: len(source.read(f"{s.name}_perturbed")) for s in loaded.eval_sets if s.name in GENERAL}
    cut = [s.name for s in loaded.eval_sets if s.name in full and len(s.rows) != full[s.name]]
    if args.known_out and (args.limit or args.per_task or cut):
        why = f"capped at 300 rows: {', '.join(cut)}" if cut else "drop --limit / --per-task"
        print(f"error: --known-out needs every row of the general sets ({why})", file=sys.stderr)
        return 2
    sets = []
    for eval_set in loaded.eval_sets:
        if args.sets and eval_set.name not in args.sets:
            continue
        rows = eval_set.rows
        if args.per_task:
            rows = _per_task(rows, args.per_task)
        if args.limit:
            rows = rows[:args.limit]
        eval_set.rows = rows
        sets.append(eval_set)

    device = models.default_device()
    lm = models.load(args.model, device=device, dtype=models.default_dtype(device))
    result = evaluate.evaluate(lm.model, lm.tokenizer, lm.prompt, sets, args.scenario,
                               evaluate.load_metric_models(), batch_size=args.batch_size,
                               max_length=args.max_length, progress=not args.no_progress)
    summary = {f"{s.name}/{m}": float(result.summary[f"{s.name}/{m}"]) for s in sets for m in MEASURES}
    summary |= {f"n_items/{s.name}": len(s.rows) for s in sets}
    summary |= {f"answered/{s.name}": int((result.items[result.items["set"] == s.name]["rouge"] >= args.known_threshold).sum())
                for s in sets}
    print(f"untuned {args.model} on {loaded.source} ({args.scenario}):")
    for s in sets:
        values = "  ".join(f"{m} {summary[f'{s.name}/{m}']:.3f}" for m in MEASURES)
        print(f"  {s.name:<13} {len(s.rows):>4} items  {values}  answered {summary[f'answered/{s.name}']} "
              f"(ROUGE-L recall >= {args.known_threshold})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        items = result.items.assign(question_id=result.items["question"].map(question_id))
        # the data's own text stays out (a committed probe copies no data file): the question by its hash
        items[["set", "item", "question_id", "generation", *MEASURES]].to_csv(out / "items.csv.gz", index=False)
        meta = {"model": args.model, "scenario": args.scenario, "data": Path(args.data_dir).name,
                "limit": args.limit, "per_task": args.per_task, "max_length": args.max_length,
                "threshold": args.known_threshold}
        (out / "summary.json").write_text(json.dumps(meta | summary, indent=1) + "\n")
        print(f"wrote {out / 'items.csv.gz'} and {out / 'summary.json'}")
    if args.known_out:
        write_known(Path(args.known_out), result.items, [s for s in sets if s.name in GENERAL], args)
    return 0


def write_known(path: Path, items, sets, args) -> None:
    """The known-rows file (``study.inputs.data.KnownRows``): per general set (every row of its file), the rows
    whose ROUGE-L recall reaches the threshold."""
    from study.inputs.data import question_id

    out = {"model": args.model, "data": Path(args.data_dir).name, "scenario": args.scenario, "measure": "rouge",
           "threshold": args.known_threshold, "made_by": "experiments/probe_knowledge.py", "sets": {}}
    for eval_set in sets:
        scores = items[items["set"] == eval_set.name].sort_values("item")["rouge"].to_numpy()
        kept = [[i, question_id(row["question"])] for i, (row, score) in enumerate(zip(eval_set.rows, scores))
                if score >= args.known_threshold]
        out["sets"][eval_set.name] = {"rows": len(eval_set.rows), "kept": kept}
        print(f"  {eval_set.name}: {len(kept)} of {len(eval_set.rows)} rows answered (ROUGE-L recall >= "
              f"{args.known_threshold})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
