"""The benchmark's measurements, each run in a process of its own so that its peak memory is its own.

    python -m benchmarks.parts PART CONFIG_JSON    # prints one line: RESULT_PREFIX + JSON

Parts (see `PARTS`): latency (image file in, ranked ids out), search (search alone on synthetic
rows), build (build_index against the network's pure forward), make_index (a synthetic index
folder) and coldstart (load, tree, network, warm-up). Every result carries the process's peak
resident memory, `peak_rss_bytes`. Helpers here import no network code, so the GPU script can
use them too.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

RESULT_PREFIX = "BENCH_RESULT "
# Paris-like ids ("paris_defense_000000" is 20 characters): the id file is part of the index size.
ID_FORMAT = "paris_synthetic_{:06d}"


def _proc_kb(path: str, key: str) -> int | None:
    """Returns the kB value of `key:` in a /proc file, or None when it cannot be read."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Returns this process's peak resident set size (VmHWM) in bytes."""
    kb = _proc_kb("/proc/self/status", "VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb * 1024


def mem_available_bytes() -> int:
    """Returns MemAvailable from /proc/meminfo in bytes (0 when unknown)."""
    return (_proc_kb("/proc/meminfo", "MemAvailable") or 0) * 1024


def summarize(seconds) -> dict:
    """Returns n, median_ms, p95_ms and mean_ms of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise ValueError("no timings to summarise")
    return {
        "n": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
    }


def unit_rows(n: int, d: int, *, seed: int = 0, dtype=np.float32, block: int = 8192) -> np.ndarray:
    """Returns (n, d) random L2-normalised rows stored as `dtype`.

    Made block by block, so memory is the output plus one (block, d) float32 block.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=dtype)
    for start in range(0, n, block):
        x = rng.standard_normal((min(block, n - start), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + len(x)] = x
    return out


def exact_search_blocked(features: np.ndarray, query: np.ndarray, k: int, *, block: int = 65536):
    """Returns (scores (k,), rows (k,)) of the k largest inner products with one query, best first.

    For float16 storage: each block of rows is widened to float32 and multiplied there, since
    numpy has no fast float16 matrix product; memory stays the float16 matrix plus one block.
    Ties are broken by row, as `retrieval.search.Searcher` does.

    Args:
        features: (n, d) rows of any float dtype.
        query: (d,) vector.
        k: 1 to n.
    """
    n = len(features)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
    sims = np.empty(n, dtype=np.float32)
    for start in range(0, n, block):
        rows = np.asarray(features[start : start + block], dtype=np.float32)
        np.matmul(rows, q, out=sims[start : start + len(rows)])
    part = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
    order = np.lexsort((part, -sims[part]))
    best = part[order]
    return sims[best], best.astype(np.int64)


def input_shapes(files, pipeline) -> Counter:
    """Returns how many image files get each network input shape (h, w, 3).

    Read from the headers, upright per EXIF, without decoding the pixels.
    """
    from PIL import Image

    from retrieval.features import _exif_transposes

    shapes = Counter()
    for path in files:
        with Image.open(path) as im:
            w, h = im.size
            if _exif_transposes(im):
                w, h = h, w
        tw, th = pipeline.target_size(w, h)
        shapes[(th, tw, 3)] += 1
    return shapes


def common_input_shape(files, pipeline) -> tuple[tuple[int, int, int], int]:
    """Returns the most common network input shape (h, w, 3) among image files, and its count."""
    shapes = input_shapes(files, pipeline)
    if not shapes:
        raise ValueError("no images to read shapes from")
    return shapes.most_common(1)[0]


class ForwardCounter:
    """Wraps a forward(network, batch) function, counting calls, images and time spent in it."""

    def __init__(self, forward):
        self.inner = forward
        self.calls = 0
        self.images = 0
        self.seconds = 0.0

    def __call__(self, network, batch):
        t0 = time.perf_counter()
        out = self.inner(network, batch)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.images += len(batch)
        return out

    def stats(self) -> dict:
        return {
            "forward_calls": self.calls,
            "mean_batch": self.images / self.calls if self.calls else 0.0,
            "forward_seconds": self.seconds,
        }


def time_forward(forward, network, shape, batch_size: int, *, max_images: int, budget_s: float, seed: int = 0) -> dict:
    """Returns the pure forward throughput at one input shape, after two warm-up calls (the first timed apart).

    Runs until `max_images` images or `budget_s` seconds, at least three calls.
    """
    rng = np.random.default_rng(seed)
    batch = rng.uniform(0, 255, (batch_size, *shape)).astype(np.float32)
    t0 = time.perf_counter()
    forward(network, batch)
    first_call_s = time.perf_counter() - t0
    forward(network, batch)
    times = []
    start, cpu = time.perf_counter(), time.process_time()
    while len(times) < 3 or (len(times) * batch_size < max_images and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        forward(network, batch)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu
    return {"images_per_s": batch_size * len(times) / sum(times), "calls": len(times),
            "cpu_ms_per_image": cpu * 1000 / (batch_size * len(times)), "first_call_s": first_call_s,
            **summarize(times)}


def time_forward_mix(forward, network, shapes: Counter, batch_size: int, *, calls: int = 3) -> float:
    """Returns the pure forward's images per second over a mix of input shapes, at one batch size.

    Each shape (already warmed up) is timed over `calls` full batches (median); the rate is that
    of the images as `shapes` counts them, each at its shape's time per image: what the network
    alone needs for the same images, batch and shapes as a build.
    """
    total_s = 0.0
    for (h, w, _), count in shapes.items():
        batch = np.zeros((batch_size, h, w, 3), dtype=np.float32)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            forward(network, batch)
            times.append(time.perf_counter() - t0)
        total_s += count * float(np.median(times)) / batch_size
    return sum(shapes.values()) / total_s


def time_decode(files, pipeline, *, thumbnail_side: int, preview_side: int | None = None) -> dict:
    """Returns the single-thread decode + resize + thumbnail (+ preview) time per image (what a build worker does)."""
    from retrieval.features import _decode

    times = []
    for path in files:
        t0 = time.perf_counter()
        _decode(path, pipeline, thumbnail_side, preview_side)
        times.append(time.perf_counter() - t0)
    return summarize(times)


def decode_throughput(files, pipeline, *, workers: int, thumbnail_side: int) -> float:
    """Returns images per second of decode + resize + thumbnail with `workers` threads, as a build runs them."""
    from concurrent.futures import ThreadPoolExecutor

    from retrieval.features import _decode

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda path: _decode(path, pipeline, thumbnail_side), files):
            pass
    return len(files) / (time.perf_counter() - t0)


def linked_folder(files, folder: Path, *, repeat: int = 1) -> Path:
    """Returns `folder` filled with symbolic links to `files` (each `repeat` times, under new names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(repeat):
        for i, path in enumerate(files):
            (folder / f"r{r:02d}_{i:05d}{Path(path).suffix.lower()}").symlink_to(Path(path).resolve())
    return folder


def _pipeline(cfg: dict):
    from retrieval.features import REPORT_PIPELINE, Pipeline

    if cfg["pipeline"] == "report":
        return REPORT_PIPELINE
    bucket = cfg.get("bucket", "none")
    return Pipeline(max_side=int(cfg["max_side"]), bucket=None if bucket == "none" else bucket)


def _query_expansion(cfg: dict) -> dict | None:
    # As build_index records it in index.json, for SearchEngine to apply.
    return {"k": int(cfg["qe"]), "alpha": float(cfg["alpha"])} if cfg.get("qe") else None


def _runtime(cfg: dict) -> dict:
    # build_network's runtime options; parts measured before runtimes existed ran Keras.
    return {"runtime": cfg.get("runtime", "keras"), "precision": cfg.get("precision", "float32"),
            "cache_dir": cfg.get("runtime_cache")}


def part_save_weights(cfg: dict) -> dict:
    """Saves a network's random weights to a file, so that fresh processes build the same network."""
    from retrieval.networks import build_network

    network = build_network(cfg["network"], weights="none", runtime="keras")  # only its weights are needed
    network.model.save_weights(cfg["out"])
    return {"network": network.name, "path": cfg["out"], "bytes": Path(cfg["out"]).stat().st_size}


def part_latency(cfg: dict) -> dict:
    """Image file in, ranked ids out, through SearchEngine over a synthetic database."""
    from PIL import Image

    from retrieval.engine import SearchEngine
    from retrieval.features import descriptor_dim, find_images
    from retrieval.index import Index
    from retrieval.networks import build_network

    pipeline = _pipeline(cfg)
    network = build_network(cfg["network"], weights=cfg["weights"], **_runtime(cfg))
    dim = descriptor_dim(network.channels, pipeline)
    n = int(cfg["n_db"])
    features = unit_rows(n, dim, seed=cfg.get("seed", 0))
    ids = np.asarray([ID_FORMAT.format(i) for i in range(n)])
    meta = {"network": network.name, "weights": network.weights, "pipeline": pipeline.to_meta(),
            "query_expansion": _query_expansion(cfg)}
    index = Index(Path("synthetic"), features, ids, meta)
    t0 = time.perf_counter()
    engine = SearchEngine(index, network, backend=cfg["backend"])
    tree_s = time.perf_counter() - t0
    queries = find_images(Path(cfg["queries_dir"]))
    engine.warm_up()
    for path in queries[: cfg["warm_queries"]]:
        engine.search(path, cfg["k"])
    total, embed, search = [], [], []
    # A runtime that compiles per input size pays on a size's first visit: without buckets every
    # crop has a size of its own, with them a dozen sizes are shared by all images.
    def size(path):
        with Image.open(path) as image:
            return pipeline.target_size(*image.size)

    warm_side = pipeline.squash or pipeline.max_side
    first_visit = []
    seen = {size(q) for q in queries[: cfg["warm_queries"]]} | {pipeline.target_size(warm_side, warm_side * 3 // 4)}
    for i in range(int(cfg["n_queries"])):
        query = queries[i % len(queries)]
        t0 = time.perf_counter()
        result = engine.search(query, cfg["k"])
        total.append(time.perf_counter() - t0)
        embed.append(result.embed_ms / 1000)
        search.append(result.search_ms / 1000)
        first_visit.append(size(query) not in seen)
        seen.add(size(query))
        assert len(result.ids) == cfg["k"]
    new = [e for e, f in zip(embed, first_visit) if f]
    again = [e for e, f in zip(embed, first_visit) if not f]
    return {
        "network": network.name, "runtime": network.runtime, "precision": network.precision,
        "embed_new_shape": summarize(new) if new else None, "embed_seen_shape": summarize(again) if again else None,
        "distinct_sizes": len(seen), "pipeline": cfg["pipeline"], "bucket": pipeline.bucket or "none", "max_side": pipeline.max_side,
        "squash": pipeline.squash, "pooling": pipeline.pooling, "dim": dim, "n_db": n,
        "backend": cfg["backend"], "qe": engine.qe_k, "tree_build_s": tree_s, "distinct_query_images": len(queries),
        "total": summarize(total), "embed": summarize(embed), "search": summarize(search),
    }


def part_search(cfg: dict) -> dict:
    """Search alone: build time and single-query time over n synthetic unit rows of dimension d."""
    from retrieval.search import Searcher

    n, d, k = int(cfg["n"]), int(cfg["d"]), int(cfg["k"])
    storage, backend = cfg["storage"], cfg["backend"]
    t0 = time.perf_counter()
    features = unit_rows(n, d, seed=cfg.get("seed", 0), dtype=np.dtype(storage))
    generate_s = time.perf_counter() - t0
    queries = unit_rows(int(cfg["n_queries"]), d, seed=cfg.get("seed", 0) + 1)
    t0 = time.perf_counter()
    if backend == "exact" and storage == "float16":
        def search(q):
            return exact_search_blocked(features, q, k)
        ram = n * d * 2
    else:
        searcher = Searcher(features, backend=backend)

        def search(q):
            return searcher.search(q, k)
        ram = n * d * 4 + (n * d * 8 if backend == "kdtree" else 0)
    build_s = time.perf_counter() - t0
    search(queries[0])  # first call pays for page faults and thread start-up
    result = {
        "n": n, "d": d, "backend": backend, "storage": storage, "generate_s": generate_s,
        "build_s": build_s, "query": _time_queries(search, queries[1:], cfg["query_budget_s"]),
        "search_ram_bytes": ram, "matrix_disk_bytes": n * d * np.dtype(storage).itemsize,
    }
    if backend == "exact":
        from threadpoolctl import threadpool_limits

        # On shared cores, waking BLAS threads for one matrix-vector product can cost more than it saves.
        with threadpool_limits(limits=1, user_api="blas"):
            result["query_1thread"] = _time_queries(search, queries[1:], cfg["query_budget_s"])
    return result


def _time_queries(search, queries, budget_s: float) -> dict:
    times = []
    start = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t0)
        # Slow cells stop early: three queries already give a usable median.
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    return summarize(times)


def part_build(cfg: dict) -> dict:
    """build_index on real photos against the network's pure forward at the same batch and shape."""
    import retrieval.networks as networks
    from retrieval.build import build_index
    from retrieval.features import THUMBNAIL_SIDE, find_images
    from retrieval.previews import PREVIEW_SIDE

    files = find_images(Path(cfg["images_dir"]))[: int(cfg["n_images"])]
    pipeline = _pipeline({"pipeline": "default", "max_side": cfg["max_side"], "bucket": cfg.get("bucket", "none")})
    shape, shape_count = common_input_shape(files, pipeline)
    # The runtime that build_index uses by default (auto: ONNX Runtime where it loads).
    network = networks.build_network(cfg["network"], weights=cfg["weights"], runtime=cfg.get("runtime", "auto"))
    bs = int(cfg["batch_size"])
    pure = time_forward(networks.forward, network, shape, bs,
                        max_images=len(files), budget_s=cfg["forward_budget_s"])
    # A second reference: on a CPU a smaller batch can be faster per image, and builds run small batches.
    single = time_forward(networks.forward, network, shape, 1,
                          max_images=len(files), budget_s=cfg["forward_budget_s"] / 2)
    decode = time_decode(files[: cfg["decode_images"]], pipeline, thumbnail_side=THUMBNAIL_SIDE, preview_side=PREVIEW_SIDE)
    # One untimed call per input shape of the photos, as the pure forward had its warm-up calls: the
    # first call at a shape sets up its kernels, once per build of any size.
    shapes = input_shapes(files, pipeline)
    t0 = time.perf_counter()
    for h, w, _ in shapes:
        networks.forward(network, np.zeros((bs, h, w, 3), dtype=np.float32))
    warm_up_s = time.perf_counter() - t0
    mix = time_forward_mix(networks.forward, network, shapes, bs, calls=int(cfg.get("mix_calls", 3)))
    counter = ForwardCounter(networks.forward)
    networks.forward = counter  # iter_features looks forward up at call time
    try:
        with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
            folder = linked_folder(files, Path(tmp) / "images")
            cpu = time.process_time()
            report = build_index(folder, Path(tmp) / "index", network, pipeline, batch_size=bs,
                                 workers=int(cfg["workers"]), dba=int(cfg["dba"]), qe=int(cfg["qe"]),
                                 alpha=float(cfg["alpha"]))
            cpu = time.process_time() - cpu
    finally:
        networks.forward = counter.inner
    build_ips = report.count / report.seconds
    # CPU time of all threads per image: steadier than wall time when other processes share the cores.
    build_cpu_ms = cpu * 1000 / report.count
    return {
        "network": network.name, "runtime": network.runtime, "bucket": pipeline.bucket or "none",
        "images": report.count,
        "skipped_files": len(report.skipped),
        "batch_size": bs, "workers": int(cfg["workers"]), "max_side": pipeline.max_side,
        "common_shape": list(shape), "common_shape_images": shape_count, "input_shapes": len(shapes),
        "warm_up_s": warm_up_s,
        "forward_images_per_s": pure["images_per_s"], "forward": pure, "forward_batch1": single,
        "build_images_per_s": build_ips, "build_s": report.seconds,
        "forward_mix_images_per_s": mix, "ratio": build_ips / mix, "ratio_common_shape": build_ips / pure["images_per_s"],
        "build_cpu_ms_per_image": build_cpu_ms,
        "cpu_ratio": pure["cpu_ms_per_image"] / build_cpu_ms, "decode_1thread": decode, **counter.stats(),
    }


def part_make_index(cfg: dict) -> dict:
    """Writes an index folder of n synthetic GeM rows with real thumbnails cycled; returns file sizes."""
    from retrieval.features import THUMBNAIL_SIDE, Pipeline, find_images, load_image, make_thumbnail
    from retrieval.index import DATA_FILES, save_index

    n, dim = int(cfg["n"]), int(cfg["dim"])
    files = find_images(Path(cfg["images_dir"]))[: int(cfg["thumbnail_sources"])]
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    thumbs = [make_thumbnail(load_image(p, draft_size=side)) for p in files]
    meta = {
        "network": cfg["network"], "weights": cfg["weights"],
        "pipeline": Pipeline(max_side=int(cfg["max_side"])).to_meta(), "source": "synthetic benchmark rows",
        "query_expansion": _query_expansion(cfg),
    }
    out = Path(cfg["out"])
    save_index(out, unit_rows(n, dim, seed=cfg.get("seed", 0)), [ID_FORMAT.format(i) for i in range(n)], meta,
               thumbnails=[thumbs[i % len(thumbs)] for i in range(n)], dtype=cfg["dtype"])
    sizes = {name: (out / name).stat().st_size for name in (*DATA_FILES, "index.json")}
    return {"n": n, "dim": dim, "dtype": cfg["dtype"], "path": str(out), "file_bytes": sizes}


def part_coldstart(cfg: dict) -> dict:
    """What an app pays before its first query: imports, load_index (sha256), tree, network, warm-up."""
    t0 = time.perf_counter()
    from retrieval.engine import SearchEngine
    from retrieval.index import load_index
    from retrieval.networks import build_network  # Keras and TensorFlow come in here

    t1 = time.perf_counter()
    index = load_index(cfg["index_dir"], network=cfg["network"], verify=True)
    t2 = time.perf_counter()
    network = build_network(cfg["network"], weights=cfg["weights"], **_runtime(cfg))
    t3 = time.perf_counter()
    engine = SearchEngine(index, network, backend=cfg["backend"])
    t4 = time.perf_counter()
    engine.warm_up()
    t5 = time.perf_counter()
    return {
        "network": network.name, "runtime": network.runtime, "rows": len(index), "dim": index.dim,
        "backend": cfg["backend"], "import_s": t1 - t0, "load_index_s": t2 - t1, "network_s": t3 - t2, "tree_s": t4 - t3,
        "warm_up_s": t5 - t4, "total_s": t5 - t0,
    }


PARTS = {
    "latency": part_latency,
    "search": part_search,
    "build": part_build,
    "make_index": part_make_index,
    "coldstart": part_coldstart,
    "save_weights": part_save_weights,
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from benchmarks.scale import PARTS as SCALE_PARTS  # the search section at scale (ANN)

    PARTS.update(SCALE_PARTS)
    if len(argv) != 2 or argv[0] not in PARTS:
        print(f"usage: python -m benchmarks.parts {{{'|'.join(PARTS)}}} CONFIG_JSON", file=sys.stderr)
        return 2
    result = PARTS[argv[0]](json.loads(argv[1]))
    result["peak_rss_bytes"] = peak_rss_bytes()
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
