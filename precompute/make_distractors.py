"""Write an index of synthetic distractor descriptors fitted to real ones (this machine has no R1M).

    python -m precompute.make_distractors --fit-images ../shared/data/rparis6k/jpg --network efficientnet-lite0 \\
        --count 300000 --out indexes/distractors-lite0
    python -m precompute.make_distractors --fit-index DIR --count N --out DIR

The descriptors of the fitting set (a folder of images embedded with --network and the pipeline
options, an index, or an .npy matrix) give a clustered Gaussian (`retrieval.distractors`); N
rows drawn from it become an index of that network and pipeline with no thumbnails and no DBA
(ready for `precompute.evaluate --distractors`), with an ANN structure from 50,000 rows up.
Real distractor descriptors (R1M's) go through `precompute.build_index --vectors` instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from precompute.options import add_extraction_options, add_network_options, add_pipeline_options, pipeline_from_args, positive_int


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m precompute.make_distractors", description=__doc__.split("\n")[0])
    fit = parser.add_mutually_exclusive_group(required=True)
    fit.add_argument("--fit-images", metavar="DIR", help="embed these images with --network and fit to them")
    fit.add_argument("--fit-index", metavar="DIR", help="fit to the rows of this index (its network and pipeline)")
    fit.add_argument("--fit-vectors", metavar="X.npy", help="fit to this (n, d) matrix made by --network")
    parser.add_argument("--count", type=positive_int, required=True, help="distractors to write")
    parser.add_argument("--out", required=True, help="index folder to write")
    add_network_options(parser)
    add_pipeline_options(parser)
    add_extraction_options(parser)
    gen = parser.add_argument_group("generator (retrieval.distractors)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--rank", type=positive_int, default=64, help="principal directions kept (default 64)")
    gen.add_argument("--cluster-size", type=positive_int, default=20, help="mean rows per cluster (default 20)")
    gen.add_argument("--spread", type=float, default=0.8, help="within-cluster spread, 0-1 (default 0.8)")
    parser.add_argument("--ann", action=argparse.BooleanOptionalAction, default=None,
                        help="build the FAISS ANN structure (default: from 50,000 rows up)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    return parser.parse_args(argv)


def fitting_rows(args: argparse.Namespace) -> tuple[np.ndarray, str, str, dict]:
    """Returns (rows, network, weights, pipeline meta) of the fitting set the options name."""
    if args.fit_index:
        from retrieval.index import load_index

        index = load_index(args.fit_index)
        return np.asarray(index.features, np.float32), index.meta["network"], index.meta["weights"], index.meta["pipeline"]
    pipeline = pipeline_from_args(args)
    if args.fit_vectors:
        return np.load(args.fit_vectors, allow_pickle=False).astype(np.float32), args.network, args.weights, pipeline.to_meta()
    from retrieval.features import extract_features, find_images
    from retrieval.networks import build_network

    network = build_network(args.network, weights=args.weights)
    rows = extract_features(network, find_images(Path(args.fit_images)), pipeline,
                            batch_size=args.batch_size, workers=args.workers)
    return rows, network.name, network.weights, pipeline.to_meta()


def main(argv=None) -> int:
    args = parse_args(argv)
    from retrieval.distractors import distribution_stats, fit_distractor_model, sample_distractors
    from retrieval.features import Pipeline
    from retrieval.vectors import build_from_vectors

    try:
        rows, network, weights, pipeline = fitting_rows(args)
        model = fit_distractor_model(rows, rank=args.rank)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = {"seed": args.seed, "rank": args.rank, "cluster_size": args.cluster_size, "spread": args.spread}
    stats = {"fitted": distribution_stats(rows),
             "generated": distribution_stats(sample_distractors(model, len(rows), seed=args.seed + 1,
                                                                cluster_size=args.cluster_size, spread=args.spread))}
    print(f"fitted to {len(rows)} descriptors of {network}; nearest-neighbour similarity, median: "
          f"real {stats['fitted']['nn1']:.3f}, generated {stats['generated']['nn1']:.3f}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.draw-", dir=out.parent))
    try:
        drawn = np.lib.format.open_memmap(work / "drawn.npy", mode="w+", dtype=args.dtype, shape=(args.count, model.dim))
        sample_distractors(model, args.count, seed=args.seed, cluster_size=args.cluster_size, spread=args.spread, out=drawn)
        extra = {"source": "synthetic distractors", "distractors": {**settings, "fitted_rows": len(rows), "stats": stats}}
        report = build_from_vectors(drawn, out, network=network, weights=weights, pipeline=Pipeline.from_meta(pipeline),
                                    ids=[f"distractor_{i:07d}" for i in range(args.count)], dba=0, ann=args.ann,
                                    dtype=args.dtype, extra_meta=extra, log=lambda m: print(m, file=sys.stderr))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())
    print(f"index: {out}: {report['count']} distractors of dimension {report['dim']} ({times})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
