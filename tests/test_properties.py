"""Property tests (hypothesis) of the mathematical parts: AP, αQE and DBA, and the two search backends.

Examples are small and their number fixed by the "repo" profile in conftest.py, so this file
runs in seconds. Vectors come from a seeded generator that hypothesis picks, not from
hypothesis floats: the properties are about rankings and permutations, not about denormals.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retrieval import evaluate as ev
from retrieval.rerank import alpha_query_expansion, database_augmentation
from retrieval.search import Searcher, l2_normalize


@st.composite
def rankings(draw, max_db=30):
    """A ranking of a database, truncated or not, with disjoint positives and junk."""
    n_db = draw(st.integers(2, max_db))
    ids = draw(st.permutations(range(n_db)))
    n_pos = draw(st.integers(1, n_db - 1))
    n_junk = draw(st.integers(0, n_db - n_pos))
    ranking = draw(st.permutations(range(n_db)))
    length = draw(st.integers(1, n_db))
    as_ids = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return as_ids(ranking[:length]), as_ids(ids[:n_pos]), as_ids(ids[n_pos : n_pos + n_junk])


def ap(ranking, positives, junk=()):
    return ev.compute_ap(ev.positive_positions(ranking, positives, junk), len(positives))


def report_ap(ranking, positives, junk=()):
    return ev.compute_ap_report(ev.positive_positions(ranking, positives, junk), len(positives))


@given(rankings())
def test_ap_is_between_0_and_1_and_1_only_for_positives_first(case):
    ranking, positives, junk = case
    value, report = ap(ranking, positives, junk), report_ap(ranking, positives, junk)
    assert 0.0 <= value <= 1.0 and 0.0 <= report <= 1.0
    kept = [r for r in ranking if r not in set(junk)]
    perfect = set(kept[: len(positives)]) == set(positives)
    assert (value == 1.0) == perfect and (report == 1.0) == perfect
    assert (value == 0.0) == (not set(ranking) & set(positives)) == (report == 0.0)


@given(rankings(), st.randoms(use_true_random=False))
def test_ap_ignores_relabelling_and_junk_anywhere(case, rnd):
    ranking, positives, junk = case
    value = ap(ranking, positives, junk)
    relabel = np.array(rnd.sample(range(1000), 30))  # new distinct ids for the same images
    assert ap(relabel[ranking], relabel[positives], relabel[junk]) == pytest.approx(value, abs=1e-12)
    # Junk images moved anywhere in the ranking, or left out of it, change nothing.
    shuffled = [r for r in ranking if r not in set(junk)]
    for j in [j for j in junk if j in set(ranking)]:
        shuffled.insert(rnd.randrange(len(shuffled) + 1), j)
    assert ap(shuffled, positives, junk) == pytest.approx(value, abs=1e-12)
    assert ap([r for r in ranking if r not in set(junk)], positives, junk) == pytest.approx(value, abs=1e-12)


@given(rankings())
def test_moving_a_positive_up_raises_ap_and_losing_one_lowers_it(case):
    ranking, positives, _ = case
    value = ap(ranking, positives)
    is_pos = np.isin(ranking, positives)
    swaps = np.flatnonzero(is_pos[1:] & ~is_pos[:-1])  # a negative right above a positive
    if len(swaps):
        better = ranking.copy()
        i = swaps[0]
        better[i], better[i + 1] = better[i + 1], better[i]
        assert ap(better, positives) > value
        assert report_ap(better, positives) > report_ap(ranking, positives)
    if is_pos.any():
        last = np.flatnonzero(is_pos)[-1]
        assert ap(ranking[:last], positives) < value  # the ranking cut before its last positive


def revisitop_map(ranks, gnd):
    """revisitop's compute_map, transcribed loop for loop (ranks transposed back to row-major)."""
    aps = []
    for i, g in enumerate(gnd):
        qgnd = np.array(g["ok"])
        if qgnd.shape[0] == 0:
            aps.append(float("nan"))
            continue
        qgndj = np.array(g.get("junk", []))
        pos = np.arange(ranks.shape[1])[np.isin(ranks[i], qgnd)]
        junk = np.arange(ranks.shape[1])[np.isin(ranks[i], qgndj)]
        k = ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap_value, recall_step = 0.0, 1.0 / len(qgnd)
        for j, rank in enumerate(pos):
            precision_0 = 1.0 if rank == 0 else j / rank
            precision_1 = (j + 1) / (rank + 1)
            ap_value += (precision_1 + precision_0) * recall_step / 2.0
        aps.append(ap_value)
    return np.array(aps)


@given(st.integers(3, 25).flatmap(lambda n: st.tuples(
    st.permutations(range(n)),
    st.lists(st.lists(st.integers(0, n - 1), min_size=1, max_size=6), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, n - 1), max_size=6), min_size=3, max_size=3),
)))
def test_compute_map_scores_hand_made_ground_truth_as_revisitop(case):
    # Positives may repeat and may also be junk: hand-made ground truth, scored as revisitop does.
    order, oks, junks = case
    gnd = [{"ok": ok, "junk": junk} for ok, junk in zip(oks, junks)]
    ranks = np.array([np.roll(order, i) for i in range(len(gnd))])
    np.testing.assert_allclose(ev.compute_map(ranks, gnd)["aps"], revisitop_map(ranks, gnd), atol=1e-12)


def test_a_positive_listed_as_junk_and_a_repeated_positive_by_hand():
    # Ranking 7, 8, 9; positives 7 and 9, 7 also junk: revisitop counts 7 as found at 0 and as
    # junk above 9, which moves up to position 1: AP = ((1 + 1) + (1 + 1)) / 2 / 2 = 1.
    assert ev.compute_map(np.array([[7, 8, 9]]), [{"ok": [7, 9], "junk": [7]}])["map"] == pytest.approx(1.0)
    # Positive 7 listed twice: two positives, one found: AP 1/2, not 1.
    assert ev.compute_map(np.array([[7, 8, 9]]), [{"ok": [7, 7], "junk": []}])["map"] == pytest.approx(0.5)


@st.composite
def unit_rows(draw, max_n=40, max_d=12):
    seed = draw(st.integers(0, 2**32 - 1))
    n, d = draw(st.integers(3, max_n)), draw(st.integers(2, max_d))
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, d))), seed


@given(unit_rows(), st.integers(1, 5), st.sampled_from([1.0, 3.0]), st.randoms(use_true_random=False))
def test_qe_does_not_depend_on_where_rows_sit(data, k, alpha, rnd):
    db, seed = data
    k = min(k, len(db))
    queries = l2_normalize(np.random.default_rng(seed + 1).standard_normal((4, db.shape[1])))
    ranks = np.argsort(-(queries @ db.T), axis=1, kind="stable")
    out = alpha_query_expansion(queries, db, ranks, k=k, alpha=alpha)
    perm = np.array(rnd.sample(range(len(db)), len(db)))  # new row r holds old row perm[r]
    inverse = np.argsort(perm)
    moved = alpha_query_expansion(queries, db[perm], inverse[ranks], k=k, alpha=alpha)
    np.testing.assert_allclose(moved, out, atol=1e-6)
    qperm = np.array(rnd.sample(range(4), 4))
    np.testing.assert_allclose(alpha_query_expansion(queries[qperm], db, ranks[qperm], k=k, alpha=alpha),
                               out[qperm], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


@given(unit_rows(), st.integers(1, 4), st.sampled_from([1.0, 3.0]), st.randoms(use_true_random=False))
def test_dba_of_permuted_rows_is_the_permuted_dba(data, k, alpha, rnd):
    db, _ = data
    assume(k < len(db))
    out = database_augmentation(db, k=k, alpha=alpha)
    perm = np.array(rnd.sample(range(len(db)), len(db)))
    np.testing.assert_allclose(database_augmentation(db[perm], k=k, alpha=alpha), out[perm], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


@st.composite
def tied_index(draw):
    """Unit rows rounded to float16 (as an index stores them), with duplicate rows, and queries."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n, d = draw(st.integers(2, 60)), draw(st.integers(2, 24))
    coarse = draw(st.booleans())  # rows on a small grid: many equal scores between different rows
    raw = rng.integers(-2, 3, (n, d)) if coarse else rng.standard_normal((n, d))
    raw[raw.sum(axis=1) == 0, 0] = 1 if coarse else raw[raw.sum(axis=1) == 0, 0]
    rows = l2_normalize(raw).astype(np.float16).astype(np.float32)
    for _ in range(draw(st.integers(0, n))):  # copies of other rows
        rows[rng.integers(n)] = rows[rng.integers(n)]
    queries = np.concatenate([rows[rng.integers(0, n, 3)], l2_normalize(rng.standard_normal((3, d)))])
    if coarse:
        queries = np.concatenate([queries, l2_normalize(rng.integers(-1, 2, (2, d)) + 0.0 + (np.arange(d) == 0))])
    k = draw(st.integers(1, n))
    return rows, queries, k


@given(tied_index())
def test_kdtree_and_exact_agree_in_the_tie_order(case):
    rows, queries, k = case
    exact_scores, exact_rows = Searcher(rows, backend="exact").search(queries, k)
    kd_scores, kd_rows = Searcher(rows, backend="kdtree", leaf_size=2).search(queries, k)
    np.testing.assert_array_equal(kd_rows, exact_rows)
    np.testing.assert_array_equal(kd_scores, exact_scores)
    # The order itself: score descending, then row ascending; and the k best of all rows.
    for scores, found, q in zip(exact_scores, exact_rows, queries):
        s = scores.astype(np.float64)
        assert np.all((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (found[:-1] < found[1:])))
        every = np.einsum("kd,d->k", rows, q)
        np.testing.assert_array_equal(found, np.lexsort((np.arange(len(rows)), -every))[:k])
