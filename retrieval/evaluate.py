"""Retrieval evaluation: ranks and ground truth in, numbers out.

Everything here is pure numpy; nothing prints, plots or touches files.

Conventions:
    * A *ranking* is a 1-D integer array of database indices, best match
      first. It may be truncated (shorter than the database); positives that
      are not in it simply never count as retrieved.
    * ``ranks`` for a set of queries is row-major, shape ``(n_queries,
      n_ranked)``: row ``i`` is the ranking of query ``i``. (revisitop's
      ``compute_map`` takes the transpose, ``(n_db, n_queries)``.)
    * Junk images are removed from the ranking before positions are counted,
      as in the Oxford/revisitop protocol: they neither help nor hurt.
    * Hand-made ground truth is scored exactly as revisitop's ``compute_map``
      scores it (the official protocol sets are disjoint and duplicate-free, so
      this changes nothing there): an image listed both as positive and as junk
      counts as a positive where it stands and as junk for the positives after
      it, and a positive id listed twice counts twice in the number of
      positives (so AP can no longer reach 1).

Ground truth (``gnd``) is one dict per query holding integer index arrays into
the database: ``easy``, ``hard``, ``junk`` for the revisited datasets, ``ok``
(good and ok merged) and ``junk`` for the classic Oxford5k/Paris6k.
"""

from collections.abc import Mapping, Sequence

import numpy as np

KAPPAS = (1, 5, 10)
PROTOCOLS = {"revisited": ("easy", "medium", "hard"), "classic": ("classic",)}

# protocol -> (ground-truth keys that are positives, keys that are junk)
_PROTOCOL_SETS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
    "classic": (("ok",), ("junk",)),
}


def _index_array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).ravel()


def positive_positions(ranking, positives, junk=()) -> np.ndarray:
    """Returns the 0-based positions of the positives in a ranking, junk removed.

    Args:
        ranking: (n_ranked,) database indices, best first.
        positives: database indices of the positive images.
        junk: database indices to drop from the ranking before counting.

    Returns:
        (n_found,) int64, non-decreasing: where each retrieved positive sits
        once the junk images ranked above it have been taken out. As in
        revisitop, an image in both lists is junk for the positives after it.
    """
    ranking = _index_array(ranking)
    is_positive = np.isin(ranking, _index_array(positives))
    is_junk = np.isin(ranking, _index_array(junk))
    junk_before = np.cumsum(is_junk) - is_junk
    found = np.flatnonzero(is_positive)
    return found - junk_before[found]


def _ap_positions(positions, n_positives: int) -> np.ndarray:
    """Returns the positions as float64 after checking that n_positives can hold them."""
    positions = _index_array(positions).astype(np.float64)
    if n_positives <= 0 or n_positives < len(positions):
        raise ValueError(
            f"n_positives must be >= 1 and >= {len(positions)} found positives, got {n_positives}"
        )
    return positions


def compute_ap(positions, n_positives: int) -> float:
    """Returns the average precision by the Oxford/revisitop definition.

    The area under the precision-recall curve by trapezoids: each retrieved
    positive at 0-based position ``r`` (the ``j``-th found, 0-based) adds a
    trapezoid of width ``1 / n_positives`` between the precision just before
    it, ``j / r`` (1 when ``r == 0``), and just after it, ``(j + 1) / (r + 1)``.
    Same value as revisitop's ``compute_ap``.

    Args:
        positions: 0-based, increasing positions of the retrieved positives in
            the junk-free ranking (see ``positive_positions``).
        n_positives: number of positives of the query (retrieved or not).

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: if ``n_positives`` is not positive or smaller than the
            number of positions.
    """
    positions = _ap_positions(positions, n_positives)
    found = np.arange(len(positions), dtype=np.float64)
    before = np.where(positions == 0, 1.0, found / np.maximum(positions, 1.0))
    after = (found + 1.0) / (positions + 1.0)
    return float(np.sum(before + after) / (2.0 * n_positives))


def compute_ap_report(positions, n_positives: int) -> float:
    """Returns the non-interpolated AP = (1 / RD) * sum_k P(k) r(k).

    The formula of the report this project starts from: ``P(k)`` is the
    precision at rank ``k``, ``r(k)`` is 1 when the image at rank ``k`` is
    relevant, ``RD`` the number of relevant images. Junk images are removed
    from the ranking first, as for ``compute_ap``, so both columns see the
    same ranking and differ only in the interpolation.

    Args:
        positions: 0-based, increasing positions of the retrieved positives in
            the junk-free ranking.
        n_positives: RD, the number of positives of the query.

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: if ``n_positives`` is not positive or smaller than the
            number of positions.
    """
    positions = _ap_positions(positions, n_positives)
    found = np.arange(1, len(positions) + 1, dtype=np.float64)
    return float(np.sum(found / (positions + 1.0)) / n_positives)


def precision_at(positions, kappas: Sequence[int] = KAPPAS) -> np.ndarray:
    """Returns precision at each k as revisitop's ``compute_map`` computes it.

    revisitop divides by ``min(k, rank of the last retrieved positive)``, not
    by ``k``: a query whose positives are all found above rank ``k`` is not
    penalised for having fewer than ``k`` of them. Kept so the numbers compare
    with published mP@k.

    Args:
        positions: 0-based, increasing positions of the retrieved positives in
            the junk-free ranking.
        kappas: the cut-offs k (>= 1).

    Returns:
        (len(kappas),) float64; zeros when no positive was retrieved.
    """
    ranks = _index_array(positions) + 1
    kappas = _index_array(kappas)
    if np.any(kappas < 1):
        raise ValueError(f"kappas must be >= 1, got {kappas.tolist()}")
    if len(ranks) == 0:
        return np.zeros(len(kappas))
    cutoff = np.minimum(ranks.max(), kappas)
    return (ranks[None, :] <= cutoff[:, None]).sum(axis=1) / cutoff


def precision_recall(ranking, positives, junk=()) -> tuple[np.ndarray, np.ndarray]:
    """Returns the precision-recall curve of one query, for plotting.

    Args:
        ranking: (n_ranked,) database indices, best first.
        positives: database indices of the positive images (at least one).
        junk: database indices removed from the ranking first.

    Returns:
        (recall, precision), each (n_kept + 1,) float64, where ``n_kept`` is
        the ranking length once junk is removed. Point ``k`` is the curve after
        the top ``k`` images; point 0 is (0, 1), the start the trapezoidal AP
        uses, so ``np.trapezoid(precision, recall)`` equals ``compute_ap`` (for ground
        truth whose positives are distinct and not junk).

    Raises:
        ValueError: if there are no positives.
    """
    ranking = _index_array(ranking)
    positives = np.unique(_index_array(positives))
    if len(positives) == 0:
        raise ValueError("a precision-recall curve needs at least one positive")
    is_positive = np.isin(ranking, positives)
    keep = is_positive | ~np.isin(ranking, _index_array(junk))
    hits = np.cumsum(is_positive[keep])
    shown = np.arange(1, len(hits) + 1)
    recall = np.concatenate([[0.0], hits / len(positives)])
    precision = np.concatenate([[1.0], hits / shown])
    return recall, precision


def protocol_gnd(gnd: Sequence[Mapping], protocol: str) -> list[dict[str, np.ndarray]]:
    """Returns the ground truth of one protocol as ``ok`` / ``junk`` index arrays.

    Easy: positives easy, junk = junk + hard. Medium: positives easy + hard,
    junk = junk. Hard: positives hard, junk = junk + easy. Classic: positives
    ``ok`` (good + ok), junk = junk.

    Args:
        gnd: per query, a dict of index arrays (``easy``/``hard``/``junk`` or
            ``ok``/``junk``).
        protocol: ``easy``, ``medium``, ``hard`` or ``classic``.

    Returns:
        Per query, ``{"ok": int64 array, "junk": int64 array}``.

    Raises:
        ValueError: on an unknown protocol or a ground truth lacking its keys.
    """
    if protocol not in _PROTOCOL_SETS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(_PROTOCOL_SETS)}")
    positive_keys, junk_keys = _PROTOCOL_SETS[protocol]
    out = []
    for i, query in enumerate(gnd):
        missing = [k for k in positive_keys if k not in query]
        if missing:
            raise ValueError(f"ground truth of query {i} has no {missing} for protocol {protocol!r}")
        ok = np.concatenate([_index_array(query[k]) for k in positive_keys])
        junk = [_index_array(query[k]) for k in junk_keys if k in query]
        out.append({"ok": ok, "junk": np.concatenate(junk) if junk else np.empty(0, np.int64)})
    return out


def _check_ranks(ranks, n_queries: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be a 2-D integer array (n_queries, n_ranked), got {ranks.dtype} {ranks.shape}")
    if ranks.shape[0] != n_queries:
        raise ValueError(
            f"ranks has {ranks.shape[0]} rows but the ground truth has {n_queries} queries; "
            "ranks is row-major (n_queries, n_ranked)"
        )
    return ranks


def compute_map(ranks, gnd: Sequence[Mapping], *, kappas: Sequence[int] = KAPPAS) -> dict:
    """Returns mAP, mean precision at k and per-query values for one protocol.

    Queries with no positives are skipped (their per-query values are NaN) and
    left out of the means.

    Args:
        ranks: (n_queries, n_ranked) integer database indices, row ``i`` the
            ranking of query ``i``, best first.
        gnd: per query, ``{"ok": positives, "junk": junk}`` (see
            ``protocol_gnd``).
        kappas: cut-offs for precision at k.

    Returns:
        ``map`` (trapezoidal, float), ``report_map`` (non-interpolated,
        float), ``mp_at`` ({k: mean precision at k}), ``aps`` and
        ``report_aps`` ((n_queries,) float64), ``precisions`` ((n_queries,
        len(kappas)) float64), ``n_queries`` (queries used) and ``n_skipped``.
        Means are NaN when no query has a positive.

    Raises:
        ValueError: if ranks is not (len(gnd), n_ranked) integers.
    """
    ranks = _check_ranks(ranks, len(gnd))
    kappas = tuple(int(k) for k in kappas)
    n = len(gnd)
    aps = np.full(n, np.nan)
    report_aps = np.full(n, np.nan)
    precisions = np.full((n, len(kappas)), np.nan)
    for i, query in enumerate(gnd):
        # Not made unique: revisitop counts a positive listed twice twice.
        positives = _index_array(query["ok"])
        if len(positives) == 0:
            continue
        positions = positive_positions(ranks[i], positives, query.get("junk", ()))
        aps[i] = compute_ap(positions, len(positives))
        report_aps[i] = compute_ap_report(positions, len(positives))
        precisions[i] = precision_at(positions, kappas)
    used = ~np.isnan(aps)
    n_used = int(used.sum())

    def mean(values):
        return float(values[used].mean(axis=0)) if n_used else float("nan")

    mp = precisions[used].mean(axis=0) if n_used else np.full(len(kappas), np.nan)
    return {
        "map": mean(aps),
        "report_map": mean(report_aps),
        "mp_at": {k: float(v) for k, v in zip(kappas, mp)},
        "aps": aps,
        "report_aps": report_aps,
        "precisions": precisions,
        "n_queries": n_used,
        "n_skipped": n - n_used,
    }


def evaluate_ranks(ranks, gnd: Sequence[Mapping], kind: str, *, kappas: Sequence[int] = KAPPAS) -> dict:
    """Returns ``compute_map`` results for every protocol of a dataset kind.

    Args:
        ranks: (n_queries, n_ranked) integer database indices, row-major: row
            ``i`` is the ranking of query ``i``, best first.
        gnd: per query, ``easy``/``hard``/``junk`` index arrays (revisited) or
            ``ok``/``junk`` (classic).
        kind: ``revisited`` (protocols easy, medium, hard) or ``classic``
            (protocol classic).
        kappas: cut-offs for precision at k.

    Returns:
        {protocol: ``compute_map`` dict}, protocols in the order of
        ``PROTOCOLS[kind]``.

    Raises:
        ValueError: on an unknown kind, bad ranks or ground truth.
    """
    if kind not in PROTOCOLS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(PROTOCOLS)}")
    return {p: compute_map(ranks, protocol_gnd(gnd, p), kappas=kappas) for p in PROTOCOLS[kind]}
