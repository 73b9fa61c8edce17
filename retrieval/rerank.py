"""Query-time and database-side re-ranking of global descriptors: alpha query expansion and DBA.

Both replace a vector by the weighted sum of itself and its nearest neighbours, each neighbour
weighted by its cosine similarity raised to the power alpha (Radenović et al., "Fine-tuning CNN
image retrieval with no human annotation", TPAMI 2018). The vector itself always takes part with
weight 1 (its similarity to itself); ``k`` counts the neighbours added to it. Negative
similarities are clamped to 0 so that a dissimilar neighbour can never push the vector away.

Everything here is pure numpy: (n, d) float32 rows in, L2-normalised (n, d) float32 rows out.
"""

from __future__ import annotations

import numpy as np

from retrieval.rows import RowSource, take_rows
from retrieval.search import as_rows, l2_normalize

# Rows of the database similarity matrix computed at once: 1024 x n float32 stays small.
_BLOCK = 1024


def _check(k, alpha) -> int:
    if isinstance(k, bool) or not float(k).is_integer() or k < 0:
        raise ValueError(f"k must be a whole number >= 0, got {k!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return int(k)


def _weighted_sum(centres: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """Returns (m, d) rows centre + sum_j max(centre . nb_j, 0)^alpha nb_j, L2-normalised.

    Args:
        centres: (m, d) L2-normalised rows.
        neighbours: (m, k, d) the neighbours of each centre.
    """
    sims = np.einsum("md,mkd->mk", centres, neighbours)
    weights = np.power(np.maximum(sims, 0.0), alpha).astype(np.float32)
    return l2_normalize(centres + np.einsum("mk,mkd->md", weights, neighbours))


def alpha_query_expansion(queries: np.ndarray, db: np.ndarray, ranks: np.ndarray, *, k: int,
                          alpha: float = 3.0) -> np.ndarray:
    """Returns (m, d) float32 L2-normalised expanded queries (alpha query expansion, αQE).

    Each query becomes normalise(q + sum over its top-k database rows x of max(q . x, 0)^alpha x).
    Search again with the result.

    Args:
        queries: (m, d) L2-normalised query descriptors.
        db: (n, d) L2-normalised database descriptors, the ones `ranks` was computed on.
        ranks: (m, >= k) integer database rows per query, best first (a first search).
        k: how many top database rows expand each query; 0 returns the queries normalised.
        alpha: the similarity exponent.

    Raises:
        ValueError: on a negative k, k larger than the ranking, or mismatched shapes.
    """
    k = _check(k, alpha)
    queries = as_rows(queries, name="queries")
    if not isinstance(db, (np.ndarray, RowSource)) or db.ndim != 2:
        db = as_rows(db, name="database")  # a (memory-mapped) matrix or a RowSource is read only at the rows ranked
    ranks = np.asarray(ranks)
    if queries.shape[1] != db.shape[1]:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the database's {db.shape[1]}")
    if ranks.ndim != 2 or ranks.shape[0] != len(queries) or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be ({len(queries)}, n_ranked) integers, got {ranks.dtype} {ranks.shape}")
    if k > ranks.shape[1]:
        raise ValueError(f"k = {k} exceeds the {ranks.shape[1]} ranked rows per query")
    if k == 0:
        return l2_normalize(queries)
    top = np.asarray(ranks[:, :k])
    ranked = take_rows(db, top.reshape(-1)).astype(np.float32).reshape(*top.shape, -1)
    if not np.isfinite(ranked).all():  # a memory-mapped database is checked only at the rows read
        raise ValueError("database holds NaN or infinite values (in the ranked rows)")
    return _weighted_sum(queries, ranked, alpha)


def database_augmentation(db: np.ndarray, *, k: int, alpha: float = 3.0) -> np.ndarray:
    """Returns (n, d) float32 L2-normalised augmented database rows (database-side augmentation, DBA).

    Each row x becomes normalise(x + sum over its k nearest other rows y of max(x . y, 0)^alpha y),
    neighbours found by exact inner product. Queries are then searched against the result.

    Args:
        db: (n, d) L2-normalised database descriptors.
        k: neighbours added to each row, besides itself; 0 returns the rows normalised.
        alpha: the similarity exponent.

    Raises:
        ValueError: on a negative k or k >= n.
    """
    k = _check(k, alpha)
    db = as_rows(db, name="database")
    if k >= len(db):
        raise ValueError(f"k = {k} must be smaller than the {len(db)} database rows")
    if k == 0:
        return l2_normalize(db)
    out = np.empty_like(db)
    for start in range(0, len(db), _BLOCK):
        block = db[start : start + _BLOCK]
        sims = block @ db.T
        # The row itself takes part once, with weight 1, not as one of its k neighbours.
        sims[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + len(block)] = _weighted_sum(block, db[part], alpha)
    return out


def augment_with_neighbours(db: np.ndarray, neighbours: np.ndarray, *, alpha: float = 3.0,
                            out: np.ndarray | None = None, block: int = 8192) -> np.ndarray:
    """Returns DBA rows from neighbours found elsewhere (an ANN, for a database too large for all pairs).

    Row i becomes normalise(x_i + sum_j max(x_i . x_j, 0)^alpha x_j) over its given neighbours j,
    as `database_augmentation` does with exact ones. Read and written block by block.

    Args:
        db: (n, d) L2-normalised rows, any float dtype (a memory map is fine).
        neighbours: (n, k) int64 rows of each row's neighbours, itself excluded; -1 marks a missing
            one (an approximate search that found fewer than k), which adds nothing.
        out: an (n, d) array to write into (e.g. a memory map); None allocates float32.
    """
    neighbours = np.asarray(neighbours)
    if neighbours.ndim != 2 or len(neighbours) != len(db):
        raise ValueError(f"neighbours must be ({len(db)}, k), got {neighbours.shape}")
    if neighbours.size and not np.issubdtype(neighbours.dtype, np.integer):
        raise ValueError(f"neighbours must be integer rows, got {neighbours.dtype}")
    if neighbours.size and (neighbours.min() < -1 or neighbours.max() >= len(db)):
        raise ValueError(f"neighbour rows must be in [-1, {len(db)})")
    _check(neighbours.shape[1], alpha)
    out = np.empty(db.shape, dtype=np.float32) if out is None else out
    for start in range(0, len(db), block):
        centres = np.asarray(db[start : start + block], dtype=np.float32)
        nb = neighbours[start : start + block]
        missing = nb < 0
        # Sorted unique rows: a memory map is read in order, once each, by take_rows.
        uniq, inverse = np.unique(np.where(missing, 0, nb), return_inverse=True)
        vecs = take_rows(db, uniq).astype(np.float32)[inverse.reshape(nb.shape)]
        vecs[missing] = 0.0
        out[start : start + len(centres)] = _weighted_sum(centres, vecs, alpha)
    return out
