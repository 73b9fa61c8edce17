"""Hand-written notes on surviving mutants, read by `benchmarks.mutation`.

EQUIVALENT: mutants that cannot change any outcome, with the reason; they do not count against
the score. NOTES: survivors that could matter, with why no test catches them yet. Keys are
mutmut's mutant names (`module.x_function__mutmut_N`, methods `xǁClassǁmethod__mutmut_N`); a
name's number changes when its function is edited, so review the entries of a function after
changing it (the survivors file shows each mutant's diff next to its note).
"""

_S = "retrieval.search."
_R = "retrieval.rerank."
_E = "retrieval.evaluate."
_N = "retrieval.engine."
_I = "retrieval.index."
_A = "app."
_B = "retrieval.build."
_SAME_RESULTS = ("both backends return the same rows and scores by design (the tie order), so which one "
                 "runs only changes speed, which the benchmarks measure")
_SUPERSET = "a larger candidate set than needed: the same k best after rescoring, only slower"
_DEFAULT_AXIS = "numpy's default axis is the last, which is axis 1 of these 2-D arrays"
_UPPER_EINSUM = "einsum subscripts in capitals name the same axes"
_INT_DIVISION = "integer positions or counts: every formula divides them by floats, so the values are the same"

EQUIVALENT: dict[str, str] = {
    # search
    _S + "x__best_first__mutmut_26": _UPPER_EINSUM,
    _S + "x__best_first__mutmut_35": _UPPER_EINSUM,
    _S + "xǁSearcherǁ__init____mutmut_3": "the KD-tree's leaf size changes its speed, not its answers",
    _S + "xǁSearcherǁ__init____mutmut_27": "the KD-tree's leaf size changes its speed, not its answers",
    _S + "xǁSearcherǁ__init____mutmut_21": _SAME_RESULTS,
    _S + "xǁSearcherǁ__init____mutmut_22": _SAME_RESULTS,
    _S + "xǁSearcherǁ__init____mutmut_23": _SAME_RESULTS,
    _S + "xǁSearcherǁ__init____mutmut_28": _SAME_RESULTS,
    _S + "xǁSearcherǁ__init____mutmut_29": _SAME_RESULTS,
    _S + "xǁSearcherǁ__init____mutmut_30": _SAME_RESULTS,
    _S + "xǁSearcherǁsearch__mutmut_35": "distances between unit rows are at most 2, where 2 d >= d^2: " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_39": _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_40": _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_43": _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_50": "a distance exactly equal to the reach, sqrt(d^2 + 2e-5), never happens "
                                         "in floating point; and the radius query would only add candidates",
    _S + "xǁSearcherǁsearch__mutmut_72": _DEFAULT_AXIS,
    _S + "xǁSearcherǁsearch__mutmut_76": "partitioning at k - 2 makes the threshold a value at most the k-th "
                                         "best: " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_82": "a score exactly at the k-th minus the tolerance, on the edge of the "
                                         "candidate band; the k-th itself is always inside",
    # rerank
    _R + "x__weighted_sum__mutmut_9": _UPPER_EINSUM,
    _R + "x__weighted_sum__mutmut_30": _UPPER_EINSUM,
    _R + "x__weighted_sum__mutmut_11": "float64 weights: the sum is formed in float64, then l2_normalize returns "
                                       "float32 rows equal to 1e-7",
    _R + "x_database_augmentation__mutmut_26": "blocks of one row: the same rows, computed one at a time",
    _R + "x_database_augmentation__mutmut_31": "None stored in a float array is NaN, which argpartition puts last, "
                                               "as it does -inf: the row is still never its own neighbour",
    _R + "x_database_augmentation__mutmut_45": _DEFAULT_AXIS,
    # evaluate
    _E + "x__ap_positions__mutmut_2": _INT_DIVISION,
    _E + "x_compute_ap__mutmut_8": _INT_DIVISION,
    _E + "x_compute_ap__mutmut_10": _INT_DIVISION,
    _E + "x_compute_ap_report__mutmut_9": _INT_DIVISION,
    _E + "x_compute_ap_report__mutmut_12": _INT_DIVISION,
    _E + "x_compute_map__mutmut_69": "the mean over all axes of a 1-D array is its mean over axis 0",
    _E + "x_compute_map__mutmut_73": 'float("NAN") is float("nan")',
    # engine
    **{_N + f"xǁSearchEngineǁwarm_up__mutmut_{i}": "the warm-up query's pixels, shape and k do not matter: it "
       "only builds the network's graph before the first user" for i in (9, 12, 17, 18, 19, 20, 21, 22)},
    # index
    _I + "x__fsync_dir__mutmut_4": "opened in text mode instead of binary: fsync of its descriptor is the same",
    **{_I + f"x_file_sha256__mutmut_{i}": "another chunk size (or the whole file at once): the same sha256"
       for i in (13, 15, 16)},
    **{_I + f"x_load_index__mutmut_{i}": "allow_pickle=None or left out: np.load's default is False"
       for i in (62, 64, 71, 73, 80, 82, 144, 146, 153, 155)},
    **{_I + f"x_load_index__mutmut_{i}": "the whitening arrays keep the dtype they were saved in (float32); "
       "apply_whitening returns float32 rows either way" for i in (182, 183)},
    **{_I + f"x__versions__mutmut_{i}": "the PyPI name 'tensorflow' is not installed here (tensorflow-cpu is), "
       "so looking up another missing name records the same versions" for i in (10, 11)},
    # app
    _A + "x_check_k__mutmut_5": "an empty string instead of None for an unreadable K: it differs from K too, "
                                "so K is refused with the same message",
    _A + "x_read_link__mutmut_30": "-2 instead of -1 for an unreadable k: both are out of range and replaced",
    _A + "x_search__mutmut_59": "a query of exactly 2048 px is 'downscaled' to 2048 px: the same image",
    _A + "x_preview_html__mutmut_16": "PIL reads format names in any case",
    _A + "xǁThumbnailsǁpng__mutmut_8": "PIL reads format names in any case",
    _A + "x_preview_html__mutmut_22": "Python codec names are case-insensitive",
    _A + "xǁThumbnailsǁimage__mutmut_1": "convert(None) copies the image; thumbnails are RGB JPEGs (make_thumbnail)",
    _A + "xǁThumbnailsǁis_unedited__mutmut_11": "convert(None) copies the image; the editor's images are RGB "
                                                "already (load_image converts)",
    **{_A + f"xǁThumbnailsǁ_file__mutmut_{i}": "the staging file's suffix: it is renamed to the final name"
       for i in (7, 9)},
    # build
    **{_B + f"x_build_index__mutmut_{i}": "batch size and decoding threads change speed, not descriptors "
       "(batched extraction equals one at a time, tests/test_features.py)" for i in (1, 2, 66, 67)},
    **{_B + f"x_build_index__mutmut_{i}": "another flush schedule by default: 257 images or 31 s instead of 256 "
       "or 30 (the schedule itself is tested with small values)" for i in (10, 11)},
    _B + "x_build_index__mutmut_96": "a flush when exactly flush_seconds have passed, a tie of two clock readings",
    _B + "x_build_index__mutmut_120": "the cached vectors are float32 already",
    _B + "x_build_index__mutmut_145": "DBA with k = 0 only normalises rows that are unit-length already",
    _B + "x_build_index__mutmut_15": "the silent logger's return value is never used",
    **{_B + f"xǁ_Cacheǁ_count__mutmut_{i}": "allow_pickle=None or left out: np.load's default is False"
       for i in (4, 6)},
    _B + "xǁ_Cacheǁ_count__mutmut_7": "allow_pickle=True on shards this code wrote: they hold no object arrays",
    _B + "xǁ_Cacheǁ_count__mutmut_8": "compact counts only when there is one shard, where = and += agree",
}

NOTES: dict[str, str] = {
    **{_A + f"xǁThumbnailsǁ_file__mutmut_{i}": "staging in the system temp folder instead of the thumbnail "
       "folder: the same on one filesystem; across filesystems the rename would fail, which a test here "
       "cannot arrange" for i in (6, 8)},
    **{_I + f"x__swap_in__mutmut_{i}": "ignore_errors matters only when deleting the replaced index fails "
       "(permissions, a busy network share), which a test cannot provoke portably" for i in (25, 27, 28)},
    **{_I + f"x_save_index__mutmut_{i}": "ignore_errors matters only when cleaning up after a failed save also "
       "fails, which a test cannot provoke portably" for i in (183, 185, 186)},
}
