"""Nearest-neighbour search over L2-normalised descriptors: a KD-tree, exact inner products, FAISS (ANN)
or a Milvus collection."""

from __future__ import annotations

import numbers

import numpy as np

BACKENDS = ("kdtree", "exact", "ann", "milvus")
# Rows scoring within this of the k-th best are candidates too: the backends' arithmetic may
# order them differently, and the final order is decided on scores computed the same way.
TIE_TOLERANCE = 1e-5


class SearchUnavailable(RuntimeError):
    """The search backend (a Milvus server) did not answer; the query may succeed later."""


def as_rows(x: np.ndarray, *, name: str = "array") -> np.ndarray:
    """Returns `x` as a C-contiguous (n, d) float32 array; a (d,) vector becomes (1, d).

    Raises:
        ValueError: if `x` is not one- or two-dimensional or holds NaN or infinity.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be (n, d) rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def l2_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Returns the (n, d) float32 rows of `x` scaled to unit L2 norm (zero rows stay zero)."""
    x = as_rows(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


class Searcher:
    """Finds the k database rows with the highest inner product with each query.

    Both backends rank by inner product. On L2-normalised rows the KD-tree's Euclidean
    ranking is the same, since ||q - x||^2 = 2 - 2 q.x.

    Tie order, the same for both: score descending, then row ascending. The score is the
    float32 inner product, computed for the final candidates by one routine (`_best_first`),
    so duplicate rows and equal scores come out in row order from either backend, also at the
    k-th place. Each backend gathers its candidates (the k best plus every row within
    `TIE_TOLERANCE` of the k-th) with its own arithmetic: float64 distances in the tree, one
    float32 matrix product for `exact`. The two return the same rows and scores unless that
    arithmetic misjudges a score by more than 1e-5, far above float32 rounding on unit rows.

    Args:
        features: (n, d) database rows, L2-normalised for the KD-tree to agree with `exact`.
        backend: "kdtree" (scikit-learn's KDTree, as the design asks) or "exact" (one matrix
            product in numpy; faster in high dimensions).
        leaf_size: KD-tree leaf size.
        ann: for "ann", a `retrieval.ann.AnnIndex` built on `features`; None builds one here.
        milvus: for "milvus", the `retrieval.milvus.MilvusRows` of a collection, which `features`
            then is too: it searches the collection and reads rows from it.

    A memory-mapped `features` (a large index, see `retrieval.index.load_index`) is not read
    into memory by "exact" and "ann": exact search widens one block of rows at a time, the ANN
    reads only its candidates. The KD-tree always needs the rows in memory.
    """

    def __init__(self, features: np.ndarray, *, backend: str = "kdtree", leaf_size: int = 40, ann=None,
                 milvus=None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown search backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if (backend == "milvus") != (milvus is not None):
            raise ValueError("the milvus backend searches a collection: give milvus=MilvusRows, and only with it")
        self.milvus = milvus
        mapped = (isinstance(features, np.memmap) and backend != "kdtree") or milvus is not None
        self.features = features if mapped else as_rows(features, name="features")
        self._blocks = mapped and backend == "exact"
        if len(self.features) == 0:
            raise ValueError("cannot search an empty index")
        self.backend = backend
        # KDTree works in float64 internally; it copies the matrix once here, not per query.
        if backend == "kdtree":
            from sklearn.neighbors import KDTree  # scikit-learn only for this backend: a second at import

            self._tree = KDTree(self.features, leaf_size=leaf_size)
        else:
            self._tree = None
        self.ann = None
        if backend == "ann":
            from retrieval.ann import build_ann

            self.ann = ann if ann is not None else build_ann(self.features)
            if len(self.ann) != len(self.features) or self.ann.dim != self.dim:
                raise ValueError(f"the ANN index holds {len(self.ann)} rows of dimension {self.ann.dim}, "
                                 f"the features {len(self.features)} of dimension {self.dim}")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def check_k(self, k) -> int:
        """Returns `k` as an int, refusing anything outside 1..n."""
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not float(k).is_integer():
            raise ValueError(f"k must be a whole number, got {k!r}")
        k = int(k)
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be between 1 and {len(self)} (the index size), got {k}")
        return k

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, rows), both (m, k), best first; scores are inner products (float32).

        Args:
            queries: (m, d) or (d,) query rows.
            k: how many neighbours, 1 to n.

        Raises:
            ValueError: on a bad k or a query of the wrong dimension.
        """
        k = self.check_k(k)
        queries = as_rows(queries, name="queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} does not match the index dimension {self.dim}")
        if self.milvus is not None:
            return self.milvus.search(queries, k)
        if self.ann is not None or self._blocks:
            from retrieval.ann import exact_search_blocks

            if self.ann is not None:
                return self.ann.search(self.features, queries, k)
            return exact_search_blocks(self.features, queries, k)
        if k == len(self):
            return _best_first(self.features, queries, [None] * len(queries), k)
        if self._tree is not None:
            dist, near = self._tree.query(queries, k=k + 1)
            # ||q - x||^2 = 2 - 2 q.x: a score tolerance t is a squared-distance tolerance 2t.
            reach = np.sqrt(dist[:, k - 1] ** 2 + 2 * TIE_TOLERANCE)
            candidates = [
                np.sort(self._tree.query_radius(q[None], r)[0]) if dist[i, k] <= r else near[i, :k]
                for i, (q, r) in enumerate(zip(queries, reach))
            ]
            return _best_first(self.features, queries, candidates, k)
        sims = queries @ self.features.T
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        candidates = [np.flatnonzero(s >= t - TIE_TOLERANCE) for s, t in zip(sims, kth)]
        return _best_first(self.features, queries, candidates, k)

    def rank_all(self, queries: np.ndarray) -> np.ndarray:
        """Returns (m, n) database rows ordered best first for each query, for evaluation."""
        return self.search(queries, len(self))[1]


def _best_first(features: np.ndarray, queries: np.ndarray, candidates: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scores, rows), (m, k), of each query's k best candidate rows in the tie order.

    Args:
        features: (n, d) database rows.
        queries: (m, d) query rows.
        candidates: per query, the database rows to choose from, or None for all of them.
        k: how many to keep, at most the number of candidates.
    """
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for i, (q, cand) in enumerate(zip(queries, candidates)):
        # One einsum per row, never a matrix product: identical rows get identical scores.
        if cand is None:
            cand, s = np.arange(len(features)), np.einsum("kd,d->k", features, q)
        else:
            s = np.einsum("kd,d->k", features[cand], q)
        order = np.lexsort((cand, -s))[:k]
        scores[i], rows[i] = s[order], cand[order]
    return scores, rows
