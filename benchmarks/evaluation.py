"""The README's evaluation tables: `precompute.evaluate` with each row's options, in one run.

    python -m benchmarks.evaluation [--json results/evaluation.json] [--table main|sv]

Every row is exactly `python -m precompute.evaluate --dataset rparis6k --data-root ../shared/data
--network efficientnet-lite0` plus the options in its row: the options are parsed by that
command's own parser and handed to the function it calls, `retrieval.evaluation.run_evaluation`,
with the network loaded once. The
report's pipeline is measured in the same run as ours.

Besides the mini RParis numbers, each row without spatial verification gets its search time at
5,000 images: the database padded with synthetic distractors (`retrieval.distractors`, fitted to
its descriptors) to 5,000 rows, the 19 queries timed one by one through `rank_queries` (exact
search, αQE, diffusion: everything after the embedding).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from precompute.evaluate import describe, parse_args, write_json
from precompute.options import diffusion_from_args, pipeline_from_args, rerank_from_args
from retrieval.datasets import load_dataset
from retrieval.distractors import fit_distractor_model, sample_distractors
from retrieval.evaluation import dataset_descriptors, rank_queries, run_evaluation
from retrieval.whitening import learn_whitening

ROOT = Path(__file__).resolve().parent.parent
BASE = "--dataset rparis6k --data-root ../shared/data --network efficientnet-lite0"
SCALE = 5000

# (table, label, options): the rows of the README tables, in order.
ROWS = (
    ("main", "the report's: 224x224 squash, flattened 7x7xC, KD-tree", "--preset report"),
    ("main", "GeM, max side 384", "--qe 0 --dba 0 --no-diffusion"),
    ("main", "GeM p=4.6", "--gem-p 4.6 --qe 0 --dba 0 --no-diffusion"),
    ("main", "R-MAC grid of GeM regions", "--pooling rgem --qe 0 --dba 0 --no-diffusion"),
    ("main", "scales 1, 1/√2, 1/2: mean", "--scales 1,0.7071,0.5 --qe 0 --dba 0 --no-diffusion"),
    ("main", "scales 1, 1/√2, 1/2: max", "--scales 1,0.7071,0.5 --combine-scales max --qe 0 --dba 0 --no-diffusion"),
    ("main", "+ PCA-whitening (own database, shrinkage 50)", "--whiten --whiten-shrinkage 50 --qe 0 --dba 0 --no-diffusion"),
    ("main", "+ αQE k=5", "--qe 5 --dba 0 --no-diffusion"),
    ("main", "+ DBA k=3", "--qe 0 --dba 3 --no-diffusion"),
    ("main", "+ diffusion (top 1000 subgraph, ÷ degree^0.25, blended 0.5)", "--qe 0 --dba 0"),
    ("main", "previous default: GeM 384, DBA k=3, αQE k=5", "--no-diffusion"),
    ("main", "the default before: diffusion over the whole graph",
     "--no-diffusion-truncate --no-diffusion-self-loops --diffusion-degree-power 0 --diffusion-blend 1"),
    ("main", "default, diffusion over the top 100 only", "--diffusion-candidates 100"),
    ("main", "**default: GeM 384, DBA k=3, αQE k=5, diffusion (top 1000 subgraph, ÷ degree^0.25, blended 0.5)**", ""),
    ("sv", "default, no SV", ""),
    ("sv", "previous default + SV top 50", "--no-diffusion --sv 50"),
    ("sv", "default, diffusion then SV top 50", "--sv 50 --diffusion-then-sv"),
    ("sv", "default + SV top 50 seeding the diffusion", "--sv 50"),
    ("sv", "report + SV top 50", "--preset report --sv 50"),
)


def time_at_scale(evaluation_args: argparse.Namespace, db: np.ndarray, queries: np.ndarray, n: int) -> float:
    """Returns the median ms per query of everything after the embedding, on a database padded to n rows."""
    qe, dba = rerank_from_args(evaluation_args)
    extra = sample_distractors(fit_distractor_model(db), max(0, n - len(db)), seed=0)
    padded = np.concatenate([db, extra])
    whitening = (learn_whitening(padded, shrinkage=evaluation_args.whiten_shrinkage)
                 if evaluation_args.whiten else None)
    _, seconds = rank_queries(padded, queries, backend="exact", whitening=whitening, qe=qe, dba=dba,
                              alpha=evaluation_args.alpha, diffusion=diffusion_from_args(evaluation_args))
    return float(np.median(seconds) * 1000)


def measure(label: str, options: str, network, dataset) -> dict:
    """Runs one row: the evaluation on the mini RParis and, without SV, the timing at SCALE images."""
    args = parse_args(shlex.split(BASE) + shlex.split(options))
    pipeline = pipeline_from_args(args)
    qe, dba = rerank_from_args(args)
    evaluation = run_evaluation(
        dataset, network, pipeline, backend=args.backend, whiten=args.whiten, whiten_shrinkage=args.whiten_shrinkage,
        qe=qe, dba=dba, alpha=args.alpha, sv=args.sv, sv_min_inliers=args.sv_min_inliers,
        diffusion=diffusion_from_args(args), diffusion_then_sv=args.diffusion_then_sv, cache_dir=args.cache_dir,
    )
    report = evaluation.report
    at_scale = None
    if not args.sv:
        found = dataset_descriptors(dataset, network, pipeline, cache_dir=args.cache_dir)
        at_scale = time_at_scale(args, found.db, found.queries, SCALE)
    return {"label": label, "options": options, "describe": describe(report), "map": report["map"],
            "report_map": report["report_map"], "seconds_per_query": report["seconds_per_query"],
            f"search_ms_at_{SCALE}": at_scale, "per_query": report["per_query"]}


def _row(result: dict) -> list:
    bold = result["label"].startswith("**")
    cells = [f"{100 * result['map'][p]:.1f}" for p in ("easy", "medium", "hard")]
    if bold:
        cells = [f"**{c}**" for c in cells]
    t = result["seconds_per_query"]
    scale = result[f"search_ms_at_{SCALE}"]
    return [result["label"], f"`{result['options']}`" if result["options"] else "(none)", *cells,
            f"{t['total']:.3f}", f"{1000 * t['search']:.1f}", "n/a" if scale is None else f"{scale:.1f}"]


def tables(results: list[dict]) -> dict:
    """Returns the README tables, one per table name in ROWS, rows in ROWS order."""
    columns = ["pipeline", "options", "Easy", "Medium", "Hard", "s/query", "search ms", f"search ms at {SCALE // 1000}k"]
    by_label = {r["label"]: r for r in results}
    out = {}
    for name, label, _ in ROWS:
        if label in by_label:
            out.setdefault(name, {"columns": columns, "align": "llrrrrrr", "rows": []})["rows"].append(_row(by_label[label]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=str(ROOT / "results" / "evaluation.json"))
    parser.add_argument("--table", default=None, choices=sorted({name for name, *_ in ROWS}),
                        help="run only this table's rows and keep the other tables' rows already in --json")
    args = parser.parse_args(argv)
    from retrieval.networks import build_network

    first = parse_args(shlex.split(BASE))
    dataset = load_dataset(first.dataset, first.data_root)
    network = build_network(first.network, weights=first.weights)
    path = Path(args.json)
    kept = json.loads(path.read_text())["rows"] if args.table and path.is_file() else []
    run = [(label, options) for name, label, options in ROWS if args.table in (None, name)]
    results = [r for r in kept if r["label"] not in {label for label, _ in run}]
    for label, options in run:
        result = measure(label, options, network, dataset)
        print(" | ".join(str(c) for c in _row(result)), flush=True)
        results.append(result)
    order = {label: i for i, (_, label, _) in enumerate(ROWS)}
    results = sorted((r for r in results if r["label"] in order), key=lambda r: order[r["label"]])
    write_json({"command": "python -m benchmarks.evaluation [--table main|sv]",
                "base_command": f"python -m precompute.evaluate {BASE}", "rows": results, "tables": tables(results)}, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
