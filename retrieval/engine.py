"""A search engine: an index, the network that built it and a searcher, ready for queries."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from retrieval.diffusion import Diffusion, DiffusionSettings
from retrieval.features import embed_image
from retrieval.index import Index, IndexFormatError
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


@dataclass
class SearchResult:
    """The k best matches of one query, best first.

    Scores are cosine similarities, or, when the index re-ranks by diffusion, diffusion scores
    relative to the best match (1.0); either way they decrease down the list.
    """

    ids: list[str]
    scores: list[float]
    embed_ms: float
    search_ms: float

    def to_records(self) -> list[dict]:
        """Returns [{rank, id, score}] rows, rank starting at 1."""
        return [{"rank": r, "id": i, "score": round(s, 6)} for r, (i, s) in enumerate(zip(self.ids, self.scores), 1)]


class SearchEngine:
    """Embeds query images with the index's own network and finds their nearest index images.

    Args:
        index: a loaded `Index`.
        network: a `retrieval.networks.Network`; it must be the one that built the index.
        backend: "kdtree", "exact" or "ann" (see `Searcher`); None takes "ann" when the index
            has an ANN structure, else the KD-tree. "ann" needs the index's own: the engine
            never trains one.
        query_expansion: alpha query expansion with this many top results; None takes the
            index's setting (index.json "query_expansion"), 0 turns it off.
        diffusion: re-rank by diffusion over the index's graph (when it has one); False turns it off.

    Raises:
        IndexFormatError: if the network is not the one recorded in the index.
    """

    def __init__(self, index: Index, network, *, backend: str | None = None, query_expansion: int | None = None,
                 diffusion: bool = True):
        if network.name != index.meta["network"]:
            raise IndexFormatError(
                f"the index was built with {index.meta['network']!r} but the network given is {network.name!r}"
            )
        self.index = index
        self.network = network
        self.pipeline = index.pipeline
        if backend is None:
            backend = "ann" if index.ann is not None else "kdtree"
        if backend == "ann" and index.ann is None:
            raise IndexFormatError(f"{index.path} has no ANN structure: build it with precompute.build_index --ann")
        self.searcher = Searcher(index.features, backend=backend, ann=index.ann)
        qe = index.meta.get("query_expansion") or {}
        self.qe_k = min(qe.get("k", 0) if query_expansion is None else query_expansion, len(index))
        self.qe_alpha = float(qe.get("alpha", 3.0))
        settings = index.meta.get("diffusion")
        self.diffusion = None
        if diffusion and settings and index.graph is not None:
            self.diffusion = Diffusion(index.graph, DiffusionSettings.from_meta(settings))

    def __len__(self) -> int:
        return len(self.index)

    def embed(self, image, *, box=None) -> np.ndarray:
        """Returns the (d,) float32 query descriptor in the index's space (whitened if it is)."""
        return self.index.project(embed_image(self.network, image, self.pipeline, box=box,
                                              preview_side=self.index.meta.get("preview_side")))[0]

    def warm_up(self) -> None:
        """Runs one query so that the first user does not pay for graph building and allocation."""
        from PIL import Image

        side = self.pipeline.squash or self.pipeline.max_side
        self.search(Image.new("RGB", (side, side * 3 // 4), (127, 127, 127)), 1)

    def search(self, image, k: int, *, box=None) -> SearchResult:
        """Returns the k nearest index images to `image` (a path, bytes or PIL image), cropped to `box`.

        Raises:
            ValueError: for a bad k (checked first, before any work).
            retrieval.features.ImageError: for an image that cannot be used.
        """
        k = self.searcher.check_k(k)
        t0 = time.perf_counter()
        query = self.embed(image, box=box)
        t1 = time.perf_counter()
        return self._search_vector(query, k, embed_ms=(t1 - t0) * 1000)

    def search_id(self, image_id: str, k: int) -> SearchResult:
        """Returns the k nearest index images to an indexed image, using its stored descriptor.

        The image itself comes first: diffusion may rank a neighbour of its cluster above it,
        but a person who searches an index image expects to see that image at rank 1.
        """
        k = self.searcher.check_k(k)
        row = self.index.row_of(image_id)
        return self._search_vector(take_rows(self.index.features, [row])[0], k, embed_ms=0.0, same=row)

    def duplicate_row(self, scores: np.ndarray, rows: np.ndarray) -> int | None:
        """Returns the row among a query's nearest `rows` (with their cosines `scores`) whose image
        the query is, up to float rounding, or None.

        A query is image i when its cosine with row i is the image's own (`Index.self_similarity`:
        1 without DBA, lower where DBA mixed neighbours into the row), within DUPLICATE_TOLERANCE.
        An index saved without self-similarities but with DBA cannot tell, and says None.
        """
        own = self.index.self_similarity
        if own is None and self.index.meta.get("dba"):
            return None
        best, closest = None, DUPLICATE_TOLERANCE
        for score, row in zip(scores, rows):
            # |cosine - own|, not cosine >= own: with DBA another image's row can lie closer to the
            # query than the image's own row does, and it is not the image.
            gap = abs(float(score) - (1.0 if own is None else float(own[row]))) if row >= 0 else np.inf
            if gap <= closest:
                best, closest = int(row), gap
        return best

    def _search_vector(self, query: np.ndarray, k: int, *, embed_ms: float, same: int | None = None) -> SearchResult:
        t0 = time.perf_counter()
        first_scores, first = self.searcher.search(query, min(len(self.index), max(self.qe_k, DUPLICATE_CANDIDATES)))
        if same is None:
            same = self.duplicate_row(first_scores[0], first[0])
        if self.qe_k > 0:
            query = alpha_query_expansion(query[None], self.index.features, first[:, :self.qe_k], k=self.qe_k,
                                          alpha=self.qe_alpha)
        if self.diffusion is None:
            scores, rows = self.searcher.search(query, k)
        else:
            scores, rows = self._diffuse(query, k)
        rows, scores = put_first([int(r) for r in rows[0]], [float(s) for s in scores[0]], same)
        search_ms = (time.perf_counter() - t0) * 1000
        return SearchResult([str(self.index.ids[r]) for r in rows], scores, embed_ms, search_ms)

    def _diffuse(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        first_scores, first = self.searcher.search(query, max(k, self.diffusion.needs))
        rows, scores = self.diffusion.ranked(first[0], first_scores[0])
        return scores[None, :k], rows[None, :k]
