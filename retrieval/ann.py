"""Approximate nearest-neighbour search with FAISS, re-ranked exactly with the stored descriptors.

An `AnnIndex` holds a FAISS index built from a factory string (its own description, e.g.
"PCA256,IVF4096,PQ64") and the two search settings: `nprobe`, the inverted lists visited per
query, and `rerank`, how many candidates the compressed codes propose. The candidates are then
scored exactly against the full descriptors (`features`, any float dtype, typically the index's
memory-mapped float16 matrix: only the candidate rows are read), so the scores returned are
true inner products and the top k is exact whenever it is among the candidates.

FAISS works here with the L2 metric: on L2-normalised rows ||q - x||^2 = 2 - 2 q.x ranks like
the inner product, and unlike the inner product it is unchanged by the mean subtraction of a
PCA stage.

Everything takes and returns (n, d) float32 rows and int64 row numbers; nothing here touches
files except `save_ann` / `load_ann`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from retrieval.rows import read_block, take_rows

ANN_FILE = "ann.faiss"
# Rows converted to float32 at once when a matrix is read in blocks (65536 x 2560 float32 = 670 MB).
BLOCK = 16384
# Training rows: FAISS asks for 39 to 256 per k-means centroid; 64 per list is plenty and keeps
# the k-means of a 1M index at about a minute on 2 cores.
TRAIN_PER_LIST = 64
MIN_TRAIN = 10_000


@dataclass
class AnnIndex:
    """A trained, filled FAISS index over n rows, with its search settings.

    Attributes:
        index: the FAISS index (L2 metric), rows numbered 0..n-1 as in the feature matrix.
        factory: the factory string it was built from.
        nprobe: inverted lists visited per query (IVF indexes).
        rerank: candidates taken from the codes and re-scored exactly, per query.
        build_s: seconds spent training and adding.
    """

    index: faiss.Index
    factory: str
    nprobe: int
    rerank: int
    build_s: float = 0.0

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def to_meta(self) -> dict:
        """Returns the JSON-ready description stored in index.json under "ann"."""
        return {"factory": self.factory, "metric": "l2", "nprobe": self.nprobe, "rerank": self.rerank,
                "count": len(self), "dim": self.dim, "faiss": faiss.__version__, "build_s": round(self.build_s, 3)}

    def candidates(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Returns (m, n) int64 candidate rows per query, best first by the codes; -1 pads a short list."""
        _set_nprobe(self.index, self.nprobe)
        _, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, len(self)))
        return rows

    def search(self, features: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, rows), both (m, k), best first: the ANN's candidates re-ranked exactly.

        Args:
            features: the (n, d) rows the index was built on (memory-mapped is fine).
            queries: (m, d) float32 L2-normalised rows.
            k: 1 to n; at least k candidates are always taken.
        """
        cand = self.candidates(queries, max(k, self.rerank))
        return rerank_exact(features, queries, cand, k)


def default_factory(n: int, d: int) -> str:
    """Returns the index type chosen by measurement (README, "A million images"), sized for n rows.

    PCA to 256 dimensions (or d if smaller) makes the coarse quantiser and the codes cheap to
    train and to scan; about 2 sqrt(n) inverted lists (a power of two, at most 4096 and at
    least 64 training rows each); 8-bit scalar codes (256 bytes a row). PQ codes were as
    accurate after re-ranking but took 10-20x longer to train. The exact re-ranking repairs
    what PCA and quantisation lose; what limits recall is the lists visited (`nprobe`).
    """
    r = min(256, d)
    lists = 2 ** round(math.log2(max(1.0, min(4096.0, 2 * math.sqrt(max(n, 1))))))
    while lists > 1 and lists * TRAIN_PER_LIST > n:
        lists //= 2
    pca = f"PCA{r}," if r < d else ""
    return f"{pca}IVF{lists},SQ8"


def build_ann(
    features: np.ndarray,
    *,
    factory: str | None = None,
    nprobe: int = 128,
    rerank: int = 256,
    seed: int = 0,
    log=None,
) -> AnnIndex:
    """Trains a FAISS index on a sample of `features` and adds every row, in blocks.

    Args:
        features: (n, d) L2-normalised rows of any float dtype; a memory map is read block by block.
        factory: a FAISS factory string; None takes `default_factory(n, d)`.
        nprobe, rerank: the search settings (see `AnnIndex`), chosen on the 1M rows of the
            benchmark (README, "Benchmark: search at scale"): Lite0's descriptors, spread like real
            ones, need 128 lists and 256 candidates for recall@20 >= 0.95 at 1M.
        seed: the training sample.
        log: called with one line per stage.

    Raises:
        ValueError: on an empty matrix or a factory FAISS does not know.
    """
    n, d = features.shape
    if n == 0:
        raise ValueError("cannot build an ANN index of 0 rows")
    factory = factory or default_factory(n, d)
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_L2)
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build {factory!r}: {str(e).splitlines()[0]}") from None
    lists = _nlist(index)
    n_train = min(n, max(MIN_TRAIN, TRAIN_PER_LIST * lists))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    say(f"ann {factory}: training on {n_train} of {n} rows")
    index.train(_rows(features, sample))
    say(f"ann {factory}: adding {n} rows")
    for start in range(0, n, BLOCK):
        index.add(np.ascontiguousarray(features[start : start + BLOCK], dtype=np.float32))
    return AnnIndex(index, factory, nprobe, rerank, build_s=time.perf_counter() - t0)


def refill(ann: AnnIndex, features: np.ndarray) -> AnnIndex:
    """Returns `ann` emptied and filled with `features` again, keeping what it learned (no training)."""
    t0 = time.perf_counter()
    ann.index.reset()
    for start in range(0, len(features), BLOCK):
        ann.index.add(np.ascontiguousarray(features[start : start + BLOCK], dtype=np.float32))
    ann.build_s += time.perf_counter() - t0
    return ann


def copy_trained(ann: AnnIndex) -> AnnIndex:
    """Returns an independent copy of `ann` (same training, same rows)."""
    return AnnIndex(faiss.clone_index(ann.index), ann.factory, ann.nprobe, ann.rerank, ann.build_s)


def rerank_exact(features: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scores, rows), both (m, k): each query's candidates scored exactly, best first.

    Ties go to the lower row. Only the candidate rows of `features` are read.

    Args:
        features: (n, d) rows, any float dtype.
        queries: (m, d) float32 rows.
        candidates: (m, c) int64 rows, -1 for none; c >= k.
        k: results per query.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    m = len(queries)
    scores = np.full((m, k), -np.inf, dtype=np.float32)
    rows = np.full((m, k), -1, dtype=np.int64)
    for i in range(m):
        cand = np.unique(candidates[i][candidates[i] >= 0])  # sorted: reads the file in order
        # einsum, not BLAS: from about 500,000 numbers OpenBLAS wakes its threads for this product,
        # which cost 6 ms a query on two shared cores (256 candidates of 2,560 in the 1M benchmark).
        sims = np.einsum("kd,d->k", take_rows(features, cand).astype(np.float32), queries[i])
        order = np.lexsort((cand, -sims))[:k]
        scores[i, : len(order)], rows[i, : len(order)] = sims[order], cand[order]
    return scores, rows


def exact_search_blocks(features: np.ndarray, queries: np.ndarray, k: int, *,
                        block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scores, rows), both (m, k), best first, by exact inner products over blocks of rows.

    For a matrix too large to widen to float32 at once (a memory-mapped float16 index): each block
    is widened, multiplied with all queries, and its top k merged into the running top k. Ties
    go to the lower row, as `retrieval.search.Searcher` does.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, m = len(features), len(queries)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    best_s = np.full((m, 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((m, 0), dtype=np.int64)
    for start in range(0, n, block):
        sims = queries @ read_block(features, start, start + block).astype(np.float32).T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < sims.shape[1] else \
            np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        best_s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
        best_r = np.concatenate([best_r, part + start], axis=1)
        order = np.lexsort((best_r, -best_s), axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_r, order, axis=1)
    return best_s, best_r


def ann_neighbours(ann: AnnIndex, features: np.ndarray, k: int, *, rerank: int = 16,
                   block: int = 2048, nprobe: int | None = None, with_sims: bool = False):
    """Returns (n, k) int64: every row's k nearest other rows, through the ANN (for DBA and graphs at scale).

    Each row asks the ANN for `rerank` candidates (besides itself), re-scored exactly; batched
    in blocks of rows. Each row visits `nprobe` lists (default: a sixteenth of the search
    setting, at least 8): a million rows then take minutes rather than hours, at the cost of
    some neighbours (DBA weights them by similarity cubed, so a near miss changes little).
    With `with_sims`, returns (rows, sims): also their (n, k) float32 exact inner products,
    -inf where fewer than k candidates were found (row -1).
    """
    search_nprobe = ann.nprobe
    ann.nprobe = nprobe or max(8, ann.nprobe // 16)
    try:
        rows, sims = _neighbours(ann, features, k, rerank, block)
    finally:
        ann.nprobe = search_nprobe
    return (rows, sims) if with_sims else rows


def _neighbours(ann: AnnIndex, features: np.ndarray, k: int, rerank: int, block: int):
    n = len(features)
    out = np.empty((n, k), dtype=np.int64)
    out_sims = np.empty((n, k), dtype=np.float32)
    take = max(k + 1, rerank)
    for start in range(0, n, block):
        rows = read_block(features, start, start + block).astype(np.float32)
        cand = ann.candidates(rows, take)
        own = np.arange(start, start + len(rows))[:, None]
        cand = np.where(cand == own, -1, cand)
        # Exact scores of the candidates, all at once: the block's rows against their own candidates.
        valid = np.maximum(cand, 0)
        uniq, inverse = np.unique(valid, return_inverse=True)
        vecs = take_rows(features, uniq).astype(np.float32)
        sims = np.einsum("md,mcd->mc", rows, vecs[inverse.reshape(valid.shape)])
        sims[cand < 0] = -np.inf
        order = np.lexsort((cand, -sims), axis=1)[:, :k]
        out[start : start + len(rows)] = np.take_along_axis(cand, order, axis=1)
        out_sims[start : start + len(rows)] = np.take_along_axis(sims, order, axis=1)
    return out, out_sims


def save_ann(ann: AnnIndex, path) -> None:
    """Writes the FAISS index in FAISS's own format."""
    faiss.write_index(ann.index, str(path))


def load_ann(path, meta: dict) -> AnnIndex:
    """Returns the ANN stored at `path`, with the settings recorded in `meta` (index.json's "ann").

    Raises:
        ValueError: when FAISS cannot read the file.
    """
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot read {path}: {str(e).splitlines()[0]}") from None
    return AnnIndex(index, str(meta["factory"]), int(meta["nprobe"]), int(meta["rerank"]),
                    float(meta.get("build_s", 0.0)))


def _rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), BLOCK):
        out[start : start + BLOCK] = features[rows[start : start + BLOCK]]
    return out


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _nlist(index: faiss.Index) -> int:
    ivf = _ivf(index)
    return int(ivf.nlist) if ivf is not None else 1


def _set_nprobe(index: faiss.Index, nprobe: int) -> None:
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    hnsw = getattr(inner, "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(nprobe, 16)
