"""The one query path: what turns a query descriptor into a ranking, for the app's engine and the evaluation alike.

    first ranking (the search backend) -> alpha query expansion -> second ranking -> diffusion
      -> the indexed image itself first, when the query is one

`SearchEngine` (the app, both APIs) and `retrieval.evaluation` (the published mAP) both rank
through `QueryPath.rank`, so the numbers the README shows are those of the code the app serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from retrieval.diffusion import Diffusion
from retrieval.rerank import alpha_query_expansion
from retrieval.rows import take_rows
from retrieval.search import Searcher

# A query is an indexed image when its cosine with that image's row is the image's own, to within
# this. Measured on the 409 Paris photos with Lite0 (float16 rows, DBA 3): each photo sent as a file
# is within 4e-7 of its own; the float32 runtimes agree to 2e-7 (results/runtime_check.json); the
# closest any other row came to its own cosine was 4.6e-4.
DUPLICATE_TOLERANCE = 1e-4
# The query's nearest rows looked at for its duplicate (with DBA, a neighbour's row can come first).
DUPLICATE_CANDIDATES = 8


def self_similarity(own: np.ndarray, stored: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Returns (n,) float32: each row of `own` (the images' descriptors) dotted with its row of
    `stored` as saved in `dtype`; the cosine at which a query is the indexed image itself."""
    rows = np.asarray(stored).astype(dtype).astype(np.float32)
    return np.einsum("ij,ij->i", np.asarray(own, dtype=np.float32), rows).astype(np.float32)


def similarities(query: np.ndarray, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Returns (len(rows),) float32: the cosine of a (d,) L2-normalised query and each of `rows`
    of (n, d) L2-normalised features, read as stored (float16 rows are widened first)."""
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    return (take_rows(features, rows).astype(np.float32) @ np.asarray(query, dtype=np.float32).ravel()).astype(np.float32)


def found(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns one query's (1, k) scores and rows without the -1 rows (and their scores) that an ANN
    pads a short list with: a -1 would index the last row of every array it reaches."""
    keep = rows[0] >= 0
    return (scores, rows) if keep.all() else (scores[:, keep], rows[:, keep])


@dataclass
class Ranked:
    """One query's ranking: (depth,) rows best first, their ranking scores, the row of the indexed
    image the query is (put first) or None, the best similarity, and the similarities.

    `similarities` are the cosines of the query descriptor (as given, before αQE) and each
    row as stored: what a person can read as "how alike". `scores` order the list: the same
    cosines without re-ranking, else the expanded query's cosines or the diffusion's scores.
    The similarities are computed when first read: an evaluation ranks whole databases and never
    reads them.
    """

    rows: np.ndarray
    scores: np.ndarray
    same: int | None
    best: float  # the query's highest cosine with any row (the first search's top), whatever the order
    query: np.ndarray = field(repr=False)
    features: np.ndarray = field(repr=False)

    @cached_property
    def similarities(self) -> np.ndarray:
        """(depth,) float32 cosines of the query and each row as stored."""
        return similarities(self.query, self.features, self.rows)


def put_first(rows: list[int], scores: list[float], row: int | None) -> tuple[list[int], list[float]]:
    """Returns the ranking with `row` at rank 1 with the best score (the last one drops out if it
    was not among them); unchanged when `row` is None or already first.

    The query is that index image: it comes first, whatever the re-ranking did.
    """
    if row is None or not rows or rows[0] == row:
        return rows, scores
    best = max(scores)
    if row in rows:
        at = rows.index(row)
        rows, scores = rows[:at] + rows[at + 1:], scores[:at] + scores[at + 1:]
    else:
        rows, scores = rows[:-1], scores[:-1]
    return [row] + rows, [best] + scores


class QueryPath:
    """Ranks database rows for one query descriptor at a time: search, αQE, search, diffusion.

    Args:
        features: (n, d) rows as searched (whitened and augmented as stored).
        searcher: a `Searcher` over exactly these rows.
        qe: alpha query expansion with this many top rows; 0 for none.
        alpha: its similarity exponent.
        diffusion: a `Diffusion` over these rows' graph, or None.
        self_similarity: (n,) each image's own cosine with its row (see `Index.self_similarity`);
            None: 1 where `augmented` is False, and no duplicate is ever found where it is True.
        augmented: the rows went through DBA.
    """

    def __init__(self, features: np.ndarray, searcher: Searcher, *, qe: int = 0, alpha: float = 3.0,
                 diffusion: Diffusion | None = None, self_similarity: np.ndarray | None = None,
                 augmented: bool = False):
        self.features, self.searcher = features, searcher
        self.qe, self.alpha, self.diffusion = min(qe, len(searcher)), alpha, diffusion
        self.self_similarity, self.augmented = self_similarity, augmented

    def __len__(self) -> int:
        return len(self.searcher)

    def rank(self, query: np.ndarray, depth: int, *, same: int | None = None,
             seed_rows: np.ndarray | None = None) -> Ranked:
        """Returns the query's top `depth` rows and scores (with `seed_rows`, all of them).

        Scores are inner products (cosine similarities of L2-normalised rows) with the query
        (after αQE), or with diffusion its ranking scores (`Diffusion.ranked`); either way they
        decrease down the list. Similarities are the query's own cosines with the rows returned.

        Args:
            query: (d,) the query descriptor in the rows' space (whitened if they are).
            depth: how many rows, 1 to n.
            same: the row of the indexed image the query is, when the caller knows it
                (a search by id); else it is found (`duplicate_row`).
            seed_rows: (>= seeds,) rows that seed the diffusion instead of the query's own first
                ones (spatially verified ones), weighted by their similarity to the query.
        """
        n = len(self)
        want = depth if self.diffusion is None else max(depth, self.diffusion.needs)
        want = min(n, want)
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        first_scores, first = found(*self.searcher.search(q, min(n, max(want, DUPLICATE_CANDIDATES))))
        if same is None:
            same = self.duplicate_row(first_scores[0, :DUPLICATE_CANDIDATES], first[0, :DUPLICATE_CANDIDATES])
        scores, rows = first_scores[:, :want], first[:, :want]
        if self.qe > 0:
            q = alpha_query_expansion(q, self.features, first[:, : self.qe], k=self.qe, alpha=self.alpha)
            scores, rows = found(*self.searcher.search(q, want))
        if self.diffusion is not None:
            if seed_rows is not None:
                rows = np.asarray(seed_rows, dtype=np.int64)[None]
                # every row's similarity: the seeds weigh by it, a blend mixes it in
                scores = q @ take_rows(self.features, rows[0]).astype(np.float32).T
            ranked_rows, ranked_scores = self.diffusion.ranked(rows[0], scores[0])
            rows, scores = ranked_rows[None], ranked_scores[None]
        keep = depth if seed_rows is None else max(depth, len(seed_rows))  # a seeded ranking is kept whole
        top_rows, top_scores = put_first([int(r) for r in rows[0, :keep]], [float(s) for s in scores[0, :keep]],
                                         same)
        top_rows = np.asarray(top_rows, dtype=np.int64)
        return Ranked(top_rows, np.asarray(top_scores, dtype=np.float32), same, float(first_scores[0, 0]),
                      query, self.features)

    def duplicate_row(self, scores: np.ndarray, rows: np.ndarray) -> int | None:
        """Returns the row among a query's nearest `rows` (with their cosines `scores`) whose image
        the query is, up to float rounding, or None.

        A query is image i when its cosine with row i is the image's own (`self_similarity`: 1
        without DBA, lower where DBA mixed neighbours into the row), within DUPLICATE_TOLERANCE;
        of several, the closest (of equals, the first). Rows that went through DBA without
        self-similarities say None.
        """
        own = self.self_similarity
        if own is None and self.augmented:
            return None
        best, closest = None, DUPLICATE_TOLERANCE
        for score, row in zip(scores, rows):
            # |cosine - own|, not cosine >= own: with DBA another image's row can lie closer to the
            # query than the image's own row does, and it is not the image.
            gap = abs(float(score) - (1.0 if own is None else float(own[row]))) if row >= 0 else np.inf
            if gap < closest:  # strictly: of two rows as close (a photo stored twice), the one ranked first
                best, closest = int(row), gap
        return best
