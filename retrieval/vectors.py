"""An index from descriptors computed elsewhere: a cluster job, published R1M descriptors, a generator.

`build_from_vectors` takes an (n, d) matrix (a memory-mapped .npy is fine: it is read block by
block, never whole) with optional ids, checks it, L2-normalises it, applies DBA and builds the
ANN structure as `build_index` does for images, and writes an index without thumbnails.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval.ann import ann_neighbours, build_ann, refill
from retrieval.defaults import approximate
from retrieval.features import Pipeline, descriptor_dim
from retrieval.index import recover_index_folder, save_index
from retrieval.rerank import augment_with_neighbours, database_augmentation

# Output channels per network, known without building it (the commands check dimensions first).
NETWORK_CHANNELS = {"efficientnet-b7": 2560, "efficientnet-lite0": 1280}
_BLOCK = 65536


class VectorsError(ValueError):
    """Descriptors that cannot make an index, with what is wrong."""


def check_vectors(vectors: np.ndarray, ids, *, network: str, pipeline: Pipeline) -> np.ndarray:
    """Returns the n ids as a unicode array after checking the descriptors and ids; reads in blocks.

    Args:
        vectors: (n, d) float rows.
        ids: n unique ids (anything with str()), or None for "vec_0000000"...

    Raises:
        VectorsError: rows not finite, a dimension that is not the network's, ids not unique or
            not one per row.
    """
    if vectors.ndim != 2 or vectors.dtype.kind != "f" or len(vectors) == 0:
        raise VectorsError(f"the descriptors must be a non-empty (n, d) float matrix, got {vectors.dtype} {vectors.shape}")
    n, d = vectors.shape
    if network not in NETWORK_CHANNELS:
        raise VectorsError(f"unknown network {network!r}; known: {', '.join(NETWORK_CHANNELS)}")
    want = descriptor_dim(NETWORK_CHANNELS[network], pipeline)
    if d != want:
        raise VectorsError(f"the descriptors have dimension {d}, but {network} with this pipeline "
                           f"({pipeline.pooling}) gives {want}: they cannot be searched with its queries")
    for start in range(0, n, _BLOCK):
        bad = ~np.isfinite(vectors[start : start + _BLOCK]).all(axis=1)
        if bad.any():
            raise VectorsError(f"row {start + int(np.flatnonzero(bad)[0])} of the descriptors is not finite (NaN or infinity)")
    if ids is None:
        return np.asarray([f"vec_{i:07d}" for i in range(n)])
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise VectorsError(f"there must be one id per row: {n} rows, ids of shape {ids.shape}")
    ids = ids.astype(str)
    if len(set(ids.tolist())) != n:
        uniq, counts = np.unique(ids, return_counts=True)
        raise VectorsError(f"ids must be unique: {int((counts > 1).sum())} repeat, e.g. {uniq[counts > 1][0]!r}")
    return ids


def build_from_vectors(
    vectors: np.ndarray,
    out_dir,
    *,
    network: str,
    weights: str,
    pipeline: Pipeline,
    ids=None,
    dba: int = 0,
    qe: int = 0,
    alpha: float = 3.0,
    ann: bool | None = None,
    dtype: str = "float16",
    extra_meta: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Writes an index of `vectors` (no thumbnails) to `out_dir` and returns what it did.

    Args:
        vectors: (n, d) descriptors made by `network` with `pipeline`; normalised here.
        network, weights, pipeline: recorded in index.json, as the queries must be embedded.
        ids: n unique ids, or None.
        dba: database-side augmentation with this many neighbours; above `DEFAULT.ann_rows`
            rows the neighbours come from the ANN (candidates re-scored exactly), not all pairs.
        qe, alpha: recorded for the search engine, as `build_index` does.
        ann: build the ANN structure; None builds it from `DEFAULT.ann_rows` rows up.

    Returns:
        {"count", "dim", "ann", "seconds": {"check", "normalise", "ann", "dba", "save"}}.

    Raises:
        VectorsError: see `check_vectors`.
    """
    say = log or (lambda _m: None)
    seconds = {}
    t0 = time.perf_counter()
    ids = check_vectors(vectors, ids, network=network, pipeline=pipeline)
    n, d = vectors.shape
    out_dir = Path(out_dir)
    recover_index_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.vectors-", dir=out_dir.parent))
    seconds["check"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        rows = np.lib.format.open_memmap(work / "rows.npy", mode="w+", dtype=dtype, shape=(n, d))
        for start in range(0, n, _BLOCK):
            block = np.asarray(vectors[start : start + _BLOCK], dtype=np.float32)
            rows[start : start + len(block)] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        seconds["normalise"] = time.perf_counter() - t0
        large = approximate(n)
        use_ann = approximate(n, ann)
        structure, seconds["ann"], seconds["dba"] = None, 0.0, 0.0
        if use_ann or (dba and large):
            t0 = time.perf_counter()
            say(f"training and filling the ANN structure over {n} rows")
            structure = build_ann(rows, log=say)
            seconds["ann"] = time.perf_counter() - t0
        dba = min(dba, n - 1)
        if dba > 0:
            t0 = time.perf_counter()
            if large:
                say(f"DBA k={dba}: neighbours through the ANN")
                neighbours = ann_neighbours(structure, rows, dba)
                augmented = np.lib.format.open_memmap(work / "dba.npy", mode="w+", dtype=dtype, shape=(n, d))
                augment_with_neighbours(rows, neighbours, alpha=alpha, out=augmented)
                rows = augmented
            else:
                rows = database_augmentation(np.asarray(rows, dtype=np.float32), k=dba, alpha=alpha)
            seconds["dba"] = time.perf_counter() - t0
            if structure is not None:
                t0 = time.perf_counter()
                refill(structure, rows)  # the rows changed; the training stays valid
                seconds["ann"] += time.perf_counter() - t0
        if not use_ann:
            structure = None
        t0 = time.perf_counter()
        meta = {
            "network": network,
            "weights": weights,
            "pipeline": pipeline.to_meta(),
            "thumbnail_side": None,
            "dba": {"k": dba, "alpha": alpha, "neighbours": "ann" if large else "exact"} if dba > 0 else None,
            "query_expansion": {"k": qe, "alpha": alpha} if qe > 0 else None,
            "descriptors": "computed elsewhere (precompute.build_index --vectors)",
            **(extra_meta or {}),
        }
        save_index(out_dir, rows, ids, meta, thumbnails=None, dtype=dtype, ann=structure)
        seconds["save"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"count": n, "dim": d, "ann": structure.to_meta() if structure is not None else None, "seconds": seconds}
