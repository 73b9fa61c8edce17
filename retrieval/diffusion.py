"""Diffusion re-ranking on the database's k-nearest-neighbour graph (Iscen et al., CVPR 2017).

The database is a graph: each image is joined to its mutual nearest neighbours by an edge of
weight max(x . y, 0)^gamma. A query seeds the graph with its top `seeds` database images (weight:
their similarity^gamma) and the ranking score is the stationary state of a random walk with
restart, f = (I - alpha S)^-1 y, where S = D^-1/2 A D^-1/2 is the symmetrically normalised
affinity matrix. f is found by conjugate gradient: I - alpha S is symmetric positive definite
for alpha < 1. An image that is far from the query but close to its neighbours, as another view
of the same building is, rises; a look-alike without such support falls.

Two changes keep a place with few photos from being buried (`DiffusionSettings`; measured in
docs/evaluation.md, "Few photos"). With S = D^-1/2 A D^-1/2, f carries a factor of about
sqrt(degree): an image inside a large, tight cluster of another place collects more than the
query's own few photos, which have few edges. `degree_power` divides f by degree^p, each image
joined to itself (`self_loops`) so that no degree is 0. `blend` mixes the diffusion score, relative
to the best, with the query's own similarity.

The graph is built once, offline (`build_graph`, exact kNN in blocks), or from any kNN
structure through `graph_from_knn` (an approximate search at 1M images). Where no graph is stored
(rows served from a Milvus collection), `CandidateDiffusion` builds the candidates' own graph at
query time and runs the same truncated diffusion on it. Everything here is
numpy and scipy.sparse: (n, d) float32 rows in, rankings out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse

from retrieval.rows import take_rows
from retrieval.search import as_rows

# Rows of the database similarity matrix computed at once when the kNN are exact.
_BLOCK = 1024


@dataclass(frozen=True)
class Graph:
    """The database's symmetric affinity matrix A as CSR arrays (no self loops).

    Attributes:
        indptr: (n + 1,) int64 row offsets.
        indices: (nnz,) int32 column of each edge.
        weights: (nnz,) float32 affinity max(x . y, 0)^gamma of each edge, > 0.
        k: neighbours per image the graph was built from.
        gamma: the similarity exponent of the affinities.
        mutual: whether only mutual neighbours are joined.
        knn: where the neighbours came from ("exact" or the name of an approximate search).
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    k: int
    gamma: float
    mutual: bool = True
    knn: str = "exact"

    def __post_init__(self):
        check_graph_arrays(self.indptr, self.indices, self.weights)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def affinity(self) -> sparse.csr_matrix:
        """Returns A as an (n, n) float32 scipy CSR matrix."""
        n = len(self)
        return sparse.csr_matrix((self.weights, self.indices, self.indptr), shape=(n, n))

    def to_meta(self) -> dict:
        """Returns the JSON-ready description stored in an index."""
        return {"k": self.k, "gamma": self.gamma, "mutual": self.mutual, "knn": self.knn, "count": len(self),
                "edges": self.nnz}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"indptr": self.indptr, "indices": self.indices, "weights": self.weights}


def check_graph_arrays(indptr, indices, weights) -> None:
    """Refuses CSR arrays that are not a symmetric affinity matrix with positive finite weights.

    Raises:
        ValueError: saying which property fails.
    """
    indptr, indices, weights = np.asarray(indptr), np.asarray(indices), np.asarray(weights)
    if indptr.ndim != 1 or len(indptr) < 2 or indptr.dtype != np.int64:
        raise ValueError(f"graph indptr must be (n + 1,) int64, got {indptr.dtype} {indptr.shape}")
    n = len(indptr) - 1
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
        raise ValueError("graph indptr does not describe the edge arrays")
    if indices.ndim != 1 or indices.dtype != np.int32 or weights.shape != indices.shape or weights.dtype != np.float32:
        raise ValueError(f"graph edges must be int32 indices and float32 weights of one length, got "
                         f"{indices.dtype} {indices.shape} and {weights.dtype} {weights.shape}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"graph edge points outside the {n} images")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError("graph weights must be finite and positive")
    a = sparse.csr_matrix((weights, indices, indptr), shape=(n, n))
    if a.diagonal().any():
        raise ValueError("graph has self loops")
    if a.nnz and abs(a - a.T).max() > 1e-6:
        raise ValueError("graph is not symmetric")


def exact_knn(db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns each row's k nearest other rows by inner product: (n, k) int64 rows and (n, k) float32 sims.

    Computed in blocks of rows, so memory stays at block x n; O(n^2 d) time, for what fits.

    Raises:
        ValueError: unless 1 <= k < n.
    """
    db = as_rows(db, name="database")
    n = len(db)
    if isinstance(k, bool) or not 1 <= int(k) < n:
        raise ValueError(f"k must be between 1 and {n - 1} (n - 1), got {k!r}")
    k = int(k)
    rows = np.empty((n, k), np.int64)
    sims = np.empty((n, k), np.float32)
    for start in range(0, n, _BLOCK):
        block = db[start : start + _BLOCK] @ db.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(block, part, axis=1)
        _lowest_rows_at_the_cut(block, part, part_sims)
        order = np.lexsort((part, -part_sims), axis=1)
        rows[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        sims[start : start + len(block)] = np.take_along_axis(part_sims, order, axis=1)
    return rows, sims


def _lowest_rows_at_the_cut(block: np.ndarray, part: np.ndarray, part_sims: np.ndarray) -> None:
    """Makes ties at the k-th place keep the lowest rows, as a full stable sort would, in place.

    argpartition picks any of the rows tied with the k-th similarity; a row whose tied values
    outside the partition exist gets its partition rebuilt: every row above the k-th value, then
    the lowest-numbered rows equal to it.
    """
    k = part.shape[1]
    cut = part_sims.min(axis=1)
    ties = np.count_nonzero(block == cut[:, None], axis=1)
    ambiguous = np.flatnonzero(ties > np.count_nonzero(part_sims == cut[:, None], axis=1))
    for i in ambiguous:
        above = np.flatnonzero(block[i] > cut[i])
        chosen = np.r_[above, np.flatnonzero(block[i] == cut[i])[: k - len(above)]]
        part[i] = chosen
        part_sims[i] = block[i, chosen]


def graph_from_knn(rows: np.ndarray, sims: np.ndarray, *, gamma: float = 3.0, mutual: bool = True,
                   knn: str = "exact") -> Graph:
    """Returns the affinity graph of a kNN list: the hook for any (exact or approximate) neighbour search.

    Args:
        rows: (n, k) integer neighbours of each of the n images (self entries are ignored;
            -1 marks a missing neighbour, as approximate searches return).
        sims: (n, k) their inner products.
        gamma: edge weight max(sim, 0)^gamma.
        mutual: join i and j only when each is in the other's list (else when either is).
        knn: recorded as the graph's source.

    Raises:
        ValueError: on mismatched shapes, rows out of range or a bad gamma.
    """
    rows = np.asarray(rows)
    sims = np.asarray(sims, dtype=np.float32)
    if rows.ndim != 2 or rows.shape != sims.shape or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows and sims must be (n, k), integers and floats, got {rows.shape} {sims.shape}")
    if not np.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    n, k = rows.shape
    if rows.size and (rows.max() >= n or rows.min() < -1):
        raise ValueError(f"neighbour rows must be in [-1, {n})")
    src = np.repeat(np.arange(n), k).reshape(n, k)
    dst = rows.astype(np.int64)
    w = np.power(np.maximum(sims, 0.0), gamma).astype(np.float32)
    valid = (dst >= 0) & (dst != src) & (w > 0)
    # Within each row, a neighbour listed twice (an approximate search may repeat one) is kept once,
    # at its largest weight: sorted by neighbour, then by weight, the first of each run is kept.
    dst = np.where(valid, dst, n)
    order = np.lexsort((-w, dst), axis=1)
    dst, w = np.take_along_axis(dst, order, axis=1), np.take_along_axis(w, order, axis=1)
    first = np.ones((n, k), bool)
    first[:, 1:] = dst[:, 1:] != dst[:, :-1]
    keep = first & (dst < n)
    # The directed kNN matrix, then mutual = min with its transpose (else max).
    a = sparse.csr_matrix((w[keep], (src[keep], dst[keep])), shape=(n, n))
    a = a.minimum(a.T) if mutual else a.maximum(a.T)
    a = sparse.csr_matrix(a, dtype=np.float32)
    a.eliminate_zeros()
    a.sort_indices()
    return Graph(a.indptr.astype(np.int64), a.indices.astype(np.int32), a.data.astype(np.float32),
                 k=int(k), gamma=float(gamma), mutual=bool(mutual), knn=knn)


def build_graph(db: np.ndarray, *, k: int, gamma: float = 3.0, mutual: bool = True) -> Graph:
    """Returns the mutual kNN affinity graph of (n, d) L2-normalised rows, neighbours found exactly.

    k is capped at n - 1 for a tiny database.
    """
    db = as_rows(db, name="database")
    if len(db) < 2:
        raise ValueError("a graph needs at least two images")
    return graph_from_knn(*exact_knn(db, min(k, len(db) - 1)), gamma=gamma, mutual=mutual)


def with_self_loops(affinity: sparse.spmatrix) -> sparse.csr_matrix:
    """Returns A + I (float32 CSR): each image joined to itself with the weight of a perfect match, 1."""
    return sparse.csr_matrix(affinity + sparse.identity(affinity.shape[0], dtype=np.float32, format="csr"),
                             dtype=np.float32)


def degrees(affinity: sparse.spmatrix) -> np.ndarray:
    """Returns (n,) float32 row sums of an affinity matrix."""
    return np.asarray(affinity.sum(axis=1), dtype=np.float32).ravel()


def normalized(affinity: sparse.spmatrix) -> sparse.csr_matrix:
    """Returns S = D^-1/2 A D^-1/2 (float32 CSR); an isolated image keeps a zero row."""
    a = sparse.csr_matrix(affinity, dtype=np.float32)
    degree = np.asarray(a.sum(axis=1)).ravel()
    scale = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=scale, where=degree > 0)
    scale = scale.astype(np.float32)
    # Each stored entry A_ij times scale_i scale_j: the two diagonal products without building them.
    row_of_entry = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    return sparse.csr_matrix((a.data * scale[row_of_entry] * scale[a.indices], a.indices.copy(), a.indptr.copy()),
                             shape=a.shape, dtype=np.float32)


def conjugate_gradient(s: sparse.spmatrix, y: np.ndarray, *, alpha: float, iterations: int = 20,
                       tol: float = 1e-6) -> np.ndarray:
    """Returns f solving (I - alpha S) f = y, by at most `iterations` conjugate-gradient steps from f = y.

    Args:
        s: (n, n) symmetric normalised affinity (eigenvalues in [-1, 1]).
        y: (n,) or (n, m) right-hand sides; columns are solved together.
        alpha: in [0, 1), so that I - alpha S is positive definite.
        tol: stop when every residual is below tol times its right-hand side's norm.
    """
    y = np.asarray(y, dtype=np.float32)
    f = y.copy()
    r = y - (f - alpha * (s @ f))
    p = r.copy()
    rs = np.einsum("i...,i...->...", r, r)
    target = tol * tol * np.maximum(np.einsum("i...,i...->...", y, y), 1e-30)
    for _ in range(iterations):
        if np.all(rs <= target):
            break
        mp = p - alpha * (s @ p)
        step = rs / np.maximum(np.einsum("i...,i...->...", p, mp), 1e-30)
        f += step * p
        r -= step * mp
        rs_new = np.einsum("i...,i...->...", r, r)
        p = r + (rs_new / np.maximum(rs, 1e-30)) * p
        rs = rs_new
    return f


@dataclass(frozen=True)
class DiffusionSettings:
    """Settings of diffusion: the graph's (k, gamma) and the query's.

    Attributes:
        k: neighbours per database image when the graph is built.
        seeds: the query's top `seeds` database images seed the diffusion.
        alpha: restart weight in [0, 1): closer to 1 spreads further along the graph.
        gamma: similarity exponent of the graph's edges and of the seeds' weights.
        candidates: the first ranking's top `candidates` are re-ranked by their diffusion
            score; the rest keep their order after them.
        truncate: diffuse over the candidates' own subgraph only (Iscen's truncated variant,
            for large databases), instead of the whole graph.
        iterations: conjugate-gradient steps at most.
        self_loops: join each image to itself with weight 1 before normalising.
        degree_power: divide each diffusion score by the image's degree (in the graph diffused
            over) to this power; 0 for none. Needs `self_loops` (no degree is then 0).
        blend: the ranking score is blend x diffusion score / the best one + (1 - blend) x the
            query's similarity to the image as the first ranking scored it (after αQE); 1 for
            diffusion alone.
        seed_ratio: query-adaptive seeds: of the top `seeds`, only those whose similarity is at
            least seed_ratio x the best one's seed (the first always does); 0 for all of them.

    The defaults of the last four are diffusion as it was before them, so that an index whose
    index.json does not name them ranks as it did.
    """

    k: int = 20
    seeds: int = 10
    alpha: float = 0.95
    gamma: float = 3.0
    candidates: int = 1000
    truncate: bool = False
    iterations: int = 20
    self_loops: bool = False
    degree_power: float = 0.0
    blend: float = 1.0
    seed_ratio: float = 0.0

    def __post_init__(self):
        for name in ("k", "seeds", "candidates", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not float(value).is_integer() or value < 1:
                raise ValueError(f"diffusion {name} must be a whole number >= 1, got {value!r}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"diffusion alpha must be in [0, 1), got {self.alpha!r}")
        if not np.isfinite(self.gamma) or self.gamma <= 0:
            raise ValueError(f"diffusion gamma must be positive, got {self.gamma!r}")
        if self.candidates < self.seeds:
            raise ValueError(f"diffusion candidates ({self.candidates}) must be at least seeds ({self.seeds})")
        if not 0 <= self.degree_power <= 1:
            raise ValueError(f"diffusion degree_power must be in [0, 1], got {self.degree_power!r}")
        if self.degree_power > 0 and not self.self_loops:
            raise ValueError("diffusion degree_power needs self_loops: an image without edges has degree 0")
        if not 0 <= self.blend <= 1:
            raise ValueError(f"diffusion blend must be in [0, 1], got {self.blend!r}")
        if not 0 <= self.seed_ratio <= 1:
            raise ValueError(f"diffusion seed_ratio must be in [0, 1], got {self.seed_ratio!r}")

    def to_meta(self) -> dict:
        return {"k": self.k, "seeds": self.seeds, "alpha": self.alpha, "gamma": self.gamma, "candidates": self.candidates,
                "truncate": self.truncate, "iterations": self.iterations, "self_loops": self.self_loops,
                "degree_power": self.degree_power, "blend": self.blend, "seed_ratio": self.seed_ratio}

    @classmethod
    def from_meta(cls, meta: dict) -> DiffusionSettings:
        return cls(**meta)


class Diffusion:
    """Re-ranks first rankings by diffusion over a database graph; the one implementation that
    the engine and the evaluation share.

    Args:
        graph: the database's `Graph`.
        settings: `DiffusionSettings`.
    """

    def __init__(self, graph: Graph, settings: DiffusionSettings):
        self.graph, self.settings = graph, settings
        self._affinity = graph.affinity()
        if not settings.truncate:  # the whole graph's S is diffused over by every query: made once
            whole = with_self_loops(self._affinity) if settings.self_loops else self._affinity
            self._s, self._degrees = normalized(whole), degrees(whole)

    def __len__(self) -> int:
        return len(self.graph)

    @property
    def needs(self) -> int:
        """How many rows of the first ranking `rerank` reads."""
        return min(self.settings.candidates, len(self))

    def scores(self, rows: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Returns the diffusion scores of the first ranking's top `needs` rows (of all of a shorter
        ranking: an ANN that found fewer rows than asked).

        Args:
            rows: database rows of the query's first ranking, best first.
            sims: the query's similarity to each of the first `seeds` rows (or more).
        """
        cfg = self.settings
        rows = np.asarray(rows, dtype=np.int64)
        sims = np.asarray(sims, dtype=np.float32)
        seeds = min(cfg.seeds, len(rows), len(sims))
        if cfg.seed_ratio and seeds:
            seeds = max(1, int(np.count_nonzero(sims[:seeds] >= cfg.seed_ratio * sims[0])))
        weights = np.power(np.maximum(sims[:seeds], 0.0), cfg.gamma)
        candidates = rows[: self.needs]
        if cfg.truncate:
            y = np.zeros(len(candidates), np.float32)
            y[:seeds] = weights
            sub = self.subgraph(candidates)
            if cfg.self_loops:
                sub = with_self_loops(sub)
            f = conjugate_gradient(normalized(sub), y, alpha=cfg.alpha, iterations=cfg.iterations)
            degree = degrees(sub) if cfg.degree_power else None
        else:
            y = np.zeros(len(self), np.float32)
            y[rows[:seeds]] = weights
            f = conjugate_gradient(self._s, y, alpha=cfg.alpha, iterations=cfg.iterations)[candidates]
            degree = self._degrees[candidates] if cfg.degree_power else None
        if degree is not None:
            f = (f / np.power(degree, cfg.degree_power)).astype(np.float32)
        return f

    def subgraph(self, candidates: np.ndarray) -> sparse.csr_matrix:
        """Returns the (c, c) affinity among `candidates`, (c,) rows: the truncated diffusion's graph."""
        return self._affinity[candidates][:, candidates]

    def rerank(self, rows: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Returns the query's ranking after diffusion, the same length as `rows`, best first.

        The top `candidates` rows are ordered by diffusion score, ties (images the diffusion
        does not reach) in their first order; the rest follow unchanged.

        Args:
            rows: (m,) database rows of the first ranking, best first, m >= `needs`.
            sims: (>= seeds,) the query's similarity to the first rows.
        """
        return self.ranked(rows, sims)[0]

    def ranked(self, rows: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns `rerank`'s ranking and (m,) float32 ranking scores, decreasing.

        With `blend` 1 the scores are the diffusion scores relative to the best (1.0), and 0 for the
        rows after the candidates. Below 1 they are blend x that + (1 - blend) x the similarity,
        and the rows after the candidates keep (1 - blend) x their similarity: `sims` must then
        hold the similarity of every row given.
        """
        rows = np.asarray(rows, dtype=np.int64)
        f = self.scores(rows, sims)
        top = f.max() if len(f) else 0.0
        key = f / top if top > 0 else f  # orders as f does
        relative = np.maximum(key, 0.0) if top > 0 else np.zeros_like(f)
        blend = self.settings.blend
        if blend < 1:
            sims = np.asarray(sims, dtype=np.float32)
            if len(sims) < len(rows):
                raise ValueError(f"blending needs the similarity of each of the {len(rows)} rows, got {len(sims)}")
            key = relative = (blend * relative + (1 - blend) * sims[: len(f)]).astype(np.float32)
        order = np.argsort(-key, kind="stable")
        scores = np.zeros(len(rows), np.float32)
        scores[: len(order)] = relative[order]
        if blend < 1:
            scores[len(order):] = (1 - blend) * sims[len(order): len(rows)]
        return np.concatenate([rows[: self.needs][order], rows[self.needs :]]), scores


class CandidateDiffusion(Diffusion):
    """Truncated diffusion over the candidates' own graph, built at query time from their vectors.

    Where no graph of the whole database is stored (a Milvus collection of 100M images, whose
    rows the serving machine does not hold), the first ranking's top `candidates` rows are joined
    to their mutual k nearest neighbours among themselves (exact: candidates x candidates inner
    products, with the settings' k and gamma), and `Diffusion`'s truncated diffusion runs on that
    graph: seeds, self loops, degree power and blend as for the stored graph's subgraph. The two
    graphs differ only in where each candidate's k neighbours were looked for: among the
    candidates here, among the whole database there (then cut to the candidates).

    Args:
        rows: (n, d) rows or a `retrieval.rows.RowSource` (a Milvus collection), read only at the
            candidates (`take_rows`).
        settings: `DiffusionSettings`; `truncate` is implied (there is no whole graph to diffuse over).
    """

    def __init__(self, rows, settings: DiffusionSettings):
        self.rows, self.graph = rows, None
        self.settings = replace(settings, truncate=True)

    def __len__(self) -> int:
        return len(self.rows)

    def subgraph(self, candidates: np.ndarray) -> sparse.csr_matrix:
        """Returns the (c, c) mutual kNN affinity of the c candidates' vectors."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if len(candidates) < 2:
            return sparse.csr_matrix((len(candidates), len(candidates)), dtype=np.float32)
        vectors = as_rows(take_rows(self.rows, candidates), name="candidates")
        k = min(self.settings.k, len(candidates) - 1)
        return graph_from_knn(*exact_knn(vectors, k), gamma=self.settings.gamma).affinity()
