"""Index build throughput of EfficientNetB7 on an accelerator: build_index against the pure forward.

    KERAS_BACKEND=torch python -m benchmarks.gpu --images DIR [--repeat 8] [--json FILE]

Made for machines with PyTorch but no TensorFlow: Keras 3 runs on its torch backend, and
`retrieval.networks` (which imports TensorFlow) is replaced in this process by a stand-in whose
`forward` is Keras' own model call, so that the real `retrieval.build.build_index` and
`retrieval.features.iter_features` run unchanged around it. Weights are random (speed does
not depend on them). The photos are taken `--repeat` times under new names, so that a small
folder gives a build long enough to time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.parts import (
    ForwardCounter,
    common_input_shape,
    decode_throughput,
    linked_folder,
    summarize,
    time_forward,
)
from precompute.options import DEFAULT_MAX_SIDE
from retrieval.defaults import DEFAULT


@dataclass(frozen=True)
class StandInNetwork:
    """What build_index and iter_features use of `retrieval.networks.Network`."""

    name: str
    weights: str
    model: object
    channels: int


def keras_forward(network, batch: np.ndarray) -> np.ndarray:
    """Returns (b, h', w', c) float32 feature maps through Keras' own call, on any backend."""
    import keras

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    with _inference_mode():
        out = network.model(batch, training=False)
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


def _inference_mode():
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.inference_mode()
    return contextlib.nullcontext()


def _upright_size(path) -> tuple[int, int]:
    from PIL import Image

    from retrieval.features import _exif_transposes

    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if _exif_transposes(im) else (w, h)


def install_network_stand_in(forward) -> None:
    """Makes `import retrieval.networks` give a module whose only content is `forward`."""
    module = types.ModuleType("retrieval.networks", "benchmark stand-in: forward() is Keras' own call")
    module.forward = forward
    sys.modules["retrieval.networks"] = module


def describe_device() -> dict:
    """Returns the Keras backend, the accelerator's name (or the CPU's) and the CPU count."""
    import keras

    info = {"backend": keras.backend.backend(), "keras": keras.__version__, "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["torch"] = torch.__version__
            info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
            info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    except ImportError:
        pass
    info.setdefault("device", f"CPU {platform.processor() or platform.machine()}")
    return info


def say(message: str) -> None:
    """Prints a progress line at once, so that a run cut short still tells how far it got."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(images: Path, *, repeat: int, batch_size: int, workers: list[int], max_side: int,
            forward_batches: list[int], forward_budget_s: float, network: StandInNetwork | None = None,
            bucket: str = "none") -> dict:
    """Returns every figure of the GPU build benchmark as a plain dict.

    Args:
        network: the network to measure; EfficientNetB7 with random weights when None.
    """
    import keras

    device = describe_device()
    say(f"device: {device}")
    t0 = time.perf_counter()
    if network is None:
        model = keras.applications.EfficientNetB7(include_top=False, weights=None, input_shape=(None, None, 3))
        network = StandInNetwork("efficientnet-b7", "none", model, 2560)
    build_network_s = time.perf_counter() - t0
    weight = network.model.weights[0].value
    say(f"network built in {build_network_s:.1f} s; its weights are on {getattr(weight, 'device', 'n/a')}")
    counter = ForwardCounter(keras_forward)
    install_network_stand_in(counter)
    from retrieval.build import build_index
    from retrieval.features import THUMBNAIL_SIDE, Pipeline, find_images, iter_features, pool

    files = find_images(images)
    pipeline = Pipeline(max_side=max_side, bucket=None if bucket == "none" else bucket)
    shape, shape_count = common_input_shape(files, pipeline)
    forward = {}
    for b in sorted(set(forward_batches) | {batch_size}):
        forward[b] = time_forward(keras_forward, network, shape, b, max_images=len(files) * repeat,
                                  budget_s=forward_budget_s)
        say(f"pure forward batch {b}: {forward[b]['images_per_s']:.1f} images/s "
            f"(first call {forward[b]['first_call_s']:.1f} s)")
    # Every shape of the data once, untimed: backends pick kernels on a shape's first call.
    shapes = {tuple(pipeline.target_size(*_upright_size(p))) for p in files}
    t0 = time.perf_counter()
    for _ in iter_features(network, files, pipeline, batch_size=batch_size, workers=max(workers)):
        pass
    warm_s = time.perf_counter() - t0
    say(f"first pass over {len(files)} photos ({len(shapes)} input shapes) took {warm_s:.1f} s")
    builds = []
    for w in workers:
        counter.calls, counter.images, counter.seconds = 0, 0, 0.0
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            folder = linked_folder(files, Path(tmp) / "images", repeat=repeat)
            report = build_index(folder, Path(tmp) / "index", network, pipeline, batch_size=batch_size, workers=w)
        ips = report.count / report.seconds
        builds.append({
            "workers": w, "images": report.count, "build_s": report.seconds, "build_images_per_s": ips,
            "ratio": ips / forward[batch_size]["images_per_s"],
            "decode_images_per_s": decode_throughput(files, pipeline, workers=w, thumbnail_side=THUMBNAIL_SIDE),
            **counter.stats(),
        })
        say(f"build_index with {w} workers: {ips:.1f} images/s")
    fmap = np.random.default_rng(0).random((batch_size, shape[0] // 32, shape[1] // 32, network.channels),
                                           dtype=np.float32)
    pool_times = []
    for _ in range(10):
        t0 = time.perf_counter()
        pool(fmap, "gem")
        pool_times.append(time.perf_counter() - t0)
    return {
        **device, "network": network.name, "build_network_s": build_network_s, "photos": len(files),
        "repeat": repeat, "batch_size": batch_size, "max_side": max_side, "bucket": bucket, "common_shape": list(shape),
        "common_shape_photos": shape_count, "distinct_shapes": len(shapes), "first_pass_s": warm_s,
        "forward": {str(b): v for b, v in forward.items()},
        "builds": builds, "gem_pool_per_batch": summarize(pool_times),
    }


def format_markdown(r: dict) -> str:
    """Returns the results as a markdown section."""
    b = r["batch_size"]
    fwd = r["forward"][str(b)]["images_per_s"]
    h, w, _ = r["common_shape"]
    lines = [
        f"### Build throughput on {r['device']} (Keras {r['keras']}, {r['backend']} backend, float32, "
        f"{r['cpus']} CPUs)",
        "",
        f"{r['network']}, random weights; {r['photos']} photos x {r['repeat']}, max side {r['max_side']}; "
        f"most common input {w}x{h} ({r['common_shape_photos']} of {r['photos']} photos).",
        "",
        "| measure | images/s | vs pure forward (batch %d) |" % b,
        "| --- | --- | --- |",
    ]
    for batch, f in sorted(r["forward"].items(), key=lambda kv: int(kv[0])):
        ips = f["images_per_s"]
        lines.append(f"| pure forward, batch {batch}, {w}x{h} | {ips:.1f} | {ips / fwd:.2f} |")
    for x in r["builds"]:
        lines.append(
            f"| build_index, batch {b}, {x['workers']} decode workers | {x['build_images_per_s']:.1f} | "
            f"{x['ratio']:.2f} ({'PASS' if x['ratio'] >= 0.85 else 'MISS'} vs 0.85) |"
        )
        lines.append(f"| decode + resize + thumbnail alone, {x['workers']} threads "
                     f"| {x['decode_images_per_s']:.1f} | |")
    lines += ["", "| workers | network calls | mean batch | time in forward / build time |",
              "| --- | --- | --- | --- |"]
    for x in r["builds"]:
        lines.append(f"| {x['workers']} | {x['forward_calls']} | {x['mean_batch']:.2f} | "
                     f"{x['forward_seconds']:.1f} s / {x['build_s']:.1f} s |")
    lines += ["", f"The first pass over the {r['photos']} photos ({r['distinct_shapes']} input shapes, untimed "
              f"above) took {r['first_pass_s']:.1f} s."]
    lines += ["", f"GeM pooling of one batch in numpy (main thread): {r['gem_pool_per_batch']['median_ms']:.1f} ms; "
              f"network built in {r['build_network_s']:.1f} s."]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of photos")
    parser.add_argument("--repeat", type=int, default=8, help="take each photo this many times")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", default="2,8", help="comma-separated decode worker counts to try")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE)
    parser.add_argument("--bucket", choices=("none", "resize", "pad"), default=DEFAULT.descriptor.bucket or "none",
                        help="fixed-shape buckets (default: the default pipeline's)")
    parser.add_argument("--forward-batches", default="8,32", help="batch sizes of the pure forward")
    parser.add_argument("--forward-budget", type=float, default=20.0, help="seconds per pure forward measure")
    parser.add_argument("--json", default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(
        Path(args.images), repeat=args.repeat, batch_size=args.batch_size,
        workers=[int(w) for w in args.workers.split(",")], max_side=args.max_side, bucket=args.bucket,
        forward_batches=[int(b) for b in args.forward_batches.split(",")], forward_budget_s=args.forward_budget,
    )
    print(format_markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
