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
first K questions instead, so every person is asked about).
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
    a("--out", default=None, help="folder for items.csv.gz and summary.json (default: print only)")
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
        from study.evaluation import evaluate

        sc = SCENARIOS[args.scenario]  # its first default task (real-world: every person at once)
        loaded = sc.load(data.DirectorySource(Path(args.data_dir).expanduser()), task=next(iter(sc.default_tasks), None))
    except StudyInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sets = []
    for eval_set in loaded.eval_sets:
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
    print(f"untuned {args.model} on {loaded.source} ({args.scenario}):")
    for s in sets:
        values = "  ".join(f"{m} {summary[f'{s.name}/{m}']:.3f}" for m in MEASURES)
        print(f"  {s.name:<13} {len(s.rows):>4} items  {values}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        columns = ["set", "item", "question", "reference", "generation", *MEASURES]
        result.items[columns].to_csv(out / "items.csv.gz", index=False)
        meta = {"model": args.model, "scenario": args.scenario, "data": Path(args.data_dir).name,
                "limit": args.limit, "per_task": args.per_task, "max_length": args.max_length}
        (out / "summary.json").write_text(json.dumps(meta | summary, indent=1) + "\n")
        print(f"wrote {out / 'items.csv.gz'} and {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
