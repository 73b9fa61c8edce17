"""A search engine: an index, the network that built it and a searcher, ready for queries."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from retrieval.confidence import Confidence, judge, threshold_for
from retrieval.diffusion import CandidateDiffusion, Diffusion
from retrieval.features import Decoded, decode_file, embed_image
from retrieval.index import Index, IndexFormatError
from retrieval.query import QueryPath
from retrieval.rows import take_rows
from retrieval.search import Searcher


@dataclass
class SearchResult:
    """The k best matches of one query, best first, and whether the collection holds a confident match.

    Attributes:
        ids: the k images, best first.
        scores: the ranking score of each, decreasing: the expanded query's cosine (αQE), or with
            diffusion its ranking score (`retrieval.diffusion.Diffusion.ranked`). Ordering only.
        similarities: the cosine similarity of the query and each image as stored, in [-1, 1]:
            what to show a person. Re-ranking may put a less similar image first.
        confidence: the verdict and its evidence (`retrieval.confidence`).
    """

    ids: list[str]
    scores: list[float]
    similarities: list[float]
    embed_ms: float
    search_ms: float
    confidence: Confidence

    def to_records(self) -> list[dict]:
        """Returns [{rank, id, score, similarity}] rows, rank starting at 1."""
        return [{"rank": r, "id": i, "score": round(s, 6), "similarity": round(c, 6)}
                for r, (i, s, c) in enumerate(zip(self.ids, self.scores, self.similarities), 1)]

    @property
    def confident(self) -> bool | None:
        """Whether the collection holds a confident match; None where no threshold was measured."""
        return self.confidence.confident


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
        milvus: a `retrieval.milvus.MilvusRows` over the collection the index was published to:
            the backend is then "milvus", the index may be loaded without its rows, and diffusion
            runs on the candidates' own graph, built at query time (`CandidateDiffusion`).

    Raises:
        IndexFormatError: if the network is not the one recorded in the index.
    """

    def __init__(self, index: Index, network, *, backend: str | None = None, query_expansion: int | None = None,
                 diffusion: bool = True, milvus=None):
        if network.name != index.meta["network"]:
            raise IndexFormatError(
                f"the index was built with {index.meta['network']!r} but the network given is {network.name!r}"
            )
        self.index = index
        self.network = network
        self.pipeline = index.pipeline
        if backend is None:
            backend = "milvus" if milvus is not None else "ann" if index.ann is not None else "kdtree"
        if backend == "ann" and index.ann is None:
            raise IndexFormatError(f"{index.path} has no ANN structure: build it with precompute.build_index --ann")
        self.features = milvus if milvus is not None else index.features  # the rows searched and re-ranked
        self.searcher = Searcher(self.features, backend=backend, ann=index.ann, milvus=milvus)
        recipe = index.recipe
        self.qe_k = min(recipe.qe if query_expansion is None else query_expansion, len(index))
        self.qe_alpha = recipe.alpha
        self.diffusion = None
        if diffusion and recipe.diffusion is not None and milvus is not None:
            self.diffusion = CandidateDiffusion(milvus, recipe.diffusion)
        elif diffusion and recipe.diffusion is not None and index.graph is not None:
            self.diffusion = Diffusion(index.graph, recipe.diffusion)
        self.path = QueryPath(self.features, self.searcher, qe=self.qe_k, alpha=self.qe_alpha,
                              diffusion=self.diffusion, self_similarity=index.self_similarity,
                              augmented=recipe.dba > 0)
        self.threshold = threshold_for(index.meta)

    def __len__(self) -> int:
        return len(self.index)

    def decode(self, source) -> Decoded:
        """Returns a whole image file (a path or encoded bytes) decoded as this index's build decoded
        its photos (`retrieval.features.decode_file`); `search` takes it as it is, decoding nothing again.

        Raises:
            retrieval.features.ImageError: the file is not an image that can be decoded safely.
        """
        return decode_file(source, self.pipeline, self.index.meta.get("preview_side"))

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
        """Returns the k nearest index images to `image` (a path, bytes, PIL image or `decode`'s result), cropped to `box`.

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
        return self._search_vector(take_rows(self.features, [row])[0], k, embed_ms=0.0, same=row)

    def duplicate_row(self, scores: np.ndarray, rows: np.ndarray) -> int | None:
        """Returns the row among a query's nearest `rows` whose image the query is, or None
        (`retrieval.query.QueryPath.duplicate_row`)."""
        return self.path.duplicate_row(scores, rows)

    def _search_vector(self, query: np.ndarray, k: int, *, embed_ms: float, same: int | None = None) -> SearchResult:
        t0 = time.perf_counter()
        ranked = self.path.rank(query, k, same=same)
        search_ms = (time.perf_counter() - t0) * 1000
        return SearchResult([str(self.index.ids[r]) for r in ranked.rows], [float(s) for s in ranked.scores],
                            [float(s) for s in ranked.similarities], embed_ms, search_ms,
                            judge(ranked.best, self.threshold))
