"""mAP of the fixed-shape buckets against every image's own shape, on the mini RParis, as a README table.

    python -m benchmarks.buckets [--json results/buckets.json] [--cache-dir DIR]

Runs `precompute.evaluate` (EfficientNet-Lite0, the default pipeline otherwise: GeM at max side
384, DBA k=3, alpha QE k=5) with `--bucket none`, `resize` and `pad`, and counts the distinct
network input shapes of the database images under each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FITS = ("none", "resize", "pad")
COMMAND = ("python -m precompute.evaluate --dataset rparis6k --data-root ../shared/data --network efficientnet-lite0 "
           "--bucket {}")


def input_shapes(files, pipeline) -> int:
    """Returns how many distinct network input shapes the image files get, read from their headers."""
    from retrieval.features import _draft_size

    sizes = [_draft_size(p, pipeline)[1] for p in files]
    return len({pipeline.target_size(*size) for size in sizes if size})


def measure(cache_dir: str, say) -> list[dict]:
    """Returns one row per bucket mode: mAP per protocol (percent) and the number of input shapes."""
    from precompute import evaluate
    from precompute.options import pipeline_from_args
    from retrieval.features import find_images

    files = find_images(DATA / "rparis6k" / "jpg")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fit in FITS:
            argv = ["--dataset", "rparis6k", "--data-root", str(DATA), "--network", "efficientnet-lite0",
                    "--bucket", fit, "--cache-dir", cache_dir, "--json", f"{tmp}/{fit}.json"]
            say(f"evaluate --bucket {fit}")
            if evaluate.main(argv) != 0:
                raise RuntimeError(f"precompute.evaluate failed for --bucket {fit}")
            report = json.loads(Path(f"{tmp}/{fit}.json").read_text())
            pipeline = pipeline_from_args(evaluate.parse_args(argv))
            rows.append({"bucket": fit, "map": report["map"], "shapes": input_shapes(files, pipeline),
                         "database": report["database_size"], "command": COMMAND.format(fit)})
    return rows


def table(rows: list[dict]) -> dict:
    """Returns the README table: mAP per protocol, the change against no buckets, and the shape count."""
    base = next(r for r in rows if r["bucket"] == "none")["map"]
    out = []
    for r in rows:
        m = r["map"]
        out.append([f"`--bucket {r['bucket']}`", *(f"{100 * m[p]:.1f}" for p in ("easy", "medium", "hard")),
                    *(f"{100 * (m[p] - base[p]):+.1f}" for p in ("medium", "hard")), r["shapes"]])
    return {"columns": ["buckets", "Easy", "Medium", "Hard", "Δ Medium", "Δ Hard", "input shapes (the 409 photos)"],
            "align": "lrrrrrr", "rows": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.buckets", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the figures and the README table here")
    parser.add_argument("--cache-dir", default=None, help="descriptor cache (default: a fresh temporary folder)")
    args = parser.parse_args(argv)
    if not (DATA / "rparis6k" / "jpg").is_dir():
        print("error: needs the photos in ../shared/data/rparis6k (see its README)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.cache_dir or tmp, lambda msg: print(msg, file=sys.stderr, flush=True))
    result = {"command": "python -m benchmarks.buckets", "rows": rows, "tables": {"map": table(rows)}}
    for r in table(rows)["rows"]:
        print(" | ".join(str(c) for c in r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
