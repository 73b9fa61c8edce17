"""When is there no good match? Calibrates the "confident match" rule on photos of the collection's
places and on photos and made images of nothing in it.

    python -m benchmarks.confidence [--json results/confidence.json] [--network efficientnet-lite0] [--sv-top 5]

In-domain: the 19 Paris query crops, searched in the mini RParis database (397 photos, stored as
the default recipe stores them: DBA k=3). Out-of-domain: scikit-image's bundled sample photos
(`out_of_domain_images`) and made images (solid colours, noise, gradients, text, a 1x1 grey pixel,
a red ellipse on a transparent PNG), each sent as a PNG file, as the app receives an upload.

For each query three kinds of evidence, each timed:
- the best similarity: the query's highest cosine with any stored row (the first search's top);
- the margin: that minus the second highest;
- local-feature verification (`retrieval.verify`, what the match view draws): the most inliers
  among the default ranking's top --sv-top photos (their SIFT features cached, the query's timed).

Each evidence gets the threshold that best separates the two sets (the midpoint of the gap where
they separate) and its rates; the rule in `retrieval.confidence` is scored as it stands on the full
database, on both random halves, with few photos of the query's place and with 10,000 synthetic
distractors (the settings of `benchmarks.stability`), and with its threshold chosen again without
each landmark's crops, or without each out-of-domain image.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.stability import ROOT, load_collection, parse_args as stability_args, query_landmarks
from retrieval.confidence import judge, threshold_for
from retrieval.database import augment_database
from retrieval.datasets import load_dataset
from retrieval.defaults import DEFAULT
from retrieval.distractors import fit_distractor_model, sample_distractors
from retrieval.evaluation import DEFAULT_CACHE_DIR, database_local_features, rank_queries
from retrieval.features import embed_image

# scikit-image's sample photos bundled with the package (no download), none of them of Paris.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
                  "moon", "page", "text", "checkerboard", "clock", "coins", "grass", "gravel", "brick", "colorwheel",
                  "logo", "retina", "cell", "microaneurysms", "horse", "binary_blobs")
SOLID = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (255, 0, 0),
         "green": (0, 255, 0), "blue": (0, 0, 255), "sky blue": (135, 206, 235)}


def made_images(size: tuple[int, int] = (640, 480)) -> list[tuple[str, Image.Image]]:
    """Returns (name, image) pairs of made images: solid colours, noise, gradients, text, a 1x1 pixel, a transparent PNG."""
    w, h = size
    rng = np.random.default_rng(0)
    out = [(f"solid {name}", Image.new("RGB", size, rgb)) for name, rgb in SOLID.items()]
    out.append(("noise, uniform RGB", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))))
    out.append(("noise, Gaussian grey", Image.fromarray(np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(np.uint8))))
    out.append(("noise, coarse blocks", Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
                .resize(size, Image.NEAREST)))
    ramp = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    out.append(("gradient, horizontal grey", Image.fromarray(ramp.astype(np.uint8))))
    down = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    out.append(("gradient, vertical blue", Image.fromarray(np.stack([np.zeros((h, w)), down / 2, down], -1).astype(np.uint8))))
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h / 2, xx - w / 2)
    out.append(("gradient, radial", Image.fromarray((255 * (1 - radius / radius.max())).astype(np.uint8))))
    lines = Image.new("RGB", size, "white")
    for i in range(10):
        ImageDraw.Draw(lines).text((20, 20 + 44 * i), f"The quick brown fox jumps over the lazy dog {i}", fill="black")
    out.append(("text, ten lines", lines))
    large = Image.new("RGB", size, "white")
    ImageDraw.Draw(large).text((50, 200), "NO MATCH HERE", fill="black", font_size=60)
    out.append(("text, large", large))
    out.append(("1x1 grey pixel", Image.new("RGB", (1, 1), (128, 128, 128))))
    ellipse = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(ellipse).ellipse((w * 3 // 16, h * 3 // 16, w * 13 // 16, h * 13 // 16), fill=(255, 0, 0, 255))
    out.append(("red ellipse, transparent PNG", ellipse))
    return out


def skimage_photos() -> list[tuple[str, Image.Image]]:
    """Returns (name, image) pairs of scikit-image's bundled sample photos (and the left stereo motorcycle)."""
    import skimage.data

    out = []
    for name in SKIMAGE_PHOTOS:
        pixels = getattr(skimage.data, name)()
        out.append((f"skimage {name}", Image.fromarray((pixels * 255).astype(np.uint8) if pixels.dtype == bool else pixels)))
    out.append(("skimage stereo_motorcycle", Image.fromarray(skimage.data.stereo_motorcycle()[0])))
    return out


def out_of_domain_images() -> list[tuple[str, Image.Image]]:
    """Returns the out-of-domain set: scikit-image's photos, then the made images."""
    return skimage_photos() + made_images()


def png_bytes(image: Image.Image) -> bytes:
    """Returns the image as a PNG file, as a person would upload it."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- evidence


def best_similarities(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Returns (m, 2) float32: each query's highest and second highest cosine with the (n, d) stored rows."""
    sims = np.asarray(queries, np.float32) @ np.asarray(rows, np.float32).T
    top = -np.sort(-np.partition(sims, sims.shape[1] - 2, axis=1)[:, -2:], axis=1)
    return top.astype(np.float32)


def separating_threshold(inside: np.ndarray, outside: np.ndarray) -> dict:
    """Returns the threshold (value >= it: confident) that best separates in-domain from out-of-domain values.

    Where the sets separate, the midpoint of the gap; else the value that maximises the mean of the
    two rates. With the rates it gives and the gap (negative: overlap).
    """
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    gap = float(inside.min() - outside.max())
    if gap > 0:
        threshold = (inside.min() + outside.max()) / 2
    else:
        candidates = np.unique(np.concatenate([inside, outside]))
        balanced = [((inside >= t).mean() + (outside < t).mean()) / 2 for t in candidates]
        threshold = float(candidates[int(np.argmax(balanced))])
    return {"threshold": round(float(threshold), 4), "gap": round(gap, 4), **rates(inside, outside, threshold)}


def rates(inside: np.ndarray, outside: np.ndarray, threshold: float) -> dict:
    """Returns the share of in-domain values called confident and of out-of-domain ones called not confident."""
    return {"in_domain_confident": round(float(np.mean(np.asarray(inside) >= threshold)), 4),
            "out_of_domain_not_confident": round(float(np.mean(np.asarray(outside) < threshold)), 4)}


def verification_inliers(images, rankings: np.ndarray, store, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns ((m,) the most inliers among each query's top `top` photos, (m,) seconds each took).

    The time covers the query's own SIFT and the matching; the photos' features come from `store`.
    """
    from retrieval import verify

    best, seconds = np.zeros(len(images), np.int64), np.zeros(len(images))
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        found = verify.verify_top(rankings[i], verify.local_features(image), store, top=top)
        seconds[i] = time.perf_counter() - t0
        best[i] = int(found.max()) if len(found) else 0
    return best, seconds


def settings_check(data, ood: np.ndarray, threshold: float, distractors: int) -> list[dict]:
    """Returns the rule's rates in each setting of `benchmarks.stability` (crops x draws with few photos)."""
    def stored(db):
        return augment_database(db, k=DEFAULT.dba, alpha=DEFAULT.alpha)

    out = []
    extra = sample_distractors(fit_distractor_model(data.db), distractors, seed=0)
    cases = [("full", [(np.arange(len(data.db)), np.arange(len(data.queries)))]),
             ("half A", [(data.halves[0], np.arange(len(data.queries)))]),
             ("half B", [(data.halves[1], np.arange(len(data.queries)))]),
             ("few photos", [(few.rows, few.queries) for few in data.few])]
    for name, parts in cases:
        inside, outside = [], []
        for rows, queries in parts:
            db = stored(data.db[rows])
            inside.append(best_similarities(db, data.queries[queries])[:, 0])
            outside.append(best_similarities(db, ood)[:, 0])
        out.append(_setting_row(name, np.concatenate(inside), np.concatenate(outside), threshold))
    db = stored(np.concatenate([data.db, extra]))
    out.append(_setting_row(f"+{distractors // 1000}k distractors", best_similarities(db, data.queries)[:, 0],
                            best_similarities(db, ood)[:, 0], threshold))
    return out


def _setting_row(name: str, inside: np.ndarray, outside: np.ndarray, threshold: float) -> dict:
    return {"setting": name, "in_domain_queries": len(inside), "out_of_domain_queries": len(outside),
            "lowest_in_domain": round(float(inside.min()), 4), "highest_out_of_domain": round(float(outside.max()), 4),
            **rates(inside, outside, threshold)}


def held_out_thresholds(inside: np.ndarray, outside: np.ndarray, landmarks: list[str]) -> dict:
    """Returns the rates when the threshold is chosen again without the item it scores.

    Leave one landmark out: the midpoint between the other landmarks' lowest crop and the highest
    out-of-domain image, applied to that landmark's crops; leave one out-of-domain image out: the
    midpoint between the lowest crop and the other images' highest, applied to that image.
    """
    landmarks = np.asarray(landmarks)
    crops = [bool(inside[i] >= separating_threshold(inside[landmarks != landmarks[i]], outside)["threshold"])
             for i in range(len(inside))]
    images = [bool(outside[j] < separating_threshold(inside, np.delete(outside, j))["threshold"])
              for j in range(len(outside))]
    return {"in_domain_confident": round(float(np.mean(crops)), 4),
            "out_of_domain_not_confident": round(float(np.mean(images)), 4)}


# ---------------------------------------------------------------- command


def measure(args: argparse.Namespace) -> dict:
    """Runs the whole calibration; returns the JSON-ready report."""
    from retrieval.networks import build_network

    dataset = load_dataset("rparis6k", args.data_root)
    network = build_network(args.network, weights="imagenet")
    data = load_collection(stability_args(["--data-root", args.data_root, "--cache-dir", args.cache_dir]), dataset,
                           network, DEFAULT.descriptor)
    landmarks = query_landmarks(dataset.gnd, dataset.db_ids, dataset.query_ids)
    named = out_of_domain_images()
    ood = np.stack([embed_image(network, png_bytes(image), DEFAULT.descriptor) for _, image in named])
    stored = augment_database(data.db, k=DEFAULT.dba, alpha=DEFAULT.alpha)
    inside, outside = best_similarities(stored, data.queries), best_similarities(stored, ood)
    # The verdict reads the first search's top similarity, which the search computed anyway: a comparison.
    threshold = threshold_for({"network": network.name, "pipeline": DEFAULT.descriptor.to_meta(), "dba": {"k": DEFAULT.dba}})
    t0 = time.perf_counter()
    for best in np.concatenate([inside[:, 0], outside[:, 0]]):
        judge(float(best), threshold)
    rule_ms = (time.perf_counter() - t0) * 1000 / (len(inside) + len(outside))
    # Verification of the default ranking's top photos, the match view's matching.
    ranks_in, _ = rank_queries(data.db, data.queries, backend="exact", **DEFAULT.build_options())
    ranks_out, _ = rank_queries(data.db, ood, backend="exact", **DEFAULT.build_options())
    store = database_local_features(dataset, cache_dir=args.cache_dir)
    sv_in, sv_in_s = verification_inliers([dataset.query_image(i) for i in range(len(data.queries))], ranks_in, store,
                                          args.sv_top)
    sv_out, sv_out_s = verification_inliers([image for _, image in named], ranks_out, store, args.sv_top)
    sv_ms = float(np.median(np.concatenate([sv_in_s, sv_out_s])) * 1000)
    evidence = {
        "best similarity": {**separating_threshold(inside[:, 0], outside[:, 0]), "added_ms": round(rule_ms, 4)},
        "margin over the second": {**separating_threshold(inside[:, 0] - inside[:, 1], outside[:, 0] - outside[:, 1]),
                                   "added_ms": round(rule_ms, 4)},
        f"most inliers in the top {args.sv_top}": {**separating_threshold(sv_in, sv_out), "added_ms": round(sv_ms, 1)},
    }
    rule = {"threshold": threshold, **rates(inside[:, 0], outside[:, 0], threshold),
            "margin_to_lowest_in_domain": round(float(inside[:, 0].min() - threshold), 4),
            "margin_to_highest_out_of_domain": round(float(threshold - outside[:, 0].max()), 4),
            "threshold_chosen_without_the_item": held_out_thresholds(inside[:, 0], outside[:, 0], landmarks)}
    return {
        "command": "python -m benchmarks.confidence" + (f" --network {args.network}" if args.network != "efficientnet-lite0" else ""),
        "network": network.name, "pipeline": DEFAULT.descriptor.to_meta(), "dba": DEFAULT.dba,
        "database": f"{dataset.name}: {len(dataset.db_ids)} photos", "sv_top": args.sv_top,
        "evidence": evidence, "rule": rule,
        "settings": settings_check(data, ood, threshold, args.distractors),
        "in_domain": [{"id": qid, "landmark": landmark, "best": round(float(s[0]), 4), "second": round(float(s[1]), 4),
                       "inliers": int(v)} for qid, landmark, s, v in zip(dataset.query_ids, landmarks, inside, sv_in)],
        "out_of_domain": [{"name": name, "best": round(float(s[0]), 4), "second": round(float(s[1]), 4),
                           "inliers": int(v)} for (name, _), s, v in zip(named, outside, sv_out)],
    }


def tables(report: dict) -> dict:
    """Returns the README/docs tables: the evidence compared, and the rule in each setting."""
    def pct(x):
        return f"{100 * x:.0f}%"

    evidence = [[name, f"≥ {e['threshold']:g}", f"{e['gap']:+.3g}", pct(e["in_domain_confident"]),
                 pct(e["out_of_domain_not_confident"]), f"{e['added_ms']:g}"] for name, e in report["evidence"].items()]
    rule = report["rule"]
    settings = [[s["setting"], str(s["in_domain_queries"]), pct(s["in_domain_confident"]),
                 f"{s['lowest_in_domain']:.3f}", pct(s["out_of_domain_not_confident"]), f"{s['highest_out_of_domain']:.3f}"]
                for s in report["settings"]]
    held = rule["threshold_chosen_without_the_item"]
    settings.append(["threshold chosen without the landmark / image scored", "19", pct(held["in_domain_confident"]), "",
                     pct(held["out_of_domain_not_confident"]), ""])
    return {
        "evidence": {"columns": ["evidence", "best threshold", "gap", "crops confident", "out-of-domain not confident",
                                 "added ms/query"], "align": "lrrrrr", "rows": evidence},
        "settings": {"columns": ["setting", "crops", f"crops confident (≥ {rule['threshold']:g})", "lowest crop",
                                 "out-of-domain not confident", "highest out-of-domain"],
                     "align": "lrrrrr", "rows": settings},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.confidence", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--network", default="efficientnet-lite0",
                        help="the network to calibrate, with the default pipeline and DBA (default efficientnet-lite0)")
    parser.add_argument("--sv-top", type=int, default=5, help="photos of the ranking verified (default 5)")
    parser.add_argument("--distractors", type=int, default=10_000, help="synthetic distractors of that setting")
    parser.add_argument("--json", default=str(ROOT / "results" / "confidence.json"))
    args = parser.parse_args(argv)
    report = measure(args)
    report["tables"] = tables(report)
    for name, table in report["tables"].items():
        print(name, *(" | ".join(map(str, row)) for row in table["rows"]), sep="\n", flush=True)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
