"""Evaluate a descriptor pipeline on a landmark benchmark: mAP, mP@k and seconds per query.

    python -m precompute.evaluate --dataset rparis6k --data-root ../shared/data \\
        --network efficientnet-lite0 [pipeline options] [--whiten] [--qe K] [--dba K] \\
        [--diffusion | --no-diffusion] [--sv N] [--json FILE] [--plot FILE]

Descriptors are cached per (dataset, network, weights, pipeline) under --cache-dir, so a rerun
that changes only the search options (whitening, query expansion, DBA, backend) skips the
network. Query descriptors are computed one query at a time from the decoded crop and timed,
as the app embeds an upload; the embedding time is kept in the cache with them.

With --distractors DIR the rows of the index at DIR (same network and pipeline) join the
database after the dataset's own images (the +R1M protocol). With --backend ann the database is
searched through FAISS (`retrieval.ann`): each ranking is the ANN's top --ann-k, re-ranked
exactly, then everything else with the distractors first (so a positive the ANN missed counts
as found at the very end). --backend milvus publishes the database into a scratch collection of
the Milvus at --milvus (default MILVUS_URI, else Milvus Lite in a temporary folder; token:
MILVUS_TOKEN) and ranks through it as the app serves it (docs/milvus.md).

With --sv N the top N of each final ranking are spatially verified (`retrieval.verify`: SIFT,
RootSIFT, RANSAC); the database's local features are cached beside the descriptors, and each
query's timed verification covers its own SIFT extraction and the N matches.

The evaluation itself is `retrieval.evaluation.run_evaluation`, which ranks through the app's
own query path; this command parses the options and prints, writes and plots its report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from precompute.options import (
    add_diffusion_options, add_extraction_options, add_network_options, add_pipeline_options,
    add_rerank_options, network_from_args, nonnegative_int, positive_int, recipe_from_args,
)
from retrieval.datasets import DatasetError, load_dataset
from retrieval.evaluate import KAPPAS, PROTOCOLS, precision_recall, protocol_gnd
from retrieval.evaluation import DEFAULT_CACHE_DIR, Evaluation, run_evaluation
from retrieval.milvus import DEFAULT_INDEX_TYPE as DEFAULT_MILVUS_INDEX
from retrieval.milvus import INDEX_TYPES as MILVUS_INDEX_TYPES
from retrieval.milvus import MilvusError
from retrieval.search import BACKENDS, SearchUnavailable

# ---------------------------------------------------------------- output


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def describe(report: dict) -> str:
    """Returns a short label of the pipeline and search options, e.g. for a README row."""
    meta = report["pipeline"]
    p = meta["pipeline"]
    size = f"squash {p['squash']}" if p["squash"] else f"max side {p['max_side']}"
    parts = [f"{meta['network']} {p['pooling'].upper() if p['pooling'] != 'gem' else 'GeM'}", size]
    if len(p["scales"]) > 1:
        parts.append("scales " + "/".join(f"{s:g}" for s in p["scales"]))
    if meta["whitening"]:
        parts.append(f"whitening (shrinkage {meta['whitening']['shrinkage']:g})")
    if meta["qe"]:
        parts.append(f"αQE k={meta['qe']['k']}")
    if meta["dba"]:
        parts.append(f"DBA k={meta['dba']['k']}")
    if meta.get("diffusion"):
        d = meta["diffusion"]
        parts.append(f"diffusion k={d['k']} seeds={d['seeds']} α={d['alpha']:g}"
                     + (f" truncated to {d['candidates']}" if d["truncate"] else "")
                     + (f" ÷ degree^{d['degree_power']:g}" if d.get("degree_power") else "")
                     + (f" blended {d['blend']:g}" if d.get("blend", 1) < 1 else ""))
    if meta.get("sv"):
        parts.append(f"SV top {meta['sv']['top']}" + (" seeding the diffusion" if meta.get("sv_seeds_diffusion") else ""))
    backend = f"{meta['backend']} top {meta['ann_k']}" if meta.get("ann_k") else meta["backend"]
    distractors = f", +{report['distractors']['count']:,} distractors" if report.get("distractors") else ""
    return ", ".join(parts) + f", {backend}{distractors}"


def format_table(report: dict) -> str:
    """Returns the markdown table of a report, a timing line and a one-line README row."""
    protocols = list(report["map"])
    added = report.get("distractors")
    database = f"{report['database_size']}+{added['count']}" if added else str(report["database_size"])
    lines = [
        "| protocol | queries | database | mAP | mP@1 | mP@5 | mP@10 | mAP, report's AP formula |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in protocols:
        mp = report["mp_at_k"][p]
        lines.append(
            f"| {p} | {report['queries'][p]} | {database} | {_pct(report['map'][p])} | "
            + " | ".join(_pct(mp[str(k)]) for k in KAPPAS)
            + f" | {_pct(report['report_map'][p])} |"
        )
    t = report["seconds_per_query"]
    cached = " (embedding timed when the descriptors were cached)" if t["embed_from_cache"] else ""
    verify = f" + verify {t['verify']:.4f}" if report["pipeline"].get("sv") else ""
    if added:
        lines += ["", f"distractors: {added['count']:,} rows of {added['source']} added after the dataset's {report['database_size']}"]
    lines += [
        "",
        f"seconds per query (median): {t['total']:.4f} = embed {t['embed']:.4f} + search {t['search']:.4f}"
        f"{verify}{cached}",
        "row: | " + describe(report) + " | " + " | ".join(_pct(report["map"][p]) for p in protocols)
        + f" | {t['total']:.3f} |",
    ]
    return "\n".join(lines)


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(report: dict, path) -> None:
    """Writes the report as indented JSON, atomically."""
    _atomic_bytes(Path(path), (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())


def plot_evaluation(evaluation: Evaluation, path) -> None:
    """Draws per-query AP bars (one colour per protocol) and per-protocol precision-recall curves to a PNG."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report, dataset = evaluation.report, evaluation.dataset
    protocols = list(PROTOCOLS[dataset.kind])
    m = len(dataset.query_ids)
    fig = Figure(figsize=(max(10, 0.45 * m + 3), 8.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(protocols), height_ratios=[1.1, 1])
    bars = fig.add_subplot(grid[0, :])
    width = 0.8 / len(protocols)
    x = np.arange(m)
    for j, p in enumerate(protocols):
        aps = [q["ap"][p] if q["ap"][p] is not None else np.nan for q in report["per_query"]]
        label = f"{p} (mAP {_pct(report['map'][p])})"
        bars.bar(x + (j - (len(protocols) - 1) / 2) * width, aps, width, label=label)
    bars.set_xticks(x, [q["id"] for q in report["per_query"]], rotation=60, ha="right", fontsize=8)
    # headroom above AP = 1 keeps the legend off the bars
    bars.set_ylim(0, 1.2)
    bars.set_yticks(np.linspace(0, 1, 6))
    bars.set_ylabel("average precision")
    bars.set_title(f"{dataset.name}: {describe(report)}", fontsize=10)
    bars.legend(loc="upper right", fontsize=8, ncols=len(protocols))
    bars.grid(axis="y", alpha=0.3)
    for j, p in enumerate(protocols):
        ax = fig.add_subplot(grid[1, j])
        grid_recall, interpolated = np.linspace(0, 1, 101), []
        for i, g in enumerate(protocol_gnd(dataset.gnd, p)):
            if len(g["ok"]):
                recall, precision = precision_recall(evaluation.ranks[i], g["ok"], g["junk"])
                ax.plot(recall, precision, lw=1, alpha=0.5)
                # interpolated precision: the best precision at this recall or beyond
                best = np.maximum.accumulate(precision[::-1])[::-1]
                interpolated.append(best[np.minimum(np.searchsorted(recall, grid_recall), len(best) - 1)])
        if interpolated:
            ax.plot(grid_recall, np.mean(interpolated, axis=0), color="black", lw=2.5, label="mean (interpolated)")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_title(f"{p}: precision-recall per query", fontsize=9)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    canvas.print_png(buf)
    _atomic_bytes(Path(path), buf.getvalue())


# ---------------------------------------------------------------- command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m precompute.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="roxford5k, rparis6k, oxford5k or paris6k")
    parser.add_argument("--data-root", required=True, help="folder holding <dataset>/")
    parser.add_argument("--images-dir", default=None, help="images folder instead of <data-root>/<dataset>/jpg")
    parser.add_argument("--crops-dir", default=None, help="query crops instead of <data-root>/<dataset>/query_crops")
    add_network_options(parser)
    add_pipeline_options(parser)
    search = parser.add_argument_group("search")
    search.add_argument("--backend", choices=BACKENDS, default="kdtree")
    search.add_argument("--ann-k", type=positive_int, default=1000, metavar="K",
                        help="with --backend ann: the ANN's top K re-ranked exactly, then the rest (default 1000)")
    search.add_argument("--milvus", default=os.environ.get("MILVUS_URI") or None, metavar="URI",
                        help="with --backend milvus: the server (default MILVUS_URI, else Milvus Lite in a temporary "
                        "folder); token: MILVUS_TOKEN")
    search.add_argument("--collection", default="landmark_search_evaluation", metavar="NAME",
                        help="with --backend milvus: the scratch collection, replaced and dropped (default %(default)s)")
    search.add_argument("--milvus-index-type", choices=MILVUS_INDEX_TYPES, default=DEFAULT_MILVUS_INDEX,
                        help="with --backend milvus: the collection's vector index (default %(default)s)")
    search.add_argument("--distractors", default=None, metavar="DIR",
                        help="add the rows of this index (same network and pipeline) to the database (+R1M)")
    search.add_argument("--whiten", action="store_true",
                        help="PCA-whitening learned on the database descriptors (unsupervised)")
    search.add_argument("--whiten-shrinkage", type=float, default=0.5, help="eigenvalue shrinkage (default 0.5)")
    add_rerank_options(parser)
    add_diffusion_options(parser)
    sv = parser.add_argument_group("spatial verification")
    sv.add_argument("--sv", type=nonnegative_int, default=0, metavar="N",
                    help="re-rank the top N of each ranking by SIFT/RANSAC inliers, after QE and DBA (default 0: off)")
    sv.add_argument("--sv-min-inliers", type=positive_int, default=None, metavar="M",
                    help="fewest inliers that verify an image (default: retrieval.verify.DEFAULT_MIN_INLIERS)")
    sv.add_argument("--diffusion-then-sv", action="store_true",
                    help="with diffusion, verify the top N of the diffusion's ranking (default: the verified top "
                    "of the first ranking seeds the diffusion)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="descriptor cache (default %(default)s)")
    add_extraction_options(parser)
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE", help="draw per-query AP and PR curves to a PNG")
    return parser.parse_args(argv)


@contextmanager
def milvus_target(args: argparse.Namespace):
    """Yields the `MilvusTarget` of --backend milvus (token: MILVUS_TOKEN), else None."""
    if args.backend != "milvus":
        yield None
        return
    from retrieval.milvus import evaluation_target

    with evaluation_target(args.milvus, args.collection, token=os.environ.get("MILVUS_TOKEN") or None,
                           index_type=args.milvus_index_type) as target:
        yield target


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from retrieval.networks import NetworkError

    try:
        recipe = recipe_from_args(args)
        dataset = load_dataset(args.dataset, args.data_root, images_dir=args.images_dir, crops_dir=args.crops_dir)
        network = network_from_args(args)
    except (ValueError, FileNotFoundError, DatasetError, NetworkError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(network.describe())
    print(dataset.summary())
    if dataset.partial:
        print(f"evaluated on what is present: {len(dataset.db_ids)} of {dataset.total_db} database images, "
              f"{len(dataset.query_ids)} of {dataset.total_queries} queries")
    if args.whiten:
        print("whitening: learned on the database descriptors (unsupervised, no labels)")
    bars = [tqdm(total=len(dataset.db_ids), unit="img", desc=desc, delay=1, dynamic_ncols=True, disable=off)
            for desc, off in (("embedding database", False), ("local features (SV)", not args.sv))]
    try:
        with milvus_target(args) as milvus:
            evaluation = run_evaluation(
                dataset, network, recipe.descriptor, backend=args.backend, whiten=args.whiten,
                whiten_shrinkage=args.whiten_shrinkage, **recipe.build_options(), sv=args.sv,
                sv_min_inliers=args.sv_min_inliers, distractors=args.distractors, ann_k=args.ann_k,
                diffusion_then_sv=args.diffusion_then_sv,
                cache_dir=args.cache_dir, batch_size=args.batch_size,
                workers=args.workers, progress=bars[0].update, sv_progress=bars[1].update, milvus=milvus,
            )
    except (ValueError, OSError, MilvusError, SearchUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for bar in bars:
            bar.close()
    print(format_table(evaluation.report))
    if args.json:
        write_json(evaluation.report, args.json)
    if args.plot:
        plot_evaluation(evaluation, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
