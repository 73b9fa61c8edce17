"""Does the collection hold a confident match for a query? The rule, its measured threshold and its evidence.

Re-ranking always returns K photos, the least bad of nothing included. The evidence that tells a
real match from none is the query's best cosine similarity with any photo of the collection (the
first search's top, before αQE or diffusion reorder anything): it costs nothing, the search
computed it. `python -m benchmarks.confidence` measured it against the margin over the next
photos and against local-feature verification of the top few (results/confidence.json,
docs/evaluation.md, "No confident match"): on the 19 Paris crops and 41 photos and made images of
nothing in the collection the similarity alone separates both sets, where the margin does not and
verification costs far more.

A similarity is only comparable within one descriptor space: a threshold holds for the network,
pipeline and DBA it was measured with, and any other index gets no verdict (None), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.features import Pipeline

# (network, pipeline as index.json records it, DBA k) -> the lowest best similarity called a
# confident match. efficientnet-lite0 with the default pipeline and DBA 3: the midpoint between the
# highest out-of-domain best similarity (0.634, skimage's astronaut) and the lowest of the 19 Paris
# crops (0.719, the Notre-Dame crop) on the 397 photos of the mini RParis (results/confidence.json).
THRESHOLDS: tuple[tuple[str, Pipeline, int, float], ...] = (
    ("efficientnet-lite0", Pipeline(pooling="gem", max_side=384, gem_p=3.0, bucket="resize"), 3, 0.68),
)


@dataclass(frozen=True)
class Confidence:
    """Whether a query has a confident match in the collection, and the evidence.

    Attributes:
        confident: True when `similarity` reaches `threshold`; None when no threshold was measured
            for the index's network, pipeline and DBA.
        similarity: the query's best cosine similarity with any photo of the collection.
        threshold: the similarity from which a match is confident, or None.
    """

    confident: bool | None
    similarity: float
    threshold: float | None

    def to_dict(self) -> dict:
        """Returns {confident, evidence: {similarity, threshold, rule}}, JSON-ready."""
        return {"confident": self.confident,
                "evidence": {"similarity": round(self.similarity, 6), "threshold": self.threshold,
                             "rule": "best similarity >= threshold" if self.threshold is not None
                             else "no threshold measured for this index's network, pipeline and DBA"}}


def threshold_for(meta: dict) -> float | None:
    """Returns the measured threshold for an index (its index.json `meta`), or None.

    The index must be of a measured network, pipeline and DBA k, not whitened (whitening changes
    every similarity).
    """
    if meta.get("whitening"):
        return None
    dba = (meta.get("dba") or {}).get("k", 0)
    pipeline = Pipeline.from_meta(meta["pipeline"]) if meta.get("pipeline") else None
    for network, measured, dba_k, value in THRESHOLDS:
        if meta.get("network") == network and pipeline == measured and dba == dba_k:
            return value
    return None


def judge(best_similarity: float, threshold: float | None) -> Confidence:
    """Returns the `Confidence` of a query whose best similarity with the collection is `best_similarity`."""
    confident = None if threshold is None else bool(best_similarity >= threshold)
    return Confidence(confident, float(best_similarity), threshold)
