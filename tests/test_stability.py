"""benchmarks.stability: halves, few photos and leave one landmark out on hand-built collections, scored by hand."""

import numpy as np
import pytest

from benchmarks.stability import (
    few_photo_databases, few_photos_aps, landmark_of, leave_one_landmark_out, mean_ap, query_aps, query_landmarks,
    restrict_gnd,
)
from retrieval.defaults import Recipe


def test_restrict_gnd_keeps_the_rows_of_the_half_renumbered():
    gnd = [{"easy": np.array([0, 3, 5]), "hard": np.array([2]), "junk": np.array([4]), "bbx": [0, 0, 1, 1]},
           {"easy": np.array([1]), "hard": np.array([], np.int64), "junk": np.array([], np.int64)}]
    half = np.array([2, 3, 4])  # database rows 2, 3, 4 become 0, 1, 2
    out = restrict_gnd(gnd, half)
    assert [{k: v.tolist() for k, v in q.items()} for q in out] == [
        {"easy": [1], "hard": [0], "junk": [2]},
        {"easy": [], "hard": [], "junk": []},
    ]


# A toy collection: place A's photos 0, 1 (easy) and 2 (hard), place B's 3 and 4 (easy), and two
# photos of neither, 5 and 6. Query A is e0 and query B is e9; row r is a_r e0 + b_r e9 + the rest
# on its own axis, so its cosine with query A is a_r and with query B b_r.
A_B = [(0.9, 0.0), (0.6, 0.0), (0.5, 0.0), (0.1, 0.9), (0.2, 0.8), (0.7, 0.5), (0.3, 0.85)]
DB_IDS = ["x_a_000", "x_a_001", "x_a_002", "x_b_003", "x_b_004", "x_c_005", "x_c_006"]
GND = [{"easy": np.array([0, 1]), "hard": np.array([2]), "junk": np.array([], np.int64)},
       {"easy": np.array([3, 4]), "hard": np.array([], np.int64), "junk": np.array([], np.int64)}]
PLAIN = Recipe(dba=0, qe=0)  # no re-ranking: the order is the cosine's


def toy_rows() -> tuple[np.ndarray, np.ndarray]:
    db = np.zeros((7, 10), np.float32)
    for r, (a, b) in enumerate(A_B):
        db[r, 0], db[r, 9], db[r, r + 1] = a, b, np.sqrt(1 - a * a - b * b)
    queries = np.zeros((2, 10), np.float32)
    queries[0, 0] = queries[1, 9] = 1.0
    return db, queries


# By hand (revisitop's AP: each positive adds (i / r + (i + 1) / (r + 1)) / 2 / positives, i-th positive at rank r).
# Query A ranks 0 (.9), 5 (.7), 1 (.6), 2 (.5), 6, 4, 3: Medium positives at 0, 2, 3; Hard: 2 after 5, 0 and 1 junk.
FULL_A = ((1 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 3, (0 + 1 / 2) / 2 / 1)
# Query B ranks 3 (.9), 6 (.85), 4 (.8): Medium positives at 0 and 2; no hard positive.
FULL_B = ((1 + (1 / 2 + 2 / 3) / 2) / 2, np.nan)
# Few photos, 2 of A's 3 kept: Medium and Hard of query A for each pair kept (no hard positive kept: none).
FEW_A = {(0, 1): ((1 + (1 / 2 + 2 / 3) / 2) / 2, np.nan),
         (0, 2): ((1 + (1 / 2 + 2 / 3) / 2) / 2, 0.25),
         (1, 2): ((1 / 2 / 2 + (1 / 2 + 2 / 3) / 2) / 2, 0.25)}


def test_query_landmarks_follow_the_positives_not_the_query_name():
    assert landmark_of("paris_defense_000038") == "paris_defense"
    assert query_landmarks(GND, DB_IDS, ["q_b_1", "q_b_2"]) == ["x_a", "x_b"]
    assert query_landmarks([{"easy": [], "hard": []}], DB_IDS, ["q_z_9"]) == ["q_z"]


def test_full_setting_per_query_aps_by_hand():
    db, queries = toy_rows()
    np.testing.assert_allclose(query_aps(db, queries, GND, "revisited", PLAIN), [FULL_A, FULL_B], rtol=1e-6)


def test_few_photos_keep_five_of_the_querys_place_and_every_other_photo():
    landmarks = query_landmarks(GND, DB_IDS, ["qa", "qb"])
    databases = few_photo_databases(7, GND, landmarks, keep=2, draws=3, seed=0)
    assert [(d.landmark, d.draw) for d in databases] == [("x_a", 0), ("x_a", 1), ("x_a", 2), ("x_b", 0), ("x_b", 1),
                                                         ("x_b", 2)]
    for d in databases:
        place = {"x_a": {0, 1, 2}, "x_b": {3, 4}}[d.landmark]
        assert set(d.kept) <= place and len(d.kept) == 2
        assert set(d.rows.tolist()) == (set(range(7)) - place) | set(d.kept.tolist())
        assert d.queries.tolist() == [0 if d.landmark == "x_a" else 1]
    # Seeded: the same draws again; another seed draws others.
    again = few_photo_databases(7, GND, landmarks, keep=2, draws=3, seed=0)
    assert [d.kept.tolist() for d in again] == [d.kept.tolist() for d in databases]


def test_few_photos_score_each_query_on_its_own_place_subsampled_by_hand():
    db, queries = toy_rows()
    landmarks = query_landmarks(GND, DB_IDS, ["qa", "qb"])
    databases = few_photo_databases(7, GND, landmarks, keep=2, draws=3, seed=0)
    pairs = [tuple(d.kept.tolist()) for d in databases if d.landmark == "x_a"]
    medium = np.mean([FEW_A[p][0] for p in pairs])
    hard = [FEW_A[p][1] for p in pairs if not np.isnan(FEW_A[p][1])]
    got = few_photos_aps(db, queries, GND, "revisited", PLAIN, databases)
    # Query A: the mean over the draws (Hard over those that keep its hard positive); B keeps both its photos.
    np.testing.assert_allclose(got[0], [medium, np.mean(hard) if hard else np.nan], rtol=1e-6)
    np.testing.assert_allclose(got[1], FULL_B, rtol=1e-6)
    assert mean_ap(got) == {"medium": pytest.approx((medium + FULL_B[0]) / 2, abs=1e-6),
                            "hard": pytest.approx(np.mean(hard) if hard else np.nan, abs=1e-6, nan_ok=True)}


def test_leave_one_landmark_out_scores_each_place_with_the_option_chosen_without_it():
    landmarks = ["a", "a", "b", "c"]
    aps = {"x": np.array([[0.9, 0.8], [0.7, np.nan], [0.2, 0.1], [0.6, 0.6]]),
           "y": np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.9], [0.4, 0.2]])}
    chosen, held_out = leave_one_landmark_out(aps, landmarks)
    # Without a: x (0.2 + 0.6) / 2 and (0.1 + 0.6) / 2 -> 0.375; y 0.65 and 0.55 -> 0.6: y.
    # Without b: x 2.2 / 3 and 0.7 (NaN left out) -> 0.717; y 1.4 / 3 and 1.2 / 3 -> 0.433: x.
    # Without c: x 0.6 and 0.45 -> 0.525; y 1.9 / 3 twice -> 0.633: y.
    assert chosen == {"a": "y", "b": "x", "c": "y"}
    np.testing.assert_allclose(held_out, [[0.5, 0.5], [0.5, 0.5], [0.2, 0.1], [0.4, 0.2]])
    assert mean_ap(held_out) == {"medium": pytest.approx(0.4), "hard": pytest.approx(0.325)}
