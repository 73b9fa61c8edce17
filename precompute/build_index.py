"""Build or update an index of a folder of images.

    python -m precompute.build_index --images DIR --out DIR [--network efficientnet-lite0] [--push USER/NAME]

Rerunning on the same folder embeds only new or changed images and drops deleted ones; an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from precompute.options import (
    add_diffusion_options, add_extraction_options, add_network_options, add_pipeline_options, add_rerank_options,
    diffusion_from_args, network_from_args, pipeline_from_args, rerank_from_args,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m precompute.build_index", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of images, searched recursively")
    parser.add_argument("--out", required=True, help="index folder to create or update")
    add_network_options(parser)
    add_pipeline_options(parser)
    add_rerank_options(parser)
    add_diffusion_options(parser)
    parser.add_argument("--whiten", action="store_true", help="learn and store a PCA-whitening of the descriptors")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature type")
    add_extraction_options(parser)
    parser.add_argument("--source", default=None, help="name of the source collection, for the dataset card")
    parser.add_argument("--push", metavar="REPO_ID", default=None,
                        help="then push the index to this Hugging Face dataset repo (token: HF_TOKEN or the hub login)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from retrieval.build import BuildError, build_index
    from retrieval.features import ImageError
    from retrieval.networks import NetworkError

    try:
        pipeline = pipeline_from_args(args)
        qe, dba = rerank_from_args(args)
        diffusion = diffusion_from_args(args)
        network = network_from_args(args)
    except (ValueError, NetworkError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    # Only the folder name: a local path would end up in the public dataset card.
    extra = {"source": args.source or Path(args.images).resolve().name}
    try:
        report = build_index(
            args.images, args.out, network, pipeline,
            batch_size=args.batch_size, workers=args.workers, dtype=args.dtype, whiten=args.whiten,
            qe=qe, dba=dba, alpha=args.alpha, diffusion=diffusion,
            extra_meta=extra, progress=progress, log=lambda msg: tqdm.write(msg),
        )
    except (BuildError, FileNotFoundError, ImageError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
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
        from retrieval.hub import push_index

        commit = push_index(args.out, args.push)
        print(f"pushed to {args.push} (commit {commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
