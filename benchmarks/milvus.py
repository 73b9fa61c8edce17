"""Milvus against exact search: mAP with distractors, recall@20, latency, publish time, index types, diffusion.

    python -m benchmarks.milvus --distractors DIR [--index DIR] [--servers lite,server] [--json results/milvus.json]
    python -m benchmarks.milvus --app-only --index DIR --json results/milvus.json

The mini RParis (Lite0, the default recipe: DBA k=3 through the ANN, alpha QE k=5) with the rows
of the distractor index at DIR (`precompute.make_distractors`, 300,000 in the docs) after its
397 photos, as `precompute.evaluate --distractors DIR` builds it. The database is augmented once
and then ranked by both backends through `retrieval.evaluation.rank_queries`, the query path
of `precompute.evaluate` and the app:

- `exact`: exact inner products over the whole database;
- `milvus`: the database published into a collection (IVF_SQ8 unless `--index-type`), each
  ranking its top 1,000 candidates scored exactly, then the rest (`--backend milvus`).

Servers: "lite" is Milvus Lite in a local .db (in this process, as a first try runs it);
"server" the real standalone Milvus 2.3.5 of the `milvus` package (requirements-dev.txt),
started and stopped here. Per server: publish seconds, recall@20 of one search (k=20, 256
candidates re-scored) against exact search, its median latency, and the mAP without and with
diffusion (Milvus: the candidates' own graph at query time; exact: the whole database's graph,
built once through the ANN). `index_types` sweeps the vector index on --sweep-rows of the
database. With --index (the Lite0 index of the 409 Paris photos), `app` compares the top 10 of
the app's engine over the local index and over Milvus Lite for the 19 query crops; --app-only
measures that alone and merges it into --json, keeping the other sections the file holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.benchmark import machine_info
from benchmarks.report import save_results

QE, DBA, ALPHA = 5, 3, 3.0
ANN_K = 1000
K = 20


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def database(data_root: str, distractors: str, rows: int | None):
    """Returns (dataset, network, augmented db, queries, the distractors' trained ANN)."""
    from retrieval.database import add_distractors, augment_database
    from retrieval.datasets import load_dataset
    from retrieval.defaults import DEFAULT
    from retrieval.evaluation import DEFAULT_CACHE_DIR, dataset_descriptors
    from retrieval.networks import build_network

    dataset = load_dataset("rparis6k", data_root)
    network = build_network("efficientnet-lite0", weights="imagenet")
    found = dataset_descriptors(dataset, network, DEFAULT.descriptor, cache_dir=DEFAULT_CACHE_DIR)
    db, _, ann = add_distractors(found.db, distractors, network=network, pipeline=DEFAULT.descriptor)
    if rows is not None:
        db = np.ascontiguousarray(db[: len(found.db) + rows])
        ann = None
    t0 = time.perf_counter()
    augmented = augment_database(db, k=DBA, alpha=ALPHA, ann=ann)
    say(f"database: {len(db):,} rows, DBA k={DBA} in {time.perf_counter() - t0:.0f} s")
    return dataset, network, augmented, found.queries, ann


def mean_ap(dataset, ranks) -> dict:
    from retrieval.evaluate import evaluate_ranks

    metrics = evaluate_ranks(ranks, dataset.gnd, dataset.kind)
    return {p: round(100 * float(metrics[p]["map"]), 2) for p in ("easy", "medium", "hard")}


def ranked(dataset, db, queries, **search) -> dict:
    """Returns {"map", "search_ms"} of every query ranked through the evaluation's query path."""
    from retrieval.evaluation import rank_queries

    ranks, seconds = rank_queries(db, queries, qe=QE, dba=0, alpha=ALPHA, ann_k=ANN_K, **search)
    return {"map": mean_ap(dataset, ranks), "search_ms": round(1000 * float(np.median(seconds)), 2)}


def search_quality(rows, db, queries, truth) -> dict:
    """Returns recall@K of one Milvus search per query against `truth`, and its median latency."""
    from retrieval.search import Searcher

    searcher = Searcher(rows, backend="milvus", milvus=rows)
    searcher.search(queries[:1], K)  # the first search loads what the server loads lazily
    found, seconds = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(searcher.search(q, K)[1][0])
        seconds.append(time.perf_counter() - t0)
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
    return {"recall_at_20": round(float(recall), 4), "search_ms": round(1000 * float(np.median(seconds)), 2)}


def started(kind: str, scratch: Path):
    """Returns (uri, stop) of a Milvus of `kind`: "lite" (a .db here) or "server" (standalone 2.3.5)."""
    if kind == "lite":
        return str(scratch / "bench.db"), lambda: None
    from tests.milvusserver import StandaloneServer

    server = StandaloneServer(scratch / "standalone")
    server.start()
    return server.uri, server.stop


def measure_server(kind: str, dataset, db, queries, truth, diffusion, index_type: str, sweep: list) -> dict:
    """Publishes the database into a Milvus of `kind` and measures it; returns the results."""
    from retrieval.evaluation import rank_queries  # noqa: F401  (imported early: TensorFlow before the server)
    from retrieval.milvus import MilvusRows, MilvusTarget, close, connect, index_params

    with tempfile.TemporaryDirectory(prefix=f"bench-milvus-{kind}-") as scratch:
        uri, stop = started(kind, Path(scratch))
        try:
            client = connect(uri)
            target = MilvusTarget(client, "bench", index_type=index_type, where=kind)
            t0 = time.perf_counter()
            rows = target.serve(db, log=say)
            out = {"server": kind, "index_type": index_type, "rows": len(db),
                   "publish_s": round(time.perf_counter() - t0, 1), "record": target.report.record}
            say(f"{kind}: published {len(db):,} rows in {out['publish_s']} s")
            out.update(search_quality(rows, db, queries, truth))
            say(f"{kind}: recall@20 {out['recall_at_20']}, {out['search_ms']} ms")
            out["plain"] = ranked(dataset, db, queries, backend="milvus", milvus=target)
            say(f"{kind}: mAP {out['plain']}")
            if diffusion is not None:
                out["diffusion"] = ranked(dataset, db, queries, backend="milvus", milvus=target, diffusion=diffusion)
                say(f"{kind}: with diffusion {out['diffusion']}")
            out["index_types"] = []
            for sweep_type, params, n in sweep:
                part = np.ascontiguousarray(db[:n])
                sweep_target = MilvusTarget(client, f"sweep_{sweep_type.lower()}", index_type=sweep_type, where=kind)
                t0 = time.perf_counter()
                sweep_rows = sweep_target.serve(part)
                publish_s = round(time.perf_counter() - t0, 1)
                _, part_truth = exact_truth(part, queries)
                for search in params or [index_params(sweep_type, n)[1]]:
                    probe = MilvusRows(client, sweep_target.collection, sweep_rows.ids, dim=part.shape[1],
                                       search_params=search, where=kind)
                    cell = {"index_type": sweep_type, "rows": n, "build_s": publish_s, "search_params": search,
                            **search_quality(probe, part, queries, part_truth)}
                    say(f"{kind}: {cell}")
                    out["index_types"].append(cell)
                client.drop_collection(sweep_target.collection)
            client.drop_collection("bench")
            close(client, uri)
        finally:
            stop()
    return out


def exact_truth(db, queries):
    from retrieval.search import Searcher

    return Searcher(db, backend="exact").search(queries, K)


def app_agreement(index_dir: str) -> dict:
    """Returns how many of the 19 crops get the same top 10 from the engine over the local index and
    over Milvus Lite (the app's two ways of serving it; Milvus: no feature matrix, diffusion on the
    candidates' own graph), the largest gap between their similarities, whether their "confident
    match" verdicts agree, and each one's median search ms."""
    from retrieval.datasets import load_dataset
    from retrieval.engine import SearchEngine
    from retrieval.index import load_index
    from retrieval.milvus import MilvusRows, close, connect, publish_rows
    from retrieval.networks import build_network

    index = load_index(index_dir)
    network = build_network(index.meta["network"], weights=index.meta["weights"])
    local = SearchEngine(index, network)
    with tempfile.TemporaryDirectory(prefix="bench-milvus-app-") as scratch:
        uri = str(Path(scratch) / "app.db")
        client = connect(uri)
        record = publish_rows(client, "paris", index.features, index.ids, index.meta).record
        rows = MilvusRows(client, "paris", index.ids, dim=index.dim, search_params=record["search_params"])
        remote = SearchEngine(load_index(index_dir, features=False), network, milvus=rows)
        dataset = load_dataset("rparis6k", APP_DATA_ROOT)
        crops = [dataset.crops_dir / f"{q}.jpg" for q in dataset.query_ids]
        local.warm_up()
        remote.warm_up()
        same, verdicts, gap, local_ms, remote_ms = 0, 0, 0.0, [], []
        for crop in crops:
            a, b = local.search(str(crop), 10), remote.search(str(crop), 10)
            same += a.ids == b.ids
            verdicts += a.confident == b.confident
            if a.ids == b.ids:
                gap = max(gap, float(np.max(np.abs(np.subtract(a.similarities, b.similarities)))))
            local_ms.append(a.search_ms)
            remote_ms.append(b.search_ms)
        close(client, uri)
    return {"crops": len(crops), "same_top10": int(same), "same_verdict": int(verdicts),
            "max_similarity_gap": float(f"{gap:.2g}"), "local_search_ms": round(float(np.median(local_ms)), 2),
            "milvus_lite_search_ms": round(float(np.median(remote_ms)), 2), "rows": len(index),
            "local_backend": local.searcher.backend, "diffusion": index.meta.get("diffusion"),
            "milvus": record}


APP_DATA_ROOT = "../shared/data"


def tables(results: dict) -> dict:
    """Returns the docs' tables (targets, index types, app) from the measured results."""
    exact, servers = results.get("exact") or {}, results.get("servers") or []
    # What the exact search diffused over: a run before the truncated default recorded no settings.
    settings = (results.get("settings") or {}).get("diffusion") or {}
    exact_graph = f"stored graph's top-{settings['candidates']} subgraph" if settings.get("truncate") else "whole graph"
    target_rows = []
    for label, entry in [("exact", exact), *((s["server"], s) for s in servers)] if exact else []:
        name = {"exact": "exact", "lite": "Milvus Lite (local .db)", "server": "Milvus 2.3.5 standalone server"}[label]
        for rerank in ("plain", "diffusion"):
            if rerank not in entry:
                continue
            m = entry[rerank]["map"]
            delta = "" if label == "exact" else " / ".join(
                f"{m[p] - exact[rerank]['map'][p]:+.1f}" for p in ("medium", "hard"))
            target_rows.append([
                name, "none" if rerank == "plain" else (exact_graph if label == "exact" else "candidates' graph"),
                f"{m['easy']:.1f}", f"{m['medium']:.1f}", f"{m['hard']:.1f}", delta,
                "1 (truth)" if label == "exact" else f"{entry['recall_at_20']:.3f}",
                f"{entry[rerank]['search_ms']:.0f}",
                "" if label == "exact" else f"{entry['search_ms']:.0f}",
                "" if label == "exact" else f"{entry['publish_s']:.0f}"])
    out = {} if not target_rows else {"targets": {
        "columns": ["search", "diffusion", "Easy", "Medium", "Hard", "Δ Medium / Hard", "recall@20",
                    "ms/query (ranking)", "ms/search", "publish s"],
        "align": "llrrrrrrrr", "rows": target_rows}}
    sweep = [[s["server"], c["index_type"], f"{c['rows']:,}", _params(c["search_params"]), f"{c['build_s']:.0f}",
              f"{c['recall_at_20']:.3f}", f"{c['search_ms']:.1f}"]
             for s in servers for c in s["index_types"]]
    if sweep:
        out["index_types"] = {"columns": ["server", "index", "rows", "search", "publish s", "recall@20", "ms/search"],
                              "align": "lllrrrr", "rows": sweep}
    if results.get("app"):
        a = results["app"]
        out["app"] = {"columns": ["index", "crops", "same top 10", "same verdict", "largest similarity gap",
                                  "search ms local", "search ms Milvus Lite"],
                      "align": "lrrrrrr", "rows": [[f"{a['rows']} Paris photos, Lite0, default recipe", a["crops"],
                                                    a["same_top10"], a["same_verdict"], f"{a['max_similarity_gap']:.1g}",
                                                    f"{a['local_search_ms']:.1f}", f"{a['milvus_lite_search_ms']:.1f}"]]}
    return out


def _params(params: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "-"


SWEEP = [("IVF_SQ8", [{"nprobe": 32}, {"nprobe": 64}, {"nprobe": 128}]), ("IVF_FLAT", [{"nprobe": 64}]),
         ("HNSW", [{"ef": 256}, {"ef": 512}])]  # Milvus asks ef >= the 256 candidates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.milvus", description=__doc__.split("\n")[0])
    parser.add_argument("--distractors", metavar="DIR", help="a precompute.make_distractors index (not with --app-only)")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--distractor-rows", type=int, default=None, help="use only the first N distractors")
    parser.add_argument("--servers", default="lite,server", help="lite, server or both (default)")
    parser.add_argument("--index-type", default="IVF_SQ8")
    parser.add_argument("--sweep-rows", type=int, default=100_000, help="rows of the index-type sweep (0: none)")
    parser.add_argument("--sweep-servers", default="server", help="where the sweep runs (default: the real server)")
    parser.add_argument("--no-diffusion", action="store_true")
    parser.add_argument("--index", default=None, metavar="DIR", help="the Lite0 index of the 409 Paris photos")
    parser.add_argument("--app-only", action="store_true",
                        help="only the app's agreement (needs --index), merged into --json's other sections")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    global APP_DATA_ROOT
    APP_DATA_ROOT = args.data_root
    command = "python -m benchmarks.milvus " + " ".join(argv or sys.argv[1:])
    if args.index:  # a path of this machine: the results file names it INDEX, as the docs do
        command = command.replace(args.index, "INDEX")
    if args.app_only:
        if not args.index:
            parser.error("--app-only needs --index DIR")
        return measure_app(args.index, Path(args.json) if args.json else None, command)
    if not args.distractors:
        parser.error("give --distractors DIR (or --app-only)")
    from retrieval.defaults import DEFAULT

    results = {"machine": machine_info(), "command": command,
               "settings": {"qe": QE, "dba": DBA, "alpha": ALPHA, "ann_k": ANN_K, "k": K}}
    dataset, _network, db, queries, ann = database(args.data_root, args.distractors, args.distractor_rows)
    diffusion = None if args.no_diffusion else DEFAULT.diffusion
    results["settings"]["diffusion"] = diffusion.to_meta() if diffusion is not None else None
    _, truth = exact_truth(db, queries)
    results["exact"] = {"rows": len(db), "plain": ranked(dataset, db, queries, backend="exact")}
    say(f"exact: {results['exact']['plain']}")
    if diffusion is not None:  # the whole database's graph, built through the ANN as the evaluation builds it
        results["exact"]["diffusion"] = ranked(dataset, db, queries, backend="exact", diffusion=diffusion, ann=ann)
        say(f"exact with diffusion: {results['exact']['diffusion']}")
    results["servers"] = []
    sweep = [(t, p, min(args.sweep_rows, len(db))) for t, p in SWEEP] if args.sweep_rows else []
    out = Path(args.json) if args.json else None
    for kind in [s for s in args.servers.split(",") if s]:
        here = sweep if kind in args.sweep_servers.split(",") else []
        results["servers"].append(measure_server(kind, dataset, db, queries, truth, diffusion, args.index_type, here))
        save_partial(results, out)  # a later section that fails keeps what was measured
    if args.index:
        results["app"] = {**app_agreement(args.index), "command": command}
        say(f"app: {results['app']}")
    results["tables"] = tables(results)
    save_results(results, out)
    return 0


def measure_app(index_dir: str, path: Path | None, command: str) -> int:
    """Measures `app_agreement` alone and writes it into the results file at `path`, keeping its other sections."""
    import json

    results = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    results["app"] = {**app_agreement(index_dir), "command": command, "machine": machine_info()}
    say(f"app: {results['app']}")
    results["tables"] = tables(results)
    save_results(results, path)
    return 0


def save_partial(results: dict, path: Path | None) -> None:
    """Writes what was measured so far, with its tables, to `path` (".partial" added)."""
    if path is not None:
        import json

        partial = {**results, "tables": tables(results)}
        path.with_name(path.name + ".partial").write_text(json.dumps(partial, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
