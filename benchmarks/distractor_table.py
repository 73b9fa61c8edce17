"""The README table of evaluations with distractors, from the JSON files precompute.evaluate wrote.

    python -m benchmarks.distractor_table results/evaluation_r300k_exact.json results/evaluation_r300k_ann.json \\
        --out results/distractors.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def reranking(meta: dict) -> str:
    """Returns the re-ranking beyond αQE and DBA of an evaluation's pipeline, in words."""
    d = meta.get("diffusion")
    if not d:
        return "none"
    if not d.get("truncate"):
        return "diffusion, whole graph"
    extra = [f"÷ degree^{d['degree_power']:g}" if d.get("degree_power") else "",
             f"blended {d['blend']:g}" if d.get("blend", 1) < 1 else ""]
    return ", ".join([f"diffusion, top {d['candidates']} subgraph", *filter(None, extra)])


def table(reports: list[dict]) -> dict:
    """Returns {"columns", "align", "rows"}: one row per evaluation; the speed-up is against the exact
    evaluation with the same re-ranking, else against the first row."""
    def diffusion(r):
        return reranking(r["pipeline"])

    exact = {diffusion(r): r["seconds_per_query"]["search"] for r in reports if r["pipeline"]["backend"] == "exact"}
    rows = []
    for r in reports:
        meta, added = r["pipeline"], r.get("distractors") or {"count": 0}
        backend = f"ann, top {meta['ann_k']} re-ranked" if meta.get("ann_k") else meta["backend"]
        search = r["seconds_per_query"]["search"]
        base = exact.get(diffusion(r), reports[0]["seconds_per_query"]["search"])
        rows.append([backend, diffusion(r), f"{r['database_size']:,} + {added['count']:,}",
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
