"""Do the runtimes give Keras' descriptors? Per-image cosine and mini-RParis mAP, one network build per runtime.

    python -m benchmarks.runtime_check --network efficientnet-lite0 --json results/runtime_check.json

Builds the network once in Keras, then runs the same weights through every runtime and
precision asked for, so that random weights (``--weights none``, B7 here) compare too: two
processes would draw two different networks. Every database photo and query crop of the mini
RParis is embedded with the default pipeline; the table gives the smallest and median cosine
against Keras, the mAP with the default re-ranking, and the database embedding rate. A results
file that already holds other networks keeps them (one row per network and runtime).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.defaults import DEFAULT

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (("keras", "float32"), ("onnxruntime", "float32"), ("openvino", "float32"), ("openvino", "bfloat16"))


def check(dataset, network_name: str, weights: str, *, variants=VARIANTS, say=lambda msg: None) -> list[dict]:
    """Returns one row per runtime variant: cosine to Keras per image, mAP and embedding rate."""
    from retrieval.evaluation import dataset_descriptors, run_evaluation
    from retrieval.networks import build_network, with_runtime

    keras = build_network(network_name, weights=weights, runtime="keras")  # the reference every runtime is checked against
    rows, reference = [], None
    with tempfile.TemporaryDirectory(prefix="runtime-check-") as tmp:
        for runtime, precision in variants:
            network = with_runtime(keras, runtime, precision=precision, cache_dir=Path(tmp) / "runtimes")
            say(f"{network.describe()}: embedding {len(dataset.db_ids)} photos and {len(dataset.query_ids)} crops")
            t0 = time.perf_counter()
            found = dataset_descriptors(dataset, network, DEFAULT.descriptor, cache_dir=Path(tmp) / "descriptors")
            seconds = time.perf_counter() - t0
            report = run_evaluation(dataset, network, DEFAULT.descriptor, qe=DEFAULT.qe, dba=DEFAULT.dba,
                                    alpha=DEFAULT.alpha, cache_dir=Path(tmp) / "descriptors").report
            vectors = np.concatenate([found.db, found.queries])
            reference = vectors if reference is None else reference
            cosine = np.sum(vectors * reference, axis=1)
            rows.append({"network": network_name, "weights": network.weights, "runtime": runtime,
                         "precision": precision, "images": len(vectors), "min_cosine": float(cosine.min()),
                         "median_cosine": float(np.median(cosine)), "map": report["map"],
                         "db_images_per_s": len(found.db) / seconds,
                         "query_embed_median_s": float(np.median(found.embed_seconds))})
    return rows


def table(rows: list[dict]) -> dict:
    """Returns the README table of the rows (mAP in points, and its change against Keras)."""
    keras = {r["network"]: r for r in rows if r["runtime"] == "keras"}
    out = []
    for r in rows:
        base = keras.get(r["network"], r)
        maps = [f"{100 * r['map'][p]:.1f} ({100 * (r['map'][p] - base['map'][p]):+.1f})"
                for p in ("easy", "medium", "hard")]
        precision = "" if r["precision"] == "float32" else f" {r['precision']}"
        out.append([f"{r['network']} ({r['weights']})", r["runtime"] + precision, f"{r['min_cosine']:.6f}",
                    f"{r['median_cosine']:.6f}", *maps, f"{r['db_images_per_s']:.1f}",
                    f"{1000 * r['query_embed_median_s']:.0f}"])
    return {"columns": ["network (weights)", "runtime", "min cosine to keras", "median cosine", "mAP Easy (change)",
                        "Medium", "Hard", "build img/s", "query embed ms"],
            "align": "llrrrrrrr", "rows": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtime_check", description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="efficientnet-lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json", default=None, help="results file to add the rows to (and its README table)")
    args = parser.parse_args(argv)
    from retrieval.datasets import load_dataset

    dataset = load_dataset("rparis6k", args.data_root)
    rows = check(dataset, args.network, args.weights,
                 say=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True))
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text())["rows"] if path.is_file() else []
        rows = [r for r in old if r["network"] != args.network] + rows
        command = "python -m benchmarks.runtime_check --network NETWORK --weights WEIGHTS --json " + args.json
        path.write_text(json.dumps({"command": command, "rows": rows, "tables": {"agreement": table(rows)}},
                                   indent=2) + "\n")
    for row in table(rows)["rows"]:
        print(" | ".join(str(c) for c in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
