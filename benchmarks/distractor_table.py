"""The README table of evaluations with distractors, from the JSON files precompute.evaluate wrote.

    python -m benchmarks.distractor_table results/evaluation_r300k_exact.json results/evaluation_r300k_ann.json \\
        --out results/distractors.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(reports: list[dict]) -> dict:
    """Returns {"columns", "align", "rows"}: one row per evaluation; the speed-up is against the exact
    evaluation with the same re-ranking (diffusion or not), else against the first row."""
    def diffusion(r):
        return bool(r["pipeline"].get("diffusion"))

    exact = {diffusion(r): r["seconds_per_query"]["search"] for r in reports if r["pipeline"]["backend"] == "exact"}
    rows = []
    for r in reports:
        meta, added = r["pipeline"], r.get("distractors") or {"count": 0}
        backend = f"ann, top {meta['ann_k']} re-ranked" if meta.get("ann_k") else meta["backend"]
        search = r["seconds_per_query"]["search"]
        base = exact.get(diffusion(r), reports[0]["seconds_per_query"]["search"])
        rows.append([backend, "diffusion" if diffusion(r) else "none", f"{r['database_size']:,} + {added['count']:,}",
                     *(f"{100 * r['map'][p]:.1f}" for p in ("easy", "medium", "hard")),
                     f"{1000 * search:.1f}", f"{base / search:.0f}x"])
    return {"columns": ["search", "re-ranking", "database + distractors", "Easy", "Medium", "Hard", "search ms/query",
                        "speed-up"], "align": "lllrrrrr", "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distractor_table", description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", help="evaluate --json files; the first is the baseline (exact)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    out = {"sources": args.reports, "tables": {"distractors": table(reports)}}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
