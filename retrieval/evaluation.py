"""Runs a landmark benchmark through the app's own query path: descriptors, rankings, mAP report.

`run_evaluation` embeds a dataset's database and query crops (cached per dataset, network,
weights and pipeline, so a rerun that changes only the search skips the network), ranks every
query through `retrieval.query.QueryPath` (the code `SearchEngine` serves), and scores the
rankings with the pure metrics of `retrieval.evaluate`. It returns a JSON-ready report; printing,
tables and plots are the command's (`precompute.evaluate`). Benchmarks call these functions.

With `distractors` the rows of another index join the database after the dataset's own images
(the +R1M protocol). With backend "ann" each ranking is the ANN's top `ann_k`, re-ranked
exactly, then everything else with the distractors first (so a positive the ANN missed counts
as found at the very end); backend "milvus" does the same through a Milvus collection the
database is published to (`retrieval.milvus.MilvusTarget`), with diffusion on the candidates'
own graph (`retrieval.diffusion.CandidateDiffusion`), as the app serves it. With `sv` the top of each final ranking is spatially verified
(`retrieval.verify`), the database's local features cached beside the descriptors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.ann import ann_neighbours
from retrieval.database import add_distractors, augment_database, full_ranking, make_searcher, trained_ann
from retrieval.datasets import Dataset
from retrieval.defaults import DEFAULT, approximate
from retrieval.diffusion import CandidateDiffusion, Diffusion, DiffusionSettings, Graph, build_graph, graph_from_knn
from retrieval.evaluate import evaluate_ranks
from retrieval.features import Pipeline, embed_image, extract_features
from retrieval.query import QueryPath, self_similarity
from retrieval.search import Searcher
from retrieval.whitening import apply_whitening, learn_whitening

ALPHA = DEFAULT.alpha
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path(".cache") / "evaluate"
TOP_IDS = 10


@dataclass
class Descriptors:
    """Raw (unwhitened) descriptors of a dataset, (n, d) and (m, d) float32 L2-normalised."""

    db: np.ndarray
    queries: np.ndarray
    embed_seconds: np.ndarray  # (m,) seconds to embed each query crop, one at a time
    cached: bool = False


@dataclass
class Evaluation:
    """The outcome of `run_evaluation`: `report` is JSON-ready, the rest feeds the plot."""

    report: dict
    ranks: np.ndarray  # (m, n) database rows per query, best first
    dataset: Dataset


# ---------------------------------------------------------------- descriptors and cache


def _file_stamp(path: Path) -> list:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def cache_key(dataset: Dataset, network, pipeline: Pipeline) -> dict:
    """Returns what decides the descriptors: a changed image, crop, network or pipeline misses the cache."""
    queries = []
    for i, qid in enumerate(dataset.query_ids):
        crop = dataset.crops_dir / f"{qid}.jpg"
        source = crop if crop.is_file() else dataset.image_path(qid)
        queries.append([qid, _file_stamp(source), None if crop.is_file() else dataset.query_boxes[i]])
    files = json.dumps([[i, _file_stamp(dataset.image_path(i))] for i in dataset.db_ids] + queries)
    return {
        "cache_version": CACHE_VERSION,
        "dataset": dataset.name,
        "network": network.name,
        "weights": network.weights,
        **_runtime_meta(network),
        "pipeline": pipeline.to_meta(),
        "files_sha256": hashlib.sha256(files.encode()).hexdigest(),
    }


def _runtime_meta(network) -> dict:
    # Only for a runtime other than Keras, so that caches made before runtimes existed still match.
    runtime = getattr(network, "runtime", "keras")
    return {} if runtime == "keras" else {"runtime": runtime, "precision": network.precision}


def cache_path(cache_dir, key: dict) -> Path:
    """Returns the cache file for a key: <cache_dir>/<dataset>-<network>-<hash>.npz."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['dataset']}-{key['network']}-{digest}.npz"


def _read_cache(path: Path, key: dict) -> Descriptors | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != key:
                return None
            return Descriptors(z["db"].copy(), z["queries"].copy(), z["embed_seconds"].copy(), cached=True)
    except (OSError, ValueError, KeyError):
        return None


def _write_npz(path: Path, key: dict, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, key=np.asarray(json.dumps(key, sort_keys=True)), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_cache(path: Path, key: dict, found: Descriptors) -> None:
    _write_npz(path, key, {"db": found.db, "queries": found.queries, "embed_seconds": found.embed_seconds})


def embed_queries(dataset: Dataset, network, pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Returns (m, d) float32 L2-normalised query descriptors and (m,) seconds to embed each.

    Each crop is embedded alone, as the app embeds an upload; the decoded crop is the input, so
    the time covers resizing, the network and pooling. One untimed call first builds the graph.
    """
    images = [dataset.query_image(i) for i in range(len(dataset.query_ids))]
    embed_image(network, images[0], pipeline)
    vectors, seconds = [], []
    for image in images:
        t0 = time.perf_counter()
        vectors.append(embed_image(network, image, pipeline))
        seconds.append(time.perf_counter() - t0)
    return np.ascontiguousarray(np.stack(vectors), dtype=np.float32), np.asarray(seconds)


def dataset_descriptors(
    dataset: Dataset,
    network,
    pipeline: Pipeline,
    *,
    cache_dir=None,
    batch_size: int = 8,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Descriptors:
    """Returns the descriptors of the database images and query crops, from the cache when it holds them.

    Args:
        cache_dir: folder of cache files; None computes without caching.
        progress: called with 1 after each database image embedded.
    """
    key = cache_key(dataset, network, pipeline)
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.is_file():
        found = _read_cache(path, key)
        if found is not None:
            return found
    db = extract_features(network, [dataset.image_path(i) for i in dataset.db_ids], pipeline,
                          batch_size=batch_size, workers=workers, progress=progress)
    queries, seconds = embed_queries(dataset, network, pipeline)
    found = Descriptors(db, queries, seconds)
    if path is not None:
        _write_cache(path, key, found)
    return found


# ---------------------------------------------------------------- spatial verification


def local_cache_key(dataset: Dataset) -> dict:
    """Returns what decides the database's local features: a changed image or setting misses the cache."""
    from retrieval.verify import feature_meta

    files = json.dumps([[i, _file_stamp(dataset.image_path(i))] for i in dataset.db_ids])
    return {
        "cache_version": CACHE_VERSION,
        "dataset": dataset.name,
        "network": "sift",
        "local_features": feature_meta(),
        "files_sha256": hashlib.sha256(files.encode()).hexdigest(),
    }


def database_local_features(dataset: Dataset, *, cache_dir=None, progress: Callable[[int], None] | None = None):
    """Returns a `retrieval.verify.FeatureStore` of the database images, row i = dataset.db_ids[i].

    Args:
        cache_dir: folder of cache files; None computes without caching.
        progress: called with 1 after each database image.
    """
    from retrieval.verify import FeatureStore, detect_sift

    key = local_cache_key(dataset)
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == key:
                    store = FeatureStore.from_arrays(z)
                    if len(store) == len(dataset.db_ids):
                        return store
        except (OSError, ValueError, KeyError):
            pass
    found = []
    for db_id in dataset.db_ids:
        found.append(detect_sift(dataset.image_path(db_id)))
        if progress is not None:
            progress(1)
    store = FeatureStore.from_sift(found)
    if path is not None:
        _write_npz(path, key, store.to_arrays())
    return store


def verify_queries(
    dataset: Dataset,
    ranks: np.ndarray,
    *,
    top: int,
    min_inliers: int | None = None,
    cache_dir=None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Returns the rankings with their top `top` re-ordered by spatial verification.

    Each query is timed alone from its decoded crop: SIFT on the crop, then matching and RANSAC
    against its top images (`retrieval.verify.spatial_rerank`).

    Args:
        ranks: (m, n) database rows per query, best first.
        min_inliers: fewest inliers that count as verified; None for the library's default.
        cache_dir, progress: see `database_local_features`.

    Returns:
        ((m, n) re-ranked database rows, (m,) seconds of verification per query, the JSON-ready
        settings from `retrieval.verify.verification_meta`).
    """
    from retrieval import verify

    min_inliers = verify.DEFAULT_MIN_INLIERS if min_inliers is None else min_inliers
    store = database_local_features(dataset, cache_dir=cache_dir, progress=progress)
    out = np.empty_like(ranks)
    seconds = np.empty(len(ranks))
    for i in range(len(ranks)):
        image = dataset.query_image(i)
        t0 = time.perf_counter()
        query = verify.local_features(image)
        out[i] = verify.spatial_rerank(ranks[i], query, store, top=top, min_inliers=min_inliers)
        seconds[i] = time.perf_counter() - t0
    return out, seconds, verify.verification_meta(top=top, min_inliers=min_inliers)


# ---------------------------------------------------------------- search and metrics


def rank_queries(db: np.ndarray, queries: np.ndarray, *, backend: str = "kdtree", whitening=None,
                 qe: int = 0, dba: int = 0, alpha: float = ALPHA, ann_k: int = 1000,
                 ann=None, diffusion: DiffusionSettings | None = None,
                 seed_ranks: np.ndarray | None = None, reuse: dict | None = None,
                 milvus=None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (m, n) database rows per query, best first, and (m,) seconds of search per query.

    The database is whitened then augmented (DBA), and its diffusion graph built, once,
    offline. Each query is then timed alone: whitening, a full ranking, with query expansion
    the second ranking, and with diffusion the re-ranking over the graph.

    Args:
        db: (n, d) raw L2-normalised database descriptors.
        queries: (m, d) raw L2-normalised query descriptors.
        whitening: a `Whitening` applied to both, or None.
        qe: alpha query expansion with this many top images; 0 for none.
        dba: database-side augmentation with this many neighbours; 0 for none. From
            `DEFAULT.ann_rows` rows up its neighbours come through an ANN, whatever the backend.
        ann_k: with backend "ann", the top rows taken from the ANN and re-ranked exactly; the
            rest of the ranking follows in a fixed order (see `full_ranking`).
        ann: with backend "ann", a trained `AnnIndex` to refill with these rows instead of training one.
        diffusion: diffusion re-ranking settings (`retrieval.diffusion`), or None for none.
        seed_ranks: (m, n) rankings whose top images seed each query's diffusion instead of its
            own (spatially verified ones), weighted by their similarity to the query.
        reuse: a dict the caller keeps for one database (the same `db`, `whitening` and `ann`
            every call): the DBA rows and diffusion graphs made here are kept in it, by their
            settings, and a later call with the same settings takes them instead of making them
            again (a benchmark that ranks one database with many recipes).
        milvus: with backend "milvus", the `retrieval.milvus.MilvusTarget` the database is
            published to; the rankings are its top `ann_k`, as for "ann".
    """
    if (backend == "milvus") != (milvus is not None):
        raise ValueError("backend milvus needs a Milvus target (milvus=MilvusTarget), and only it")
    reuse = {} if reuse is None else reuse
    if whitening is not None:
        db = apply_whitening(db, whitening)
    own = db
    if dba:
        if ("dba", dba, alpha) not in reuse:
            reuse["dba", dba, alpha] = augment_database(db, k=dba, alpha=alpha, ann=ann)
        db = reuse["dba", dba, alpha]
    if milvus is not None:  # the rows are searched and read in the collection, as the app serves them
        rows = milvus.serve(db)
        searcher = Searcher(rows, backend="milvus", milvus=rows)
        reranker = CandidateDiffusion(rows, diffusion) if diffusion is not None else None
    else:
        rows, searcher, reranker = db, make_searcher(db, backend, ann), None
        if diffusion is not None:
            key = ("graph", dba, alpha, diffusion.k, diffusion.gamma)
            if key not in reuse:
                reuse[key] = graph_for(db, diffusion, ann)
            reranker = Diffusion(reuse[key], diffusion)
    # The app's own query path (retrieval.query), over the database as an index would store it.
    path = QueryPath(rows, searcher, qe=qe, alpha=alpha, diffusion=reranker,
                     self_similarity=self_similarity(own, db) if dba else None, augmented=bool(dba))
    n = len(searcher)
    depth = min(ann_k, n) if backend in ("ann", "milvus") else n
    ranks = np.empty((len(queries), n), dtype=np.int64)
    seconds = np.empty(len(queries))
    for i, query in enumerate(queries):
        t0 = time.perf_counter()
        q = apply_whitening(query, whitening)[0] if whitening is not None else query
        seeds = seed_ranks[i] if seed_ranks is not None and path.diffusion is not None else None
        rows = path.rank(q, depth, seed_rows=seeds).rows
        seconds[i] = time.perf_counter() - t0
        ranks[i] = full_ranking(rows, n) if len(rows) < n else rows
    return ranks, seconds


def diffusion_for(db: np.ndarray, settings: DiffusionSettings | None, ann=None) -> Diffusion | None:
    """Returns the `Diffusion` over the kNN graph of (n, d) rows, as build_index stores it; None for None.

    Below `DEFAULT.ann_rows` rows the graph's neighbours are exact (all pairs); from there up
    (a database with distractors) they come through an ANN, `ann` refilled or one trained here:
    all pairs of 300,000 rows would take most of an hour on two cores.
    """
    return None if settings is None else Diffusion(graph_for(db, settings, ann), settings)


def graph_for(db: np.ndarray, settings: DiffusionSettings, ann=None) -> Graph:
    """Returns the kNN graph of (n, d) rows with the settings' k and gamma, as build_index stores it (see `diffusion_for`)."""
    if not approximate(len(db)):
        return build_graph(db, k=settings.k, gamma=settings.gamma)
    # The mutual graph keeps an edge only when both ends find each other: deeper than DBA's search.
    structure = trained_ann(db, ann)
    rows, sims = ann_neighbours(structure, db, settings.k, rerank=2 * settings.k, with_sims=True,
                                nprobe=max(8, structure.nprobe // 4))
    return graph_from_knn(rows, sims, gamma=settings.gamma, knn="ann")


def _milvus_meta(milvus) -> dict | None:
    """Returns what the report records of a Milvus target: its last publication (never the URI)."""
    if milvus is None or milvus.report is None:
        return None
    return {**milvus.report.record, "publish_s": round(milvus.report.seconds, 3), "rerank": milvus.rerank,
            "search_params": milvus.search_params or milvus.report.record["search_params"]}


def _number(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def run_evaluation(
    dataset: Dataset,
    network,
    pipeline: Pipeline,
    *,
    backend: str = "kdtree",
    whiten: bool = False,
    whiten_shrinkage: float = 0.5,
    qe: int = 0,
    dba: int = 0,
    alpha: float = ALPHA,
    sv: int = 0,
    sv_min_inliers: int | None = None,
    distractors=None,
    ann_k: int = 1000,
    diffusion: DiffusionSettings | None = None,
    diffusion_then_sv: bool = False,
    cache_dir=None,
    batch_size: int = 8,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    sv_progress: Callable[[int], None] | None = None,
    milvus=None,
) -> Evaluation:
    """Returns the evaluation of one pipeline and search setting on a dataset.

    Whitening, when asked for, is learned on the database descriptors themselves
    (unsupervised: no labels are used), as `precompute.build_index --whiten` does for an index.

    Args:
        dataset: from `retrieval.datasets.load_dataset`.
        network: a `retrieval.networks.Network`.
        pipeline: resizing and pooling.
        backend: "kdtree", "exact", "ann" or "milvus" (with `milvus`).
        whiten: learn a PCA-whitening on the database descriptors and apply it to all.
        whiten_shrinkage: its eigenvalue shrinkage (see `learn_whitening`).
        qe, dba, alpha: alpha query expansion and database-side augmentation (0: off).
        sv: spatially verify the top sv images of each final ranking (0: off).
        sv_min_inliers: fewest inliers that count as verified; None for the library's default.
        distractors: an index folder whose rows join the database after the dataset's (+R1M);
            it must be of the same network, weights and pipeline, without DBA or whitening.
        ann_k: with backend "ann" or "milvus", the top rows re-ranked exactly (see `rank_queries`).
        diffusion: diffusion re-ranking over the database's kNN graph, after QE (None: off).
            With sv, the spatially verified top of the first ranking seeds the diffusion,
            unless `diffusion_then_sv`: then SV re-ranks the top of the diffusion's ranking.
        cache_dir: descriptor (and local feature) cache folder, or None.
        progress, sv_progress: called with 1 per database image embedded / given local features.
        milvus: with backend "milvus", the `retrieval.milvus.MilvusTarget` to publish the database to.

    Returns:
        An `Evaluation` whose `report` holds dataset, database_size, queries, map, report_map,
        mp_at_k, pipeline, seconds_per_query and per_query.
    """
    found = dataset_descriptors(dataset, network, pipeline, cache_dir=cache_dir, batch_size=batch_size,
                                workers=workers, progress=progress)
    db, added, ann = found.db, None, None
    if distractors is not None:
        db, added, ann = add_distractors(found.db, distractors, network=network, pipeline=pipeline)
    whitening = learn_whitening(db, shrinkage=whiten_shrinkage) if whiten else None
    search = dict(backend=backend, whitening=whitening, qe=qe, dba=dba, alpha=alpha, ann_k=ann_k, ann=ann, milvus=milvus)
    seeded = bool(sv) and diffusion is not None and not diffusion_then_sv
    ranks, search_seconds = rank_queries(db, found.queries, **search, diffusion=None if seeded else diffusion)
    verify_seconds, sv_meta = np.zeros(len(ranks)), None
    if sv:
        ranks, verify_seconds, sv_meta = verify_queries(dataset, ranks, top=sv, min_inliers=sv_min_inliers,
                                                        cache_dir=cache_dir, progress=sv_progress)
    if seeded:
        ranks, search_seconds = rank_queries(db, found.queries, **search, diffusion=diffusion, seed_ranks=ranks)
    metrics = evaluate_ranks(ranks, dataset.gnd, dataset.kind)
    protocols = list(metrics)
    per_query = [
        {
            "id": qid,
            "ap": {p: _number(metrics[p]["aps"][i]) for p in protocols},
            "report_ap": {p: _number(metrics[p]["report_aps"][i]) for p in protocols},
            "top10": [dataset.db_ids[r] if r < len(dataset.db_ids) else f"distractor:{r - len(dataset.db_ids)}"
                      for r in ranks[i, :TOP_IDS]],
        }
        for i, qid in enumerate(dataset.query_ids)
    ]
    whitening_meta = None
    if whitening is not None:
        whitening_meta = {**whitening.to_meta(), "learned_on": "database descriptors (unsupervised)"}
    report = {
        "dataset": dataset.name,
        "kind": dataset.kind,
        "database_size": len(dataset.db_ids),
        "total_database": dataset.total_db,
        "total_queries": dataset.total_queries,
        "queries": {p: metrics[p]["n_queries"] for p in protocols},
        "map": {p: _number(metrics[p]["map"]) for p in protocols},
        "report_map": {p: _number(metrics[p]["report_map"]) for p in protocols},
        "mp_at_k": {p: {str(k): _number(v) for k, v in metrics[p]["mp_at"].items()} for p in protocols},
        "pipeline": {
            "network": network.name,
            "weights": network.weights,
            **_runtime_meta(network),
            "pipeline": pipeline.to_meta(),
            "whitening": whitening_meta,
            "qe": {"k": qe, "alpha": alpha} if qe else None,
            "dba": {"k": dba, "alpha": alpha} if dba else None,
            "backend": backend,
            "ann_k": ann_k if backend in ("ann", "milvus") else None,
            **({"milvus": _milvus_meta(milvus)} if milvus is not None else {}),
            "sv": sv_meta,
            "diffusion": diffusion.to_meta() if diffusion is not None else None,
            "sv_seeds_diffusion": seeded,
        },
        "distractors": added,
        "seconds_per_query": {
            "embed": _number(np.median(found.embed_seconds)),
            "search": _number(np.median(search_seconds)),
            "verify": _number(np.median(verify_seconds)),
            "total": _number(np.median(found.embed_seconds + search_seconds + verify_seconds)),
            "statistic": "median over queries",
            "embed_from_cache": found.cached,
        },
        "per_query": per_query,
    }
    return Evaluation(report, ranks, dataset)
