"""The database side of a search at scale: distractors appended (+R1M), DBA through the ANN, full rankings.

Used by `retrieval.evaluation`; pure numpy and FAISS, no printing.
"""

from __future__ import annotations

import numpy as np

from retrieval.ann import AnnIndex, ann_neighbours, build_ann, copy_trained, refill
from retrieval.defaults import approximate
from retrieval.features import Pipeline
from retrieval.index import IndexFormatError, load_index
from retrieval.rerank import augment_with_neighbours, database_augmentation
from retrieval.search import Searcher


class DistractorError(ValueError):
    """A distractor index that cannot join this database, with why."""


def add_distractors(db: np.ndarray, folder, *, network, pipeline: Pipeline) -> tuple[np.ndarray, dict, AnnIndex | None]:
    """Returns the (n + N, d) float32 database with the N rows of the index at `folder` after the n of `db`.

    Also returns what was added (JSON-ready) and a trained copy of the distractor index's ANN
    structure (or None), for the caller to refill with the whole database instead of training one.

    Raises:
        DistractorError: the index is of another network, weights or pipeline, or its rows were
            changed by DBA or whitening (they would not be comparable with the dataset's raw rows).
    """
    try:
        index = load_index(folder)
    except IndexFormatError as e:
        raise DistractorError(f"the distractor index cannot be used: {e}") from None
    meta = index.meta
    for key, ours in (("network", network.name), ("weights", network.weights), ("pipeline", pipeline.to_meta())):
        if meta[key] != ours:
            raise DistractorError(
                f"the distractors at {folder} were made with {key} {meta[key]!r}, this evaluation uses {ours!r}: "
                "descriptors of another network or pipeline cannot be compared"
            )
    if meta.get("dba") or meta.get("whitening"):
        raise DistractorError(f"the distractors at {folder} were augmented (DBA) or whitened: "
                              "build them with --dba 0 and without --whiten")
    if index.dim != db.shape[1]:
        raise DistractorError(f"the distractors have dimension {index.dim}, the dataset's descriptors {db.shape[1]}")
    n = len(db)
    out = np.empty((n + len(index), db.shape[1]), dtype=np.float32)
    out[:n] = db
    for start in range(0, len(index), 65536):
        out[n + start : n + start + 65536] = index.features[start : start + 65536]
    added = {"count": len(index), "source": meta.get("source", str(folder)), "rows_after": n,
             "ann": meta.get("ann")}
    return out, added, copy_trained(index.ann) if index.ann is not None else None


def trained_ann(db: np.ndarray, ann: AnnIndex | None) -> AnnIndex:
    """Returns an ANN over `db`: `ann`'s training refilled with these rows, or one trained here."""
    return refill(ann, db) if ann is not None else build_ann(db)


def augment_database(db: np.ndarray, *, k: int, alpha: float, ann: AnnIndex | None = None) -> np.ndarray:
    """Returns DBA rows of `db`: exact neighbours (all pairs) below `DEFAULT.ann_rows` rows, ANN ones above.

    `ann`, when given, is refilled with `db` for the neighbour search (see `trained_ann`).
    """
    if not approximate(len(db)):
        return database_augmentation(db, k=k, alpha=alpha)
    structure = trained_ann(db, ann)
    return augment_with_neighbours(db, ann_neighbours(structure, db, k), alpha=alpha)


def make_searcher(db: np.ndarray, backend: str, ann: AnnIndex | None) -> Searcher:
    """Returns a Searcher over `db`; for "ann" with `ann`'s training refilled with `db` (no training)."""
    if backend != "ann":
        return Searcher(db, backend=backend)
    return Searcher(db, backend="ann", ann=trained_ann(db, ann))


def full_ranking(top: np.ndarray, n: int) -> np.ndarray:
    """Returns (n,) rows: `top` first, then every other row from the last to the first.

    The ANN ranks only its top K. The rest follow with the highest rows first (the distractors,
    appended last), so a dataset image the ANN did not return ranks behind every distractor:
    counted as good as not retrieved, never helped by the order.
    """
    top = np.asarray(top, dtype=np.int64)
    top = top[top >= 0]
    rest = np.ones(n, dtype=bool)
    rest[top] = False
    return np.concatenate([top, np.flatnonzero(rest)[::-1]])
