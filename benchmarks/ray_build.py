"""The Ray build against the local build on real photos: the same index, and how long each takes.

    python -m benchmarks.ray_build [--images ../shared/data/rparis6k/jpg] [--network efficientnet-lite0]
                                   [--json results/ray_build.json]

Builds the folder twice per engine into fresh folders: with the default recipe, and with
`--dba 0 --no-diffusion` (the descriptors alone). Ray runs on this machine (a local cluster with
every CPU), started before the clock starts: its start-up (`ray.init`, then a first build of 8
photos that starts the actors and Ray Data's executor) is timed apart. Reports per recipe the
lowest cosine of a row with its row of the other engine, the number of rows below 0.999, and
each engine's build time. Writes a results file whose `tables.ray_build` docs/build.md shows.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.benchmark import machine_info
from benchmarks.report import save_results

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT.parent / "shared" / "data" / "rparis6k" / "jpg"


def compare(local_dir: Path, ray_dir: Path) -> dict:
    """Returns how far apart two index folders are, row by row."""
    from retrieval.index import load_index

    local, on_ray = load_index(local_dir), load_index(ray_dir)
    same_ids = list(local.ids) == list(on_ray.ids)
    cosines = np.einsum("ij,ij->i", local.features, on_ray.features) if same_ids else np.zeros(1)
    return {"rows": len(local), "same_ids_in_order": same_ids, "min_cosine": round(float(cosines.min()), 6),
            "rows_below_0_999": int((cosines < 0.999).sum()),
            "worst": str(local.ids[int(cosines.argmin())]) if same_ids else None}


WARM_UP_PHOTOS = 8


def measure(images: Path, network_name: str) -> dict:
    import ray

    from retrieval.build import build_index
    from retrieval.build_ray import build_index_ray
    from retrieval.defaults import DEFAULT
    from retrieval.networks import build_network

    # As the command does (--runtime-cache): the actors load the driver's conversion instead of converting again.
    cache = Path(tempfile.mkdtemp(prefix="ray-build-networks-"))
    network = build_network(network_name, weights="imagenet", cache_dir=cache)
    make = functools.partial(build_network, network_name, weights="imagenet", runtime=network.runtime, cache_dir=cache)
    recipes = {
        "default": dict(dba=DEFAULT.dba, qe=DEFAULT.qe, alpha=DEFAULT.alpha, diffusion=DEFAULT.diffusion),
        "--dba 0 --no-diffusion": dict(dba=0, qe=DEFAULT.qe, alpha=DEFAULT.alpha, diffusion=None),
    }
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    out = {"ray_start_s": round(ray_start, 1), "runtime": network.runtime, "recipes": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="ray-build-") as tmp:
            # Ray's start, excluded from the comparison as the target says: a first build of a few
            # photos starts the actors (each loads the network) and Ray Data's executor.
            few = Path(tmp) / "warm-up-photos"
            few.mkdir()
            for photo in sorted(p for p in images.iterdir() if p.is_file())[:WARM_UP_PHOTOS]:
                (few / photo.name).symlink_to(photo.resolve())
            t0 = time.perf_counter()
            build_index_ray(few, Path(tmp) / "warm-up", make, DEFAULT.descriptor, dba=0, diffusion=None)
            out["ray_warm_up_s"] = round(time.perf_counter() - t0, 1)
            for name, recipe in recipes.items():
                folder = Path(tmp) / name.replace(" ", "")
                t0 = time.perf_counter()
                build_index(images, folder / "local", network, DEFAULT.descriptor, **recipe)
                local_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                build_index_ray(images, folder / "ray", make, DEFAULT.descriptor, **recipe)
                ray_s = time.perf_counter() - t0
                out["recipes"][name] = {**compare(folder / "local", folder / "ray"), "local_s": round(local_s, 1),
                                        "ray_s": round(ray_s, 1), "ratio": round(ray_s / local_s, 2)}
                print(name, out["recipes"][name], file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    return out


def table(m: dict) -> dict:
    rows = [[f"`{name}`" if name != "default" else "default recipe", r["rows"], "yes" if r["same_ids_in_order"] else "no",
             f"{r['min_cosine']:.6f}", r["rows_below_0_999"], f"{r['local_s']:.1f}", f"{r['ray_s']:.1f}", f"{r['ratio']:.2f}"]
            for name, r in m["recipes"].items()]
    return {"columns": ["recipe", "photos", "same ids, same order", "lowest row cosine", "rows below 0.999",
                        "local build s", "Ray build s", "Ray / local"], "align": "lrlrrrrr", "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_build", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="a folder of photos (default: the Paris photos)")
    parser.add_argument("--network", default="efficientnet-lite0")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (e.g. results/ray_build.json)")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        print(f"error: no folder {args.images} (../shared/data holds the Paris photos)", file=sys.stderr)
        return 1
    measured = measure(args.images, args.network)
    results = {
        "command": "python -m benchmarks.ray_build --json results/ray_build.json",
        "machine": machine_info(),
        "network": args.network,
        "measured": measured,
        "tables": {"ray_build": table(measured)},
    }
    save_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
