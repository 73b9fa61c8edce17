"""The search section at scale: ann beside exact and kdtree, up to a million generated rows.

    python -m benchmarks.benchmark --only search --json results/benchmark_search.json [--sizes 100000,1000000]

Per network (Lite0 with its ImageNet weights, d = 1,280; B7 with random weights, d = 2,560):
the real descriptors of the Paris photos and of the 19 query crops come from
`precompute.evaluate`'s cache (embedded once). The generator (`retrieval.distractors`) is fitted
to that network's photo descriptors, so the database has the structure of that network's
descriptors, and the queries are that network's real query-crop descriptors, as an app would
receive them. Per size, one process builds the index (`build_from_vectors`, ANN on; DBA k=3 at
1M x 2,560, the build target) and one process per backend opens the index and answers the
queries, reporting its own resident memory. exact runs first and its top 20 is the truth the
ANN's recall is measured against.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.parts import _proc_kb, mem_available_bytes, summarize

K = 20
NETWORKS = (("efficientnet-lite0", "imagenet", 1280), ("efficientnet-b7", "none", 2560))
SIZES = (100_000, 1_000_000)
SWEEP = {"n": 100_000, "network": "efficientnet-lite0",
         "factories": ("PCA256,IVF512,SQ8", "PCA256,IVF512,PQ64", "IVF512,SQ8", "PCA256,HNSW32_SQ8"),
         "nprobes": (32, 64, 128, 256)}
GB = 1e9
# (nprobe, candidates re-ranked), measured on every ANN cell after the index's own setting.
NPROBES = ((16, 64), (32, 64), (32, 128), (64, 64), (64, 128), (64, 256), (128, 128), (128, 256), (256, 256))
TARGETS = {"p50_ms": 10.0, "recall": 0.95, "rss_gb": 3.0, "coldstart_s": 60.0, "build_dba_min": 30.0}


def _rss_bytes() -> int:
    return (_proc_kb("/proc/self/status", "VmRSS") or 0) * 1024


# ---------------------------------------------------------------- parts (each in a process of its own)


def part_scale_descriptors(cfg: dict) -> dict:
    """Saves the real photo and query-crop descriptors of one network to cfg["out"] (.npz)."""
    from retrieval.evaluation import dataset_descriptors
    from retrieval.datasets import load_dataset
    from retrieval.defaults import DEFAULT
    from retrieval.networks import build_network

    dataset = load_dataset("rparis6k", cfg["data_root"])
    network = build_network(cfg["network"], weights=cfg["weights"])
    found = dataset_descriptors(dataset, network, DEFAULT.descriptor, cache_dir=cfg["cache_dir"])
    np.savez(cfg["out"], db=found.db, queries=found.queries)
    return {"network": network.name, "photos": len(found.db), "queries": len(found.queries), "cached": found.cached}


def part_scale_build(cfg: dict) -> dict:
    """Generates n distractors fitted to the photos' descriptors and builds their index, timed."""
    from retrieval.defaults import DEFAULT
    from retrieval.distractors import distribution_stats, fit_distractor_model, sample_distractors
    from retrieval.vectors import build_from_vectors

    real = np.load(cfg["descriptors"])
    n, out = int(cfg["n"]), Path(cfg["out"])
    model = fit_distractor_model(real["db"])
    t0 = time.perf_counter()
    drawn_path = out.parent / f"{out.name}-drawn.npy"
    drawn = np.lib.format.open_memmap(drawn_path, mode="w+", dtype="float16", shape=(n, model.dim))
    sample_distractors(model, n, seed=1, out=drawn)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = build_from_vectors(drawn, out, network=cfg["network"], weights=cfg["weights"],
                                pipeline=DEFAULT.descriptor, dba=int(cfg["dba"]), ann=True)
    build_s = time.perf_counter() - t0
    del drawn
    drawn_path.unlink()
    stats = {"fitted": distribution_stats(real["db"]),
             "generated": distribution_stats(sample_distractors(model, len(real["db"]), seed=2))}
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    return {"n": n, "d": model.dim, "generate_s": generate_s, "build_s": build_s, "stages_s": report["seconds"],
            "ann": report["ann"], "dba": int(cfg["dba"]), "file_bytes": files, "generator": stats}


def part_scale_query(cfg: dict) -> dict:
    """Opens the index (sha256 checked), answers the real queries with one backend; latency, rows, memory."""
    from retrieval.index import load_index
    from retrieval.search import Searcher

    queries = np.load(cfg["descriptors"])["queries"]
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    index = load_index(cfg["index"])
    load_s = time.perf_counter() - t0
    backend = cfg["backend"]
    t0 = time.perf_counter()
    searcher = Searcher(index.features, backend=backend, ann=index.ann if backend == "ann" else None)
    setup_s = time.perf_counter() - t0
    result = {"backend": backend, "n": len(index), "d": index.dim, "load_s": load_s, "setup_s": setup_s,
              "mapped": isinstance(index.features, np.memmap)}
    if cfg.get("truth_out"):  # all queries at once: one pass over the rows
        t0 = time.perf_counter()
        _, rows = searcher.search(queries, K)
        np.save(cfg["truth_out"], rows)
        result["batch_s"] = time.perf_counter() - t0
    searcher.search(queries[0], K)  # the first call pays for thread start-up and first page faults
    times, found = [], {}
    start = time.perf_counter()
    for r in range(int(cfg["repeats"])):
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            _, rows = searcher.search(q, K)
            times.append(time.perf_counter() - t0)
            found[i] = rows[0]
            if len(times) >= 3 and time.perf_counter() - start > cfg["budget_s"]:
                break
        else:
            continue
        break
    result["query"] = summarize(times)
    if cfg.get("truth"):
        truth = np.load(cfg["truth"])
        result["recall_at_20"] = _recall(found, truth)
        result["recall_queries"] = len(found)
    result["rss_bytes"] = _rss_bytes()
    result["rss_before_load_bytes"] = rss0
    if backend == "ann" and cfg.get("nprobes") and cfg.get("truth"):
        # The same index at other search depths: what nprobe buys at this size (after the RSS reading).
        stored, result["nprobes"] = (index.ann.nprobe, index.ann.rerank), []
        for nprobe, rerank in cfg["nprobes"]:
            index.ann.nprobe, index.ann.rerank = nprobe, rerank
            times, found = [], {}
            for _ in range(3):
                for i, q in enumerate(queries):
                    t0 = time.perf_counter()
                    _, rows = searcher.search(q, K)
                    times.append(time.perf_counter() - t0)
                    found[i] = rows[0]
            result["nprobes"].append({"nprobe": nprobe, "rerank": rerank, "recall_at_20": _recall(found, truth),
                                      "query": summarize(times)})
        index.ann.nprobe, index.ann.rerank = stored
    return result


def _recall(found: dict, truth: np.ndarray) -> float:
    return float(np.mean([len(set(found[i]) & set(truth[i])) / K for i in found]))


def part_ann_sweep(cfg: dict) -> dict:
    """Index types at one size: build time, code bytes, recall@20 and p50 per nprobe."""
    import faiss

    from retrieval.ann import build_ann, exact_search_blocks
    from retrieval.distractors import fit_distractor_model, sample_distractors

    real = np.load(cfg["descriptors"])
    x = sample_distractors(fit_distractor_model(real["db"]), int(cfg["n"]), seed=1).astype(np.float16)
    queries = real["queries"]
    _, truth = exact_search_blocks(x, queries, K)
    rows = []
    for factory in cfg["factories"]:
        ann = build_ann(x, factory=factory)
        size = len(faiss.serialize_index(ann.index))
        for nprobe in cfg["nprobes"]:
            ann.nprobe = nprobe
            times, recall = [], []
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                _, found = ann.search(x, q[None], K)
                times.append(time.perf_counter() - t0)
                recall.append(len(set(found[0]) & set(truth[i])) / K)
            rows.append({"factory": factory, "nprobe": nprobe, "build_s": ann.build_s, "bytes": size,
                         "recall_at_20": float(np.mean(recall)), "query": summarize(times)})
    return {"n": int(cfg["n"]), "d": x.shape[1], "rows": rows}


PARTS = {"scale_descriptors": part_scale_descriptors, "scale_build": part_scale_build,
         "scale_query": part_scale_query, "ann_sweep": part_ann_sweep}


# ---------------------------------------------------------------- the section


def measure_search_scale(run_part, say, work: Path, *, sizes=SIZES, networks=NETWORKS, sweep: bool = True,
                         data_root: str, cache_dir: str) -> dict:
    """Runs the section; returns {"cells": [...], "sweep": ..., "coldstart": ...} (JSON-ready)."""
    work.mkdir(parents=True, exist_ok=True)
    out = {"cells": [], "sweep": None, "coldstart": None}
    for network, weights, d in networks:
        descriptors = work / f"{network}-descriptors.npz"
        say(f"real descriptors {network}")
        got = run_part("scale_descriptors", {"network": network, "weights": weights, "data_root": data_root,
                                             "cache_dir": cache_dir, "out": str(descriptors)}, timeout_s=900)
        if "skipped" in got:
            out["cells"].append({"network": network, "d": d, **got})
            continue
        if sweep and network == SWEEP["network"]:
            say(f"index types at n={SWEEP['n']} {network}")
            out["sweep"] = {"network": network, **run_part("ann_sweep", {"descriptors": str(descriptors), **SWEEP},
                                                           timeout_s=900)}
        for n in sizes:
            index = work / f"{network}-{n}"
            dba = 3 if (n >= 1_000_000 and d == 2560) else 0
            say(f"build n={n} {network} (DBA k={dba})")
            cell = {"network": network, "weights": weights, "n": n, "d": d,
                    "build": run_part("scale_build", {"descriptors": str(descriptors), "n": n, "out": str(index),
                                                      "network": network, "weights": weights, "dba": dba},
                                      timeout_s=1800)}
            if "skipped" not in cell["build"]:
                truth = work / f"truth-{network}-{n}.npy"
                for backend in ("exact", "ann", "kdtree"):
                    need = n * d * 13 + 0.5 * GB
                    if backend == "kdtree" and (n > 100_000 or need > 0.8 * mem_available_bytes()):
                        cell[backend] = {"skipped": f"skipped: the KD-tree needs {need / GB:.0f} GB (float32 + float64 copy)"}
                        continue
                    say(f"query n={n} {network} {backend}")
                    cfg = {"descriptors": str(descriptors), "index": str(index), "backend": backend,
                           "repeats": 3, "budget_s": 20.0 if backend != "ann" else 60.0}
                    cfg["truth_out" if backend == "exact" else "truth"] = str(truth)
                    if backend == "ann":
                        cfg["nprobes"] = NPROBES
                    cell[backend] = run_part("scale_query", cfg, timeout_s=900)
                if n >= 1_000_000 and d == 2560:
                    say(f"cold start n={n} {network}")
                    out["coldstart"] = run_part("coldstart", {"index_dir": str(index), "network": network,
                                                              "weights": weights, "backend": "ann"}, timeout_s=600)
            out["cells"].append(cell)
            _remove(index)
    return out


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- tables and targets


def _ms(x) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _cell(result: dict, key: str, fmt) -> str:
    if not result or "skipped" in result:
        return (result or {}).get("skipped", "")[:60]
    return fmt(result)


def scale_tables(results: dict) -> dict:
    """Returns the README tables of the section: cells, index types and targets."""
    rows = []
    for c in results["cells"]:
        if "build" not in c:
            continue
        b = c["build"]
        name = "Lite0" if "lite0" in c["network"] else "B7"
        for backend in ("ann", "exact", "kdtree"):
            r = c.get(backend) or {}
            if "skipped" in r or not r:
                rows.append([f"{c['n']:,}", f"{name} {c['d']:,}", backend, r.get("skipped", "not run"), "", "", "", "", ""])
                continue
            q = r["query"]
            build = (f"{b['stages_s']['ann']:.0f}" if backend == "ann" else "") if "skipped" not in b else ""
            disk = b["file_bytes"].get("ann.faiss", 0) if backend == "ann" else b["file_bytes"].get("feature_list.npy", 0)
            rows.append([f"{c['n']:,}", f"{name} {c['d']:,}", backend,
                         f"{r['recall_at_20']:.3f}" if "recall_at_20" in r else "1 (truth)",
                         _ms(q["median_ms"]), _ms(q["p95_ms"]), build,
                         f"{disk / 1e6:,.0f}", f"{r['rss_bytes'] / GB:.2f}"])
    tables = {"cells": {"columns": ["N", "network d", "backend", "recall@20", "p50 ms", "p95 ms", "ANN build s",
                                    "MB on disk", "RSS GB"], "align": "lllrrrrrr", "rows": rows}}
    depth = [[f"{c['n']:,}", "Lite0" if "lite0" in c["network"] else "B7", r["nprobe"], r.get("rerank", 256),
              f"{r['recall_at_20']:.3f}", _ms(r["query"]["median_ms"]), _ms(r["query"]["p95_ms"])]
             for c in results["cells"] for r in (c.get("ann") or {}).get("nprobes", [])]
    if depth:
        tables["nprobe"] = {"columns": ["N", "network", "nprobe", "re-ranked", "recall@20", "p50 ms", "p95 ms"],
                            "align": "llrrrrr", "rows": depth}
    if results.get("sweep") and "rows" in results["sweep"]:
        tables["index_types"] = {
            "columns": ["index type", "nprobe", "recall@20", "p50 ms", "build s", "MB"], "align": "lrrrrr",
            "rows": [[r["factory"], r["nprobe"], f"{r['recall_at_20']:.3f}", _ms(r["query"]["median_ms"]),
                      f"{r['build_s']:.1f}", f"{r['bytes'] / 1e6:.1f}"] for r in results["sweep"]["rows"]]}
    tables["targets"] = {"columns": ["target", "measured", "result"], "align": "llr",
                         "rows": [[t["target"], t["measured"], "PASS" if t["pass"] else "MISS"] for t in scale_targets(results)]}
    return tables


def scale_targets(results: dict) -> list[dict]:
    """Returns the issue's targets measured by this section, each with PASS/MISS; pure."""
    targets = []
    for c in results["cells"]:
        ann = c.get("ann") or {}
        if c.get("n") != 1_000_000 or "query" not in ann:
            continue
        p50, recall = ann["query"]["median_ms"], ann.get("recall_at_20", 0.0)
        ok = p50 <= TARGETS["p50_ms"] and recall >= TARGETS["recall"]
        targets.append({"target": f"1M x {c['d']:,}: ANN p50 <= 10 ms with recall@20 >= 0.95",
                        "measured": f"p50 {p50:.2f} ms, recall@20 {recall:.3f}", "pass": ok})
        if c["d"] == 2560:
            rss = (ann["rss_bytes"] - ann["rss_before_load_bytes"]) / GB
            targets.append({"target": "serving 1M x 2,560: resident memory <= 3 GB beyond the network",
                            "measured": f"{rss:.2f} GB (index opened, queries answered)", "pass": rss <= TARGETS["rss_gb"]})
            b = c["build"]
            if "skipped" not in b:
                minutes = (b["stages_s"]["ann"] + b["stages_s"]["dba"]) / 60
                targets.append({"target": "ANN build + DBA for 1M rows <= 30 min",
                                "measured": f"{minutes:.1f} min (ANN {b['stages_s']['ann']:.0f} s, DBA {b['stages_s']['dba']:.0f} s)",
                                "pass": minutes <= TARGETS["build_dba_min"]})
    cold = results.get("coldstart")
    if cold and "total_s" in cold:
        targets.append({"target": "cold start of a 1M x 2,560 index <= 60 s", "pass": cold["total_s"] <= TARGETS["coldstart_s"],
                        "measured": f"{cold['total_s']:.1f} s (load + sha256 {cold['load_index_s']:.1f} s, network {cold['network_s']:.1f} s)"})
    return targets


def merge_cells(old: dict | None, new: dict) -> dict:
    """Returns `new` with the cells of `old` it did not measure again (a run of some sizes keeps the others)."""
    if not old:
        return new
    keys = {(c.get("network"), c.get("n")) for c in new["cells"]}
    cells = [c for c in old.get("cells", []) if (c.get("network"), c.get("n")) not in keys] + new["cells"]
    merged = {**new, "cells": sorted(cells, key=lambda c: (c.get("d", 0), c.get("n", 0)))}
    for key in ("sweep", "coldstart"):
        merged[key] = new.get(key) or old.get(key)
    return merged


def load_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


