"""benchmarks.stability: the ground truth of a half of the database, renumbered by hand."""

import numpy as np

from benchmarks.stability import restrict_gnd


def test_restrict_gnd_keeps_the_rows_of_the_half_renumbered():
    gnd = [{"easy": np.array([0, 3, 5]), "hard": np.array([2]), "junk": np.array([4]), "bbx": [0, 0, 1, 1]},
           {"easy": np.array([1]), "hard": np.array([], np.int64), "junk": np.array([], np.int64)}]
    half = np.array([2, 3, 4])  # database rows 2, 3, 4 become 0, 1, 2
    out = restrict_gnd(gnd, half)
    assert [{k: v.tolist() for k, v in q.items()} for q in out] == [
        {"easy": [1], "hard": [0], "junk": [2]},
        {"easy": [], "hard": [], "junk": []},
    ]
