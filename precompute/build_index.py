"""Build or update an index of a folder of images.

    python -m precompute.build_index --images DIR --out DIR [--network efficientnet-lite0] [--push USER/NAME]
    python -m precompute.build_index --images DIR --out DIR --engine ray [--address auto|ray://HOST:10001]
    python -m precompute.build_index --vectors X.npy [--ids IDS.npy] --network NAME --out DIR

Rerunning on the same folder embeds only new or changed images and drops deleted ones; an
interrupted run resumes where it stopped. `--engine ray` embeds on a Ray cluster (a local one
without --address) and writes the same index; it needs `pip install -r requirements-ray.txt`.
--vectors makes an index of descriptors computed elsewhere, without thumbnails. --ann adds the
FAISS structure (automatic from retrieval.defaults.DEFAULT.ann_rows rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from precompute.options import (
    add_diffusion_options, add_extraction_options, add_network_options, add_pipeline_options, add_rerank_options,
    network_from_args, nonnegative_int, positive_int, recipe_from_args,
)
from retrieval.previews import PREVIEW_MAX_IMAGES, PREVIEW_SIDE


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m precompute.build_index", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images, searched recursively")
    source.add_argument("--vectors", metavar="X.npy",
                        help="(n, d) descriptors computed elsewhere by --network with the pipeline options")
    parser.add_argument("--ids", metavar="IDS.npy", default=None, help="with --vectors: n unique ids (default vec_0000000...)")
    parser.add_argument("--ann", action=argparse.BooleanOptionalAction, default=None,
                        help="build the FAISS ANN structure (default: from 50,000 rows up)")
    parser.add_argument("--out", required=True, help="index folder to create or update")
    add_network_options(parser)
    add_pipeline_options(parser)
    add_rerank_options(parser)
    add_diffusion_options(parser)
    parser.add_argument("--whiten", action="store_true", help="learn and store a PCA-whitening of the descriptors")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature type")
    add_extraction_options(parser)
    parser.add_argument("--preview-side", type=nonnegative_int, default=PREVIEW_SIDE,
                        help=f"also store a JPEG preview this many pixels on its longer side for the app's editor and "
                        f"match view (default {PREVIEW_SIDE}; 0: none)")
    parser.add_argument("--max-previews", type=nonnegative_int, default=PREVIEW_MAX_IMAGES,
                        help=f"store previews only for indexes of at most this many images (default {PREVIEW_MAX_IMAGES})")
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: threads in this process (default); ray: a Ray Data pipeline")
    group.add_argument("--address", default=None,
                       help="with --engine ray: join this cluster (auto, ray://HOST:10001); default: start a local Ray")
    group.add_argument("--actors", type=positive_int, default=None,
                       help="with --engine ray: embedding actors (default: one per GPU, or one per 8 CPUs)")
    parser.add_argument("--source", default=None, help="name of the source collection, for the dataset card")
    parser.add_argument("--push", metavar="REPO_ID", default=None,
                        help="then push the index to this Hugging Face dataset repo (token: HF_TOKEN or the hub login)")
    return parser.parse_args(argv)


def _build_on_ray(args: argparse.Namespace, pipeline, common: dict):
    from functools import partial

    import logging

    try:
        import ray.data  # noqa: F401  (the engine imports it lazily; fail here, with the remedy)
    except ImportError as e:
        raise SystemExit(f"error: --engine ray needs Ray: pip install -r requirements-ray.txt ({e})") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress bar instead of Ray Data's log lines
    from retrieval.build_ray import build_index_ray
    from retrieval.networks import build_network

    from precompute.options import runtime_kwargs

    # The actors run the network as the local build would: the same runtime, precision and cache.
    make_network = partial(build_network, args.network, weights=args.weights, **runtime_kwargs(args))
    return build_index_ray(args.images, args.out, make_network, pipeline, address=args.address,
                           actors=args.actors, **common)


def main(argv=None) -> int:
    args = parse_args(argv)
    from retrieval.build import BuildError, build_index, os_message
    from retrieval.features import ImageError
    from retrieval.networks import NetworkError

    try:
        recipe = recipe_from_args(args)
        network = None if args.vectors or args.engine == "ray" else network_from_args(args)
    except (ValueError, NetworkError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.vectors:
        code = build_vectors(args, recipe.descriptor, recipe.qe, recipe.dba)
        if code == 0 and args.push:
            _push(args)
        return code
    if network is not None:
        print(network.describe(), file=sys.stderr)
    bar = tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    # Only the folder name: a local path would end up in the public dataset card.
    extra = {"source": args.source or Path(args.images).resolve().name}
    try:
        common = dict(batch_size=args.batch_size, dtype=args.dtype, whiten=args.whiten, **recipe.build_options(),
                      ann=args.ann, preview_side=args.preview_side or None, max_previews=args.max_previews,
                      extra_meta=extra, progress=progress, log=lambda msg: tqdm.write(msg))
        if args.engine == "ray":
            report = _build_on_ray(args, recipe.descriptor, common)
        else:
            report = build_index(args.images, args.out, network, recipe.descriptor, workers=args.workers, **common)
    except (BuildError, FileNotFoundError, ImageError, NetworkError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only or forbidden folder: one line, the previous index intact
        bar.close()
        print(f"error: {os_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: finished descriptors are cached; rerun the same command to resume", file=sys.stderr)
        return 130
    bar.close()
    print(
        f"index: {args.out}: {report.count} images ({report.embedded} embedded, {report.reused} reused, "
        f"{report.removed} removed, {len(report.skipped)} skipped) in {report.seconds:.1f} s"
    )
    if args.push:
        _push(args)
    return 0


def _push(args: argparse.Namespace) -> None:
    from retrieval.hub import push_index

    commit = push_index(args.out, args.push)
    print(f"pushed to {args.push} (commit {commit})")


def build_vectors(args: argparse.Namespace, pipeline, qe: int, dba: int) -> int:
    """The --vectors path: checks and indexes a descriptor matrix; returns the exit status."""
    import numpy as np

    from retrieval.vectors import VectorsError, build_from_vectors

    if args.whiten:
        print("error: --whiten is not available with --vectors", file=sys.stderr)
        return 2
    try:
        vectors = np.load(args.vectors, mmap_mode="r", allow_pickle=False)
        ids = np.load(args.ids, allow_pickle=False) if args.ids else None
        report = build_from_vectors(
            vectors, args.out, network=args.network, weights=args.weights, pipeline=pipeline, ids=ids,
            dba=dba, qe=qe, alpha=args.alpha, ann=args.ann, dtype=args.dtype,
            extra_meta={"source": args.source or Path(args.vectors).name}, log=lambda msg: print(msg, file=sys.stderr),
        )
    except (OSError, ValueError) as e:  # VectorsError is a ValueError; so is an unreadable .npy
        kind = "the descriptors are refused" if isinstance(e, VectorsError) else "cannot read the input"
        print(f"error: {kind}: {e}", file=sys.stderr)
        return 1
    times = ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())
    ann = f", ANN {report['ann']['factory']}" if report["ann"] else ""
    print(f"index: {args.out}: {report['count']} descriptors of dimension {report['dim']}{ann} ({times})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
