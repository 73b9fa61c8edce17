import math

import numpy as np
import pytest

from retrieval import evaluate as ev


def _oracle_ap(ranking, positives, junk=()):
    """Area under the stepwise P-R curve, walked rank by rank in plain Python.

    Independent of retrieval.evaluate: junk filtered with a list comprehension,
    precision before / after each relevant image taken from running counts.
    """
    positives = set(int(p) for p in positives)
    junk = set(int(j) for j in junk) - positives
    kept = [int(r) for r in ranking if int(r) not in junk]
    area, hits = 0.0, 0
    previous_precision = 1.0
    for shown, image in enumerate(kept, start=1):
        if image in positives:
            hits += 1
            precision = hits / shown
            area += (previous_precision + precision) / 2 / len(positives)
        else:
            precision = hits / shown
        previous_precision = precision
    return area


def _oracle_report_ap(ranking, positives, junk=()):
    positives = set(int(p) for p in positives)
    kept = [int(r) for r in ranking if int(r) not in set(junk) - positives]
    total, hits = 0.0, 0
    for shown, image in enumerate(kept, start=1):
        if image in positives:
            hits += 1
            total += hits / shown
    return total / len(positives)


# The report's worked example: relevance Y, Y, N, Y, N and RD = 3.
EXAMPLE_RANKING = np.array([10, 11, 12, 13, 14])
EXAMPLE_POSITIVES = np.array([10, 11, 13])


def test_report_worked_example():
    positions = ev.positive_positions(EXAMPLE_RANKING, EXAMPLE_POSITIVES)
    assert positions.tolist() == [0, 1, 3]
    ap = ev.compute_ap_report(positions, 3)
    assert ap == pytest.approx((1 + 1 + 0.75) / 3)
    assert round(ap, 2) == 0.92


def test_trapezoidal_ap_of_worked_example_by_hand():
    # Trapezoids of width 1/3: (1 + 1)/2, (1 + 1)/2, (2/3 + 3/4)/2 -> 65/72.
    positions = ev.positive_positions(EXAMPLE_RANKING, EXAMPLE_POSITIVES)
    assert ev.compute_ap(positions, 3) == pytest.approx(65 / 72)


def test_positive_not_retrieved_counts_against_ap():
    # Truncated ranking: the third positive (id 99) never shows up.
    positions = ev.positive_positions([1, 2, 3], [1, 3, 99])
    assert ev.compute_ap(positions, 3) == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 3)
    assert ev.compute_ap_report(positions, 3) == pytest.approx((1 + 2 / 3) / 3)


def test_perfect_ranking_is_one():
    positions = ev.positive_positions([4, 2, 7, 0, 1], [2, 4, 7])
    assert ev.compute_ap(positions, 3) == 1.0
    assert ev.compute_ap_report(positions, 3) == 1.0


def test_junk_at_rank_one_does_not_hurt():
    with_junk = ev.positive_positions([9, 10, 11, 12, 13, 14], [10, 11, 13], junk=[9])
    assert with_junk.tolist() == [0, 1, 3]
    assert ev.compute_ap(with_junk, 3) == pytest.approx(65 / 72)
    # The same ranking with 9 counted as a plain negative scores lower.
    as_negative = ev.positive_positions([9, 10, 11, 12, 13, 14], [10, 11, 13])
    assert ev.compute_ap(as_negative, 3) < 65 / 72


def test_junk_between_positives_is_skipped():
    positions = ev.positive_positions([1, 50, 51, 2, 3], [1, 2], junk=[50, 51])
    assert positions.tolist() == [0, 1]
    assert ev.compute_ap(positions, 2) == 1.0


def test_compute_ap_matches_revisitop_loop():
    # revisitop's compute_ap, written as its loop, on one fixed case.
    positions = np.array([0, 3, 4, 9])
    expected = 0.0
    for j, rank in enumerate(positions):
        p0 = 1.0 if rank == 0 else j / rank
        p1 = (j + 1) / (rank + 1)
        expected += (p0 + p1) / 2 / 6
    assert ev.compute_ap(positions, 6) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(20))
def test_compute_ap_matches_independent_oracle(seed):
    rng = np.random.default_rng(seed)
    n_db = int(rng.integers(5, 60))
    ranking = rng.permutation(n_db)[: int(rng.integers(1, n_db + 1))]
    ids = rng.permutation(n_db)
    n_pos = int(rng.integers(1, n_db // 2 + 1))
    n_junk = int(rng.integers(0, n_db // 3 + 1))
    positives, junk = ids[:n_pos], ids[n_pos : n_pos + n_junk]
    positions = ev.positive_positions(ranking, positives, junk)
    assert ev.compute_ap(positions, n_pos) == pytest.approx(_oracle_ap(ranking, positives, junk), abs=1e-12)
    assert ev.compute_ap_report(positions, n_pos) == pytest.approx(
        _oracle_report_ap(ranking, positives, junk), abs=1e-12
    )
    recall, precision = ev.precision_recall(ranking, positives, junk)
    assert np.trapezoid(precision, recall) == pytest.approx(_oracle_ap(ranking, positives, junk), abs=1e-12)


def test_compute_ap_refuses_bad_count():
    with pytest.raises(ValueError):
        ev.compute_ap([0, 1], 0)
    with pytest.raises(ValueError):
        ev.compute_ap([0, 1, 2], 2)


def test_precision_at_follows_revisitop():
    # Positives at ranks 1, 2, 4: P@1 = 1; P@5 and P@10 divide by the last
    # positive's rank (4), not by k, as revisitop does.
    np.testing.assert_allclose(ev.precision_at([0, 1, 3], (1, 5, 10)), [1.0, 0.75, 0.75])
    np.testing.assert_allclose(ev.precision_at([2, 7, 12], (1, 5, 10)), [0.0, 1 / 5, 2 / 10])
    np.testing.assert_array_equal(ev.precision_at([], (1, 5)), [0.0, 0.0])


def test_precision_recall_curve_points():
    recall, precision = ev.precision_recall([5, 6, 7, 8], [5, 8], junk=[6])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1, 1, 0.5, 2 / 3])
    with pytest.raises(ValueError):
        ev.precision_recall([1, 2], [])


def test_protocol_junk_sets():
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}]
    sets = {p: ev.protocol_gnd(gnd, p)[0] for p in ("easy", "medium", "hard")}
    assert sorted(sets["easy"]["ok"]) == [0] and sorted(sets["easy"]["junk"]) == [1, 2]
    assert sorted(sets["medium"]["ok"]) == [0, 1] and sorted(sets["medium"]["junk"]) == [2]
    assert sorted(sets["hard"]["ok"]) == [1] and sorted(sets["hard"]["junk"]) == [0, 2]
    classic = ev.protocol_gnd([{"ok": [3, 4], "junk": [5]}], "classic")[0]
    assert sorted(classic["ok"]) == [3, 4] and sorted(classic["junk"]) == [5]
    with pytest.raises(ValueError):
        ev.protocol_gnd(gnd, "classic")
    with pytest.raises(ValueError):
        ev.protocol_gnd(gnd, "extreme")


def test_evaluate_ranks_protocols_by_hand():
    # db: 0 easy, 1 hard, 2 junk, 3 and 4 negatives. Ranking: 2, 3, 1, 0, 4.
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}]
    ranks = np.array([[2, 3, 1, 0, 4]])
    result = ev.evaluate_ranks(ranks, gnd, "revisited")
    assert list(result) == ["easy", "medium", "hard"]
    # Easy: junk {1, 2} removed -> 3, 0, 4; easy image at position 1.
    assert result["easy"]["map"] == pytest.approx((0 + 1 / 2) / 2)
    # Medium: junk {2} removed -> 3, 1, 0, 4; positives at positions 1, 2.
    assert result["medium"]["map"] == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # Hard: junk {0, 2} removed -> 3, 1, 4; hard image at position 1.
    assert result["hard"]["map"] == pytest.approx((0 + 1 / 2) / 2)
    assert result["hard"]["mp_at"] == {1: 0.0, 5: pytest.approx(0.5), 10: pytest.approx(0.5)}
    assert result["medium"]["report_map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert all(result[p]["n_queries"] == 1 for p in result)


def test_query_without_positives_is_skipped():
    # Query 1 has easy images only: skipped under Hard, used under Easy.
    gnd = [
        {"easy": [0], "hard": [1], "junk": []},
        {"easy": [2], "hard": [], "junk": []},
    ]
    ranks = np.array([[1, 0, 2], [0, 1, 2]])
    result = ev.evaluate_ranks(ranks, gnd, "revisited")
    assert result["hard"]["n_queries"] == 1 and result["hard"]["n_skipped"] == 1
    assert math.isnan(result["hard"]["aps"][1])
    assert result["hard"]["map"] == 1.0  # only query 0: hard image first
    assert result["easy"]["n_queries"] == 2
    # Easy: query 0 has hard 1 as junk -> 0 first (AP 1); query 1 finds 2 third (AP (0 + 1/3)/2).
    assert result["easy"]["map"] == pytest.approx((1 + (1 / 3) / 2) / 2)


def test_no_usable_query_gives_nan_not_error():
    result = ev.compute_map(np.array([[0, 1]]), [{"ok": [], "junk": []}])
    assert result["n_queries"] == 0 and math.isnan(result["map"])


def test_classic_protocol_ignores_junk():
    gnd = [{"ok": [1, 2], "junk": [0]}]
    result = ev.evaluate_ranks(np.array([[0, 1, 3, 2]]), gnd, "classic")
    assert list(result) == ["classic"]
    # 0 dropped -> 1, 3, 2: positives at positions 0 and 2.
    assert result["classic"]["map"] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert result["classic"]["mp_at"][1] == 1.0


def test_evaluate_ranks_matches_oracle_on_random_queries():
    rng = np.random.default_rng(7)
    n_db, n_q = 40, 6
    gnd, expected = [], {"easy": [], "medium": [], "hard": []}
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    for i in range(n_q):
        ids = rng.permutation(n_db)
        g = {"easy": ids[:4], "hard": ids[4:7], "junk": ids[7:10]}
        gnd.append(g)
        expected["easy"].append(_oracle_ap(ranks[i], g["easy"], np.r_[g["junk"], g["hard"]]))
        expected["medium"].append(_oracle_ap(ranks[i], np.r_[g["easy"], g["hard"]], g["junk"]))
        expected["hard"].append(_oracle_ap(ranks[i], g["hard"], np.r_[g["junk"], g["easy"]]))
    result = ev.evaluate_ranks(ranks, gnd, "revisited")
    for protocol, aps in expected.items():
        np.testing.assert_allclose(result[protocol]["aps"], aps, atol=1e-12)
        assert result[protocol]["map"] == pytest.approx(np.mean(aps))


def test_evaluate_ranks_refuses_bad_input():
    gnd = [{"ok": [0], "junk": []}]
    with pytest.raises(ValueError, match="row-major"):
        ev.evaluate_ranks(np.zeros((3, 2), dtype=int), gnd, "classic")
    with pytest.raises(ValueError, match="integer"):
        ev.evaluate_ranks(np.zeros((1, 2)), gnd, "classic")
    with pytest.raises(ValueError, match="kind"):
        ev.evaluate_ranks(np.zeros((1, 2), dtype=int), gnd, "holidays")


def test_messages_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^n_positives must be >= 1 and >= 3 found positives, got 2$"):
        ev.compute_ap([0, 1, 2], 2)
    with pytest.raises(ValueError, match=r"^n_positives must be >= 1 and >= 0 found positives, got 0$"):
        ev.compute_ap_report([], 0)
    with pytest.raises(ValueError, match=r"^kappas must be >= 1, got \[0, 5\]$"):
        ev.precision_at([0], (0, 5))
    with pytest.raises(ValueError, match="^a precision-recall curve needs at least one positive$"):
        ev.precision_recall([1, 2], [])
    with pytest.raises(ValueError, match=r"^unknown protocol 'extreme'; expected one of \['classic', 'easy', 'hard', 'medium'\]$"):
        ev.protocol_gnd([], "extreme")
    with pytest.raises(ValueError, match=r"^ground truth of query 1 has no \['ok'\] for protocol 'classic'$"):
        ev.protocol_gnd([{"ok": [1]}, {"easy": [1]}], "classic")
    with pytest.raises(ValueError, match=r"^ranks must be a 2-D integer array \(n_queries, n_ranked\), got int64 \(3,\)$"):
        ev.compute_map(np.arange(3), [{"ok": [0]}])
    with pytest.raises(ValueError, match=r"^ranks has 2 rows but the ground truth has 1 queries; ranks is row-major"):
        ev.compute_map(np.zeros((2, 3), dtype=np.int64), [{"ok": [0]}])
    with pytest.raises(ValueError, match=r"^unknown dataset kind 'holidays'; expected one of \['classic', 'revisited'\]$"):
        ev.evaluate_ranks(np.zeros((1, 2), dtype=int), [{"ok": [0]}], "holidays")


def test_compute_map_reports_every_part():
    gnd = [{"ok": [1, 2], "junk": [0]}, {"ok": [], "junk": []}, {"ok": [3]}]
    ranks = np.array([[0, 1, 3, 2], [0, 1, 2, 3], [3, 2, 1, 0]])
    result = ev.compute_map(ranks, gnd, kappas=(1, 2))
    # Query 0: junk 0 dropped -> 1, 3, 2: positives at 0 and 2. Query 2: its positive first, no junk key.
    ap0 = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    np.testing.assert_allclose(result["aps"], [ap0, np.nan, 1.0])
    np.testing.assert_allclose(result["report_aps"], [(1 + 2 / 3) / 2, np.nan, 1.0])
    np.testing.assert_allclose(result["precisions"], [[1.0, 0.5], [np.nan, np.nan], [1.0, 1.0]])
    assert result["map"] == pytest.approx((ap0 + 1) / 2)
    assert result["report_map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert result["mp_at"] == {1: 1.0, 2: 0.75}
    assert (result["n_queries"], result["n_skipped"]) == (2, 1)
    empty = ev.compute_map(np.zeros((1, 2), dtype=int), [{"ok": []}], kappas=(1, 5))
    assert math.isnan(empty["report_map"]) and all(math.isnan(v) for v in empty["mp_at"].values())
    assert list(empty["mp_at"]) == [1, 5]
    by_protocol = ev.evaluate_ranks(ranks[:1], gnd[:1], "classic", kappas=(3,))
    assert by_protocol["classic"]["mp_at"] == {3: pytest.approx(2 / 3)}
    assert list(ev.compute_map(ranks[:1], gnd[:1])["mp_at"]) == [1, 5, 10]


def test_positions_in_a_ranking_with_junk_by_hand():
    assert ev.positive_positions([5, 6, 7, 8, 9], [7, 9], junk=[5, 8]).tolist() == [1, 2]
    assert ev.positive_positions([5, 6, 7], [8]).tolist() == []
    assert ev.positive_positions(np.array([[5, 6], [7, 8]]), [8]).tolist() == [3]
    assert ev.positive_positions([5, 6, 7], [7]).dtype == np.int64
    recall, precision = ev.precision_recall([5, 6, 7, 8], [8, 8, 5])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1, 1, 0.5, 1 / 3, 0.5])


def test_protocol_sets_are_int64_arrays_even_when_empty():
    (easy,) = ev.protocol_gnd([{"easy": [], "hard": [], "junk": []}], "easy")
    assert easy["ok"].dtype == np.int64 and easy["junk"].dtype == np.int64
    (classic,) = ev.protocol_gnd([{"ok": [1, 2]}], "classic")  # no junk key at all
    assert classic["junk"].dtype == np.int64 and classic["junk"].tolist() == [] and classic["ok"].tolist() == [1, 2]


def test_no_usable_query_gives_nan_without_numpy_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mean of nothing would warn "Mean of empty slice"
        result = ev.compute_map(np.array([[0, 1]]), [{"ok": [], "junk": []}])
    assert math.isnan(result["map"]) and math.isnan(result["mp_at"][1])
