"""Hand-written notes on surviving mutants, read by `tests.mutation`.

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
_V = "retrieval.verify."
_W = "retrieval.rows."
_X = "retrieval.ann."
_D = "retrieval.diffusion."
_Q = "retrieval.query."
_ONE_D = "row numbers are a 1-D sequence (the documented contract): reshape(-2) and reshape(None) leave it as it is"
_BYTES = ("the buffer covers the whole block whatever its view: the first preadv fills it, and the loop "
          "ends on its length")
_CV_DEFAULT = ("None or a left-out argument is OpenCV's default, which is the value passed "
               "(findHomography: maxIters 2000, confidence 0.995; estimateAffine*2D and findFundamentalMat: RANSAC)")
_CV_CONFIDENCE = ("OpenCV's default confidence (0.99) or iteration cap (1000) instead of 0.995 / 2000 only lets "
                  "RANSAC stop sooner on hard pairs; clean or planted matches reach the same count either way")
_SAME_RESULTS = ("both backends return the same rows and scores by design (the tie order), so which one "
                 "runs only changes speed, which the benchmarks measure")
_SUPERSET = "a larger candidate set than needed: the same k best after rescoring, only slower"
_DEFAULT_AXIS = "numpy's default axis is the last, which is axis 1 of these 2-D arrays"
_UPPER_EINSUM = "einsum subscripts in capitals name the same axes"
_TEXT_MODE_FSYNC = "opened in text mode instead of binary: fsync of its descriptor is the same"
_INT_DIVISION = "integer positions or counts: every formula divides them by floats, so the values are the same"

EQUIVALENT: dict[str, str] = {
    # search
    _S + "x__best_first__mutmut_26": _UPPER_EINSUM,
    _S + "x__best_first__mutmut_35": _UPPER_EINSUM,
    _S + "xǁSearcherǁ__init____mutmut_3": "the KD-tree's default leaf size (41 instead of 40) changes its speed, "
                                          "not its answers",
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
    _I + "x__fsync_dir__mutmut_4": _TEXT_MODE_FSYNC,
    **{_I + f"x_file_sha256__mutmut_{i}": "another chunk size (or the whole file at once): the same sha256"
       for i in (13, 15, 16)},
    **{_I + f"x__versions__mutmut_{i}": "the PyPI name 'tensorflow' is not installed here (tensorflow-cpu is), "
       "so looking up another missing name records the same versions" for i in (10, 11)},
    # app
    _A + "x_read_link__mutmut_30": "-2 instead of -1 for an unreadable k: both are out of range and replaced",
    **{_A + f"xǁThumbnailsǁ_file__mutmut_{i}": "the staging file's suffix: it is renamed to the final name"
       for i in (7, 9)},
    # build
    **{_B + f"x_build_index__mutmut_{i}": "batch size and decoding threads change speed, not descriptors "
       "(batched extraction equals one at a time, tests/test_features.py)" for i in (1, 2)},
    **{_B + f"x_build_index__mutmut_{i}": "another flush schedule by default: 257 images or 31 s instead of 256 "
       "or 30 (the schedule itself is tested with small values)" for i in (10, 11)},
    _B + "x_build_index__mutmut_15": "the silent logger's return value is never used",
    **{_B + f"xǁ_Cacheǁ_count__mutmut_{i}": "allow_pickle=None or left out: np.load's default is False"
       for i in (4, 6)},
    _B + "xǁ_Cacheǁ_count__mutmut_7": "allow_pickle=True on shards this code wrote: they hold no object arrays",
    _B + "xǁ_Cacheǁ_count__mutmut_8": "compact counts only when there is one shard, where = and += agree",
    # verify (names of the current code: _ransac_inliers' estimator calls moved to _ransac_mask, and
    # count_inliers' checks and matching to _tentative, after the last run)
    **{_V + f"x__ransac_mask__mutmut_{i}": _CV_DEFAULT for i in (9, 10, 15, 16, 23, 25, 29, 31, 39, 41, 45, 47)},
    _V + "x__ransac_inliers__mutmut_10": "np.count_nonzero(None) is 0, as the None branch returns",
    **{_V + f"x_count_inliers__mutmut_{i}": "the coordinates from _tentative are float32 already"
       for i in (37, 39, 43, 45)},
    _V + "x_count_inliers__mutmut_3": "at_least 1 by default: max(_MIN_MATCHES[model], 1) is the same floor, "
                                      "every model needs 2 or more matches",
    _V + "x__grey__mutmut_39": "an image exactly max_side long is resized to its own size: cv2.resize copies it",
    **{_V + f"x__grey__mutmut_{i}": "a side is raised to 2 instead of 1 only for a sliver over max_side times "
       "longer than wide, where SIFT (5-pixel border) finds no keypoints at 1 or 2 pixels" for i in (46, 54)},
    _V + "x_detect_sift__mutmut_24": "OpenCV's SIFT returns descriptors None exactly when it finds no keypoints",
    **{_V + f"x_detect_sift__mutmut_{i}": "the tuples hold Python floats: np.array makes float64 anyway"
       for i in (40, 42)},
    **{_V + f"x_detect_sift__mutmut_{i}": "OpenCV saturates SIFT values to [0, 255], so only a raised floor "
       "(tested) changes them" for i in (65, 66, 72)},
    _V + "x_match_features__mutmut_50": "keep starts all True, so keep = x and keep &= x agree",
    _V + "x_match_features__mutmut_57": "with one row in b the second similarity is -inf, an infinite distance "
                                        "that every match passes",
    _V + "x_rerank_by_inliers__mutmut_38": "numpy reads sort kinds in any case",
    _V + "x_spatial_rerank__mutmut_21": "at_least only skips RANSAC where the count could not reach min_inliers; "
                                        "such images fail the re-ranking either way, so only speed changes",
    **{_V + f"x_root_sift__mutmut_{i}": "d is float32 already, so the result is" for i in (30, 32)},
    **{_V + f"xǁFeatureStoreǁfrom_sift__mutmut_{i}": "FeatureStore() turns the keypoints into float32"
       for i in (13, 15)},
    _V + "x__tentative__mutmut_47": "reshape(-2, 4) flattens like reshape(-1, 4): numpy takes any negative as unknown",
    # ann
    **{_X + f"x__neighbours__mutmut_{i}": "a missing neighbour is marked negative (-1 or -2) and masked by cand < 0 "
       "either way, and the row it is read from (0 or 1) is masked with it" for i in (55, 61)},
    _X + "x__neighbours__mutmut_82": _UPPER_EINSUM,
    _X + "x__neighbours__mutmut_83": "numpy 2's unique returns the inverse in the input's shape: the reshape "
                                     "changes nothing",
    _X + "x__neighbours__mutmut_84": "None stored in a float array is NaN, which the sort puts after every "
                                     "number, as it does -inf: a missing neighbour still comes last",
    **{_X + f"x__neighbours__mutmut_{i}": "lexsort's default axis is the last, axis 1 of these 2-D arrays"
       for i in (92,)},
    **{_X + f"x_exact_search_blocks__mutmut_{i}": "lexsort's, argpartition's and take_along_axis' default "
       "axis is the last, axis 1 of these 2-D arrays" for i in (80, 94, 103, 110)},
    **{_X + f"x_exact_search_blocks__mutmut_{i}": "the starting top-k is empty (m, 0): its fill value and "
       "dtype are never read, concatenation takes the blocks' float32 scores and int64 rows"
       for i in (14, 20)},
    **{_X + f"x_exact_search_blocks__mutmut_{i}": "taking a whole block, or partitioning one exactly k wide, "
       "keeps all of the block's top k before the merge sorts them: the same top k" for i in (50,)},
    **{_X + f"x_ann_neighbours__mutmut_{i}": "the re-ranking depth or block size changes speed; neighbours "
       "within recall, checked against exact ones with a floor" for i in (1, 2)},
    # rows
    **{_W + f"x_take_rows__mutmut_{i}": _ONE_D for i in (2, 8)},
    **{_W + f"x_take_rows__mutmut_{i}": "integer row numbers (the contract) index the same rows as int64"
       for i in (4, 6)},
    _W + "x_take_rows__mutmut_34": "out is 2-D: reshape(-2), like reshape(-1), flattens it",
    **{_W + f"x_read_block__mutmut_{i}": _BYTES + " (renumbered on 2026-12-02)" for i in (37, 38)},
    _W + "x_read_block__mutmut_40": "out is 2-D: reshape(-2), like reshape(-1), flattens it (renumbered)",
    _W + "x__source__mutmut_20": "only a memmap gets this far, and every memmap has a filename attribute (renumbered)",
    _W + "x__source__mutmut_27": "the size of the file at the path instead of the held one: when they differ the rows "
                                 "are read through the mapping, which shows the same held file",
}

NOTES: dict[str, str] = {
    **{_V + f"x_inlier_matches__mutmut_{i}": "the branch for no model at all: OpenCV 5 returns an all-zero mask "
       "rather than None when none fits, so it is not reached (as x__ransac_inliers__mutmut_12)"
       for i in (40, 41, 42, 43, 44, 45)},
    _V + "x_inlier_matches__mutmut_2": "the seed only matters for RANSAC on hard pairs, where which count a seed "
                                       "gives cannot be predicted in a test (as count_inliers' seed)",
    _V + "x_spatial_rerank__mutmut_28": "min_inliers also bounds the verification (at_least), which zeroes counts "
                                        "below it; only a count between a lower min_inliers and the default 8 "
                                        "would tell, and planting exactly such a count is not done yet",
    _W + "x__read_exactly__mutmut_9": "a read returning exactly one byte would be refused; preadv on a regular "
                                      "file returns the whole request or what is left",
    **{_W + f"x_read_block__mutmut_{i}": "without preadv the block is read through the mapping: the same values, "
       "but the pages join the process (resident memory, measured by the benchmark, not a test)" for i in (1, 2)},
    **{_V + f"x__ransac_mask__mutmut_{i}": _CV_CONFIDENCE for i in (42, 48, 54, 55, 60, 61)},
    _V + "x__ransac_inliers__mutmut_12": "OpenCV 5 returns an all-zero mask, not None, when no model fits "
                                         "(tests/test_verify.py, degenerate matches), so the None branch is not reached",
    **{_V + f"x_count_inliers__mutmut_{i}": "the seed only matters for the classic RANSAC models on hard pairs, "
       "where which count a seed gives cannot be predicted in a test; repetition with one seed is tested"
       for i in (2, 33)},
    **{_V + f"x_detect_sift__mutmut_{i}": "ties of detector response at different positions (where the position "
       "keys decide) do not occur on test images; repeated orientations share position and size"
       for i in (48, 49, 50)},
    **{_V + f"x_root_sift__mutmut_{i}": "the arithmetic in the input's precision (float64 or integers) can change "
       "only the last bit of the float32 result" for i in (3, 5)},
}

# Reviewed in a later session: verify, ann and engine survivors.
EQUIVALENT.update({
    _V + "x_inlier_matches__mutmut_23": "OpenCV 5's estimators draw from their own fixed-seeded generators: the masks "
                                        "of all four models are byte-identical after setRNGSeed(0..9), setRNGSeed(None) "
                                        "or a disturbed global generator (500 random matches), so None changes nothing",
    _X + "x__neighbours__mutmut_102": _DEFAULT_AXIS,
    _X + "x__neighbours__mutmut_111": _DEFAULT_AXIS,
    _X + "x_exact_search_blocks__mutmut_51": "a block no wider than k is partitioned at its last column instead of "
                                             "taken whole: [:, :kk] still holds every column, and the merge sorts them",
})

# Reviewed on 2026-12-02: search and rerank after the ANN and memory-map paths got their tests, and the
# app's handlers and endpoints.
_LEAF = "the KD-tree's leaf size changes its speed, not its answers"
_FLAT = ("take_rows flattens the row numbers itself (reshape(-1)); reshape(None) leaves top as it is and "
         "reshape(-2) flattens like reshape(-1): numpy takes any negative as unknown")
_NEGATIVE_AXIS = "reshape(..., -2) is reshape(..., -1): numpy takes any negative as unknown"
_INVERSE = "numpy 2's unique returns the inverse in the input's shape: reshape(None) changes nothing"
_WIDE = ("rows left in the database's dtype: float16 and float32 rows widen exactly in the mixed float32 "
         "products (bit-identical results); only float64 rows would be summed in float64, which changes at most "
         "the last bit of the float32 rows l2_normalize returns")

_NO_THUMBNAILS_IN_MATCH = ("match() takes `thumbnails` but never uses it (it reads engine.index.preview), "
                           "so passing None changes nothing")

EQUIVALENT.update({
    # search: Searcher.__init__
    _S + "xǁSearcherǁ__init____mutmut_39": _LEAF,
    # search: Searcher.search, the KD-tree's candidate band
    _S + "xǁSearcherǁsearch__mutmut_50": "distances between unit rows are at most 2, where 2 d >= d^2: " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_54": "a reach of sqrt(d^2 + 2e5) takes every row as a candidate: " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_55": "a tolerance of 1.5e-5 instead of 1e-5: " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_58": "the radius query every time: its rows within the reach include the k "
                                         "nearest (reach > the k-th distance): " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_65": "a (k+1)-th distance exactly equal to the reach, sqrt(d^2 + 2e-5), never "
                                         "happens in floating point for unit rows; and the radius query would only "
                                         "add candidates",
    # search: Searcher.search, the exact candidate band
    _S + "xǁSearcherǁsearch__mutmut_87": _DEFAULT_AXIS,
    _S + "xǁSearcherǁsearch__mutmut_91": "partitioning at k - 2 makes the threshold some score at most the k-th "
                                         "best: " + _SUPERSET,
    _S + "xǁSearcherǁsearch__mutmut_97": "a score exactly at the k-th minus the tolerance, on the edge of the "
                                         "candidate band; the k-th itself is always inside",
    # rerank: alpha_query_expansion
    _R + "x_alpha_query_expansion__mutmut_63": _FLAT,
    _R + "x_alpha_query_expansion__mutmut_65": _FLAT,
    _R + "x_alpha_query_expansion__mutmut_67": _NEGATIVE_AXIS,
    # rerank: augment_with_neighbours
    _R + "x_augment_with_neighbours__mutmut_2": "another default block size (8193 rows) changes memory and speed, "
                                                "not the rows (blocks of 3 to 13 rows are tested)",
    _R + "x_augment_with_neighbours__mutmut_42": "a step of 1 recomputes every row up to `block` times, each time "
                                                 "to the same value: only slower",
    _R + "x_augment_with_neighbours__mutmut_74": _INVERSE,
    # app: handlers
    _A + "x_check_k__mutmut_2": "int(True)/int(False) cannot raise, and the condition below refuses every bool "
                                "(isinstance(k, bool)) with the same message",
    _A + "x_decode_query__mutmut_6": "for bytes or a PIL image, str(source) is the repr of the whole file (b'...') or "
                                     "one with a memory address; no load_image message contains it, so the "
                                     "replace changes nothing",
    _A + "x_inline_jpeg__mutmut_14": "PIL reads format names in any case",
    _A + "x_inline_jpeg__mutmut_20": "Python codec names are case-insensitive",
    _A + "x_refused__mutmut_11": "gradio only tests print_exception for truth (queueing.py, routes.py, utils.py: "
                                 "`or e.print_exception`), and None is false like False",
    _A + "x_run_query__mutmut_60": "a query of exactly 2048 px is copied, then thumbnail((2048, 2048)) returns at "
                                   "once as it fits: the same pixels are searched",
    # app: endpoints
    _A + "x_http_search__mutmut_28": ("run_query uses `thumbnails` only in thumbnails.is_unedited, behind "
                                     "`source is not None`; http_search passes no source, so None is never touched"),
    _A + "x_match_api__mutmut_16": _NO_THUMBNAILS_IN_MATCH,
    _A + "x_show_match__mutmut_17": _NO_THUMBNAILS_IN_MATCH,
    _A + "xǁThumbnailsǁ_placeholder_jpeg__mutmut_7": ('format="jpeg": PIL Image.save looks the format up as '
                                                    "format.upper(), so the same JPEG bytes are written"),
})

NOTES.update({
    _R + "x_alpha_query_expansion__mutmut_58": "the ranked rows widened to float64 instead of float32: the sum is "
                                               "formed in float64, which changes at most the last bit of the "
                                               "float32 rows l2_normalize returns (as x__weighted_sum__mutmut_11)",
    **{_R + f"x_augment_with_neighbours__mutmut_{i}": _WIDE for i in (46, 48)},
    _R + "x_augment_with_neighbours__mutmut_69": "the neighbour rows widened to float64: the sums are formed in "
                                                 "float64, which changes at most the last bit of the float32 rows "
                                                 "written (as x_alpha_query_expansion__mutmut_58)",
})

# Reviewed on 2026-12-02: diffusion, after its kNN graph kept the largest of repeated neighbours and
# exact_knn cut ties at the k-th place by row.
_MORE_AMBIGUOUS = ("more rows counted as tied at the k-th place: their partition is rebuilt, to the same rows "
                   "(the rows above the cut, then the lowest equal ones), only slower")
_WIDER_FLOATS = ("float64 instead of float32 on the way: the conjugate gradient's float32 result agrees to the "
                 "last bits, which could reorder only images whose diffusion scores tie to about 1e-7")
EQUIVALENT.update({
    **{_D + f"x__lowest_rows_at_the_cut__mutmut_{i}": _MORE_AMBIGUOUS for i in (8, 10, 11, 15)},
    **{_D + f"x_conjugate_gradient__mutmut_{i}": _UPPER_EINSUM for i in (22, 37, 59, 75)},
    _D + "x_exact_knn__mutmut_35": "blocks of one row: the same rows, computed one at a time",
    _D + "x_exact_knn__mutmut_39": "None stored in a float array is NaN, which argpartition puts last, as it does "
                                   "-inf, and which no comparison with the cut selects: a row is never its own neighbour",
    **{_D + f"x_exact_knn__mutmut_{i}": _DEFAULT_AXIS for i in (53, 64, 76, 86, 95)},
    **{_D + f"x_graph_from_knn__mutmut_{i}": _DEFAULT_AXIS for i in (79, 88, 95)},
    _D + "x_graph_from_knn__mutmut_48": "the neighbour rows as float64: scipy converts the coordinates of a sparse "
                                        "matrix to its integer index type, and they are whole numbers",
    _D + "x_graph_from_knn__mutmut_50": "float32 weights widened to float64, compared and deduplicated, then cast back "
                                        "to float32: every step is exact",
    _D + "x_graph_from_knn__mutmut_66": "zero-weight edges kept as explicit zeros: min and max with the transpose treat "
                                        "them as the missing entries they stand for, and eliminate_zeros drops them",
    **{_D + f"x_graph_from_knn__mutmut_{i}": "the matrix is float32 already: its weights are" for i in (123, 125)},
})

NOTES.update({
    _D + "x_exact_knn__mutmut_56": "partitioning at k - 2: numpy's introselect still leaves the k-th best at k - 1 "
                                   "(no difference in 2,400 random rows of 120 to 5,000), but numpy does not promise it",
})

# Reviewed on 2026-12-02: index, after memory-mapped indexes, the ANN file, the stored graph and the
# previews got their tests (numbers of today's code).
_NPY_DEFAULT = "allow_pickle=None or left out: np.load's default is False"
_PICKLE_REFUSED_EARLIER = ("the same file was already loaded with allow_pickle=False by load_index, which refuses an "
                           "object array; and an object array cannot be memory-mapped anyway")
_STEP_ONE = ("a step of one row instead of a block: the same rows checked (or written), but a block handled from "
             "every row, quadratic work that would not finish at a million rows; only time differs, which no unit "
             "test measures")
_FILE_SAME_AS_MEMORY = ("the in-memory rows are feature_list.npy widened to float32: checking the file instead "
                        "gives the same answer")
_UNUSED_MAPPED = "a mapped index never reads its in-memory thumbnails: thumbnail() reads thumbnails.bin by offset"
_WHOLE_IN_MEMORY = ("the NaN check of a mapped index loads (or scans) the whole matrix at once instead of in blocks "
                    "of its own mapping: the same answer, but memory a million-row index may not have; no unit test "
                    "measures memory")
EQUIVALENT.update({
    _I + "x_load_index__mutmut_98": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_101": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_114": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_116": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_123": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_125": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_175": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_177": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_214": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_216": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_223": _NPY_DEFAULT,
    _I + "x_load_index__mutmut_225": _NPY_DEFAULT,
    _I + "x__load_graph__mutmut_6": _NPY_DEFAULT,
    _I + "x__load_graph__mutmut_8": _NPY_DEFAULT,
    _I + "x__all_finite__mutmut_4": _NPY_DEFAULT,
    _I + "x__all_finite__mutmut_7": _NPY_DEFAULT,
    _I + "x__all_finite__mutmut_10": _PICKLE_REFUSED_EARLIER,
    _I + "x_load_index__mutmut_272": _FILE_SAME_AS_MEMORY,
    _I + "x_load_index__mutmut_296": _UNUSED_MAPPED,
    _I + "x__save_rows__mutmut_31": "errstate(over=None) keeps numpy's setting for overflows: a warning is printed, "
                                    "and the overflow is refused all the same",
    _I + "x_load_index__mutmut_332": "an in-memory index also holding thumbnails.bin open reads its thumbnails from "
                                     "that file: the same bytes, one descriptor more",
})

NOTES.update({
    _I + "x__all_finite__mutmut_3": _WHOLE_IN_MEMORY,
    _I + "x__all_finite__mutmut_6": _WHOLE_IN_MEMORY,
    _I + "x_load_index__mutmut_271": _WHOLE_IN_MEMORY,
    _I + "x__all_finite__mutmut_19": _STEP_ONE,
    _I + "x__save_rows__mutmut_17": _STEP_ONE,
    _I + "x_load_index__mutmut_291": 'a mapped index also reads all of thumbnails.bin into memory (gigabytes at a million images) though thumbnail() reads by offset from the file: the same bytes served, only memory differs, which no unit test measures',
})

# Reviewed on 2026-12-02: build survivors whose reason is sure (the rest of today's are listed as not reviewed).
_SILENT = "the silent logger's return value is never used"
EQUIVALENT.update({
    **{_B + name: _SILENT for name in ("x_assemble_index__mutmut_15", "x_plan_build__mutmut_3",
                                       "x_record_results__mutmut_5")},
    **{_B + f"x_record_results__mutmut_{i}": "another flush schedule by default: 257 images or 31 s instead of 256 or "
       "30 (the schedule itself is tested with small values)" for i in (1, 2)},
    _B + "x_record_results__mutmut_37": "a flush when exactly flush_seconds have passed, a tie of two clock readings",
    _B + "x_assemble_index__mutmut_8": "decoding threads change speed, not thumbnails or previews",
})

# Reviewed on 2026-12-02: onnx_export survivors (with Keras 3, numpy 2 and onnx as installed).
_O = "retrieval.onnx_export."

_O_NAME_HINT = ("only the hint of a fresh tensor name changes; _Graph.fresh appends its counter, so every "
             "name stays unique and the graph computes the same")
_O_COUNTER = "the counter's start or step changes; the names stay distinct, so the graph computes the same"
_O_LAST_PATH_PART = ("still the part of the weight path after its last '/' (Keras 3 paths always have one), "
                  "so the same weights are found")
_O_KERAS3_INBOUND = ("every Keras 3 operation has _inbound_nodes, so getattr's default is never used")
_O_KERAS3_OPERATIONS = ("every Keras 3 model has .operations, so getattr's default (model.layers) is never used")
_O_NO_LIST_CONFIG = ("no checked config value is a list in Keras 3 (BatchNormalization axis is an int, "
                  "Normalization axis a tuple even after from_config, data_format/padding strings, groups int); "
                  "a conv padding given as a list is refused by Keras itself when the layer is called")
_O_FLOAT32_ALREADY = ("_Graph.const casts to float32 afterwards anyway (and the values are float32 already)")
_O_NUMPY_NEGATIVE = "numpy 2 takes any negative size as the one unknown dimension, so -2 reshapes as -1 does"
_O_RESHAPE_NONE = ("reshape(None) keeps the shape: a 1-D array stays 1-D, Keras' (1, 1, 1, c) statistics stay "
                "(1, 1, 1, c), and _per_channel flattens them to (1, c, 1, 1) anyway")
_O_KERAS_FLOAT32 = "Keras keeps Normalization's mean and variance as float32, so the dtype given changes nothing"
_O_BROADCAST = "(c, 1, 1) broadcasts against (b, c, h, w) exactly as (1, c, 1, 1) does"
_O_PAD_MODE = "onnx.helper.make_node drops None attributes, and Pad's default mode is 'constant'"

EQUIVALENT.update({
    # activations
    _O + "x__activation__mutmut_40": "Keras 3 serialises 'swish' as 'silu' in every config, so name is never 'swish'",
    _O + "x__activation__mutmut_41": "Keras 3 serialises 'swish' as 'silu' in every config, so name is never 'swish'",
    _O + "x__relu__mutmut_10": "layer is only read to name an unsupported activation, and 'relu' is always supported",
    # batch normalisation
    _O + "x__batch_norm__mutmut_26": _O_LAST_PATH_PART,
    _O + "x__batch_norm__mutmut_29": _O_LAST_PATH_PART,
    _O + "x__batch_norm__mutmut_30": _O_LAST_PATH_PART + " (rsplit with maxsplit 1 gives two parts, [1] is [-1])",
    **{_O + f"x__batch_norm__mutmut_{n}": _O_NAME_HINT for n in (65, 67, 68, 69, 71, 73, 74, 75, 77, 79, 80, 81, 83, 85, 86, 87)},
    # _check
    _O + "x__check__mutmut_4": _O_NO_LIST_CONFIG,
    _O + "x__check__mutmut_6": _O_NO_LIST_CONFIG,
    _O + "x__conv_attrs__mutmut_13": ("Keras 3 refuses any Conv2D/DepthwiseConv2D padding but 'valid' and 'same' "
                                      "when the layer is called, so this check never fails and layer is never read"),
    # convolutions
    **{_O + f"x__conv__mutmut_{n}": _O_NAME_HINT for n in (15, 17, 26, 27, 33, 35, 37, 38)},
    **{_O + f"x__depthwise__mutmut_{n}": _O_NAME_HINT for n in (5, 7, 26, 27, 33, 35, 37, 38)},
    # normalisation and per-channel constants
    _O + "x__normalization__mutmut_29": _O_RESHAPE_NONE,
    _O + "x__normalization__mutmut_42": _O_RESHAPE_NONE,
    _O + "x__normalization__mutmut_31": _O_KERAS_FLOAT32,
    _O + "x__normalization__mutmut_33": _O_KERAS_FLOAT32,
    _O + "x__normalization__mutmut_44": _O_KERAS_FLOAT32,
    _O + "x__normalization__mutmut_46": _O_KERAS_FLOAT32,
    _O + "x__normalization__mutmut_35": _O_NUMPY_NEGATIVE,
    _O + "x__normalization__mutmut_48": _O_NUMPY_NEGATIVE,
    _O + "x__per_channel__mutmut_6": _O_BROADCAST,
    _O + "x__per_channel__mutmut_24": _O_BROADCAST,
    _O + "x__per_channel__mutmut_11": _O_FLOAT32_ALREADY,
    _O + "x__per_channel__mutmut_13": _O_FLOAT32_ALREADY,
    _O + "x__per_channel__mutmut_29": _O_FLOAT32_ALREADY,
    _O + "x__per_channel__mutmut_31": _O_FLOAT32_ALREADY,
    _O + "x__per_channel__mutmut_16": _O_NUMPY_NEGATIVE,
    _O + "x__per_channel__mutmut_34": _O_NUMPY_NEGATIVE,
    **{_O + f"x__per_channel__mutmut_{n}": _O_NAME_HINT for n in (52, 54, 55, 56, 58, 60, 61, 62)},
    # zero padding
    **{_O + f"x__zero_padding__mutmut_{n}": _O_NAME_HINT for n in (18, 21, 27, 28)},
    _O + "x__zero_padding__mutmut_19": "a list of Python ints becomes int64 by numpy's default (64-bit platforms, numpy 2)",
    _O + "x__zero_padding__mutmut_31": _O_PAD_MODE,
    _O + "x__zero_padding__mutmut_34": _O_PAD_MODE,
    _O + "x__paddings_to_fold__mutmut_4": _O_KERAS3_INBOUND,
    _O + "x__paddings_to_fold__mutmut_7": _O_KERAS3_INBOUND,
    # keras_to_onnx
    _O + "x_keras_to_onnx__mutmut_30": _O_KERAS3_OPERATIONS,
    _O + "x_keras_to_onnx__mutmut_33": _O_KERAS3_OPERATIONS,
    _O + "x_keras_to_onnx__mutmut_52": _O_KERAS3_INBOUND,
    _O + "x_keras_to_onnx__mutmut_55": _O_KERAS3_INBOUND,
    # _Graph
    _O + "xǁ_Graphǁ__init____mutmut_2": _O_COUNTER,
    _O + "xǁ_Graphǁfresh__mutmut_2": _O_COUNTER + " (negative counts: 'conv_-1', 'conv_-2', ...)",
    _O + "xǁ_Graphǁfresh__mutmut_3": _O_COUNTER,
    _O + "xǁ_Graphǁconst__mutmut_1": _O_NAME_HINT,
    _O + "xǁ_Graphǁconst__mutmut_2": _O_NAME_HINT,
    _O + "xǁ_Graphǁconst__mutmut_4": _O_NAME_HINT + " ('None_<n>')",
    _O + "xǁ_Graphǁnode__mutmut_3": _O_NAME_HINT + " ('None_<n>')",
    _O + "xǁ_Graphǁnode__mutmut_4": _O_NAME_HINT,
})

NOTES.update({
    _O + "xǁ_Graphǁconst__mutmut_11": ("dtype=None keeps each value's own dtype: the same for every float32 Keras model, "
                              "differs only for a model with non-float32 weights (e.g. dtype='float64'), "
                              "which none of our networks is; not worth a test"),
    _O + "xǁ_Graphǁconst__mutmut_13": ("as const__mutmut_11: only a model with non-float32 weights would be written "
                              "with double constants; not worth a test"),
})

# Reviewed on 2026-12-02: runtimes survivors; renumbered on 2026-12-03 after a run of today's code
# (the kills of the tests added on 2026-12-02, checked by hand then, are now mutmut's own).
_T = "retrieval.runtimes."

_T_OV_OUTPUT_IS_FRESH = (
    "OpenVINO's InferRequest.infer() returns arrays that own their data (share_outputs=False by default: "
    "a new array each call, checked: owndata, no memory shared between two calls), so np.array's copy "
    "only copies once more; the test's np.shares_memory check passes either way")
_T_OV_OUTPUT_IS_F32 = (
    "the compiled model's output port is f32 (the Keras graph's output type; the inference precision hint "
    "bf16 changes the internal arithmetic, not the output type), so dtype=np.float32 is a no-op")
_T_ORT_OUTPUT_IS_F32 = (
    "the graph written by onnx_export has one float32 output, so session.run already returns float32 and "
    "np.asarray's dtype=np.float32 is a no-op (forward() casts to float32 as well)")
_T_ARCH_SORT = (
    "sort_keys only matters if get_config() gave the same entries in another order for the same "
    "architecture; Keras builds config dicts in code order (checked: a from_config round trip dumps "
    "identically), so no model the project (or a test) can build tells the two apart")
_T_NO_LAYERS = (
    "the default of config.get('layers', ...) is reached only by a model whose get_config() has no "
    "'layers' (a subclassed keras.Model: its config is just trainable and dtype); the project's networks "
    "are all functional, and for such a model the key covers no architecture at all, so a test would "
    "endorse an unsound cache key rather than a feature")

EQUIVALENT.update({
    _T + "x__architecture_digest__mutmut_17":
        "`or True` sends non-strings through names.get(v, v) too: what reaches it is int/float/bool/None "
        "(dicts, lists and tuples are handled above), all hashable and never equal to a layer-name string "
        "key, so names.get(v, v) == v",
    _T + "x__write_cache__mutmut_10":
        "compress_to_fp16=None is taken as False by ov.save_model: float32 weights either way (checked: "
        "model.bin 2888 bytes with None and with False, 1476 with the fp16 default)",
    _T + "x_onnxruntime_infer__mutmut_109": _T_ORT_OUTPUT_IS_F32,
    _T + "x_onnxruntime_infer__mutmut_111": _T_ORT_OUTPUT_IS_F32,
    _T + "x_onnxruntime_infer__mutmut_112":
        "session.run(None, ...) returns every output; onnx_export writes exactly one (it refuses models "
        "with more), so [0] is the same feature map",
    _T + "x_onnxruntime_infer__mutmut_117":
        "`< 2` instead of `<= 2`: a batch of exactly 2 goes through the chunk loop as one chunk of 2 and a "
        "one-element np.concatenate: the same values, one extra copy (speed only)",
    _T + "x_openvino_infer__mutmut_83": _T_OV_OUTPUT_IS_F32,
    _T + "x_openvino_infer__mutmut_86": _T_OV_OUTPUT_IS_F32,
    _T + "x_openvino_infer__mutmut_87": "np.array's copy defaults to True: the mutant is the original call",
    _T + "x_openvino_infer__mutmut_84": _T_OV_OUTPUT_IS_FRESH,
    _T + "x_openvino_infer__mutmut_91": _T_OV_OUTPUT_IS_FRESH,
})

_T_DEFAULT_STR = (
    "json.dumps' default=str is never called for a functional or Sequential model: Keras serializes their "
    "configs itself (numpy scalars to Python numbers, arrays to __numpy__ dicts; checked: Conv2D(np.int64(4), "
    "(np.int64(3), 3)) and Reshape((np.int64(-1), ...)) in a functional model dump as plain JSON); only a "
    "model with its own get_config() returning raw objects would reach it, and the project has none")

# Numbers of the code since the model's own name left the key (`"name": None`): two mutants more
# before these; checked against the diffs of the run of 2026-12-03.
NOTES.update({
    _T + "x__architecture_digest__mutmut_25": _T_DEFAULT_STR,
    _T + "x__architecture_digest__mutmut_28": _T_DEFAULT_STR,
    _T + "x__architecture_digest__mutmut_9": _T_NO_LAYERS + " (renumbered on 2026-12-03)",
    _T + "x__architecture_digest__mutmut_11": _T_NO_LAYERS + " (renumbered on 2026-12-03)",
    _T + "x__architecture_digest__mutmut_24": _T_ARCH_SORT,
    _T + "x__architecture_digest__mutmut_27": _T_ARCH_SORT,
    _T + "x__architecture_digest__mutmut_30": _T_ARCH_SORT,
    **{_T + f"x_onnxruntime_infer__mutmut_{i}": (
        "a None key or value for a session config entry makes onnxruntime abort the test process (SIGABRT, "
        "exit -6), which mutmut calls suspicious rather than killed: a crash no user would miss, left "
        "uncounted as a kill") for i in (9, 10, 16, 17)},
})

# Reviewed on 2026-12-02: features survivors of the run that stopped at its time limit.
_F = "retrieval.features."

_F_REGION_STARTS_FIRST_BRANCH = (
    "rmac_regions only calls _region_starts with count <= 1 exactly when length == side (level 1 on the "
    "shorter side, or a square map; side <= short <= length, and the longer side gets extra >= 1 regions), "
    "so that branch always returns [0] and its condition/arithmetic variants give [0] too")
_F_SQUARE_EXTRA_UNUSED = (
    "extra is only added when height != width, so its value on a square map (0, 1 or None) is never used")
_F_SQUARE_EXTRA_IS_ZERO = "on a square map extra is 0, so adding it when height == width changes nothing"
_F_SPEED_ONLY = "number of decoding threads changes speed only (results are collected by position)"
_F_ONE_IMAGE_BATCH = (
    "embed_image sends one image: each scale's input is its own network call whatever batch_size, "
    "except same-shape scales (squash at MIN_SIDE), where a batch gives each row what a batch of one gives")
_F_ALREADY_FLOAT32 = "rows come from l2_normalize, already float32, so the dtype argument changes nothing"
_F_POOL_CASTS = "pool() casts its input to float32 itself, so fm's dtype changes no value"
_F_NEED_AT_LEAST_192 = "need is max(THUMBNAIL_SIDE=192, ...), so max(need, 1) / max(w, h, 2) differs only for a " \
    "1x1 image, where min(1.0, ...) gives 1.0 both ways"
_F_NO_ZERO_SIZED_IMAGES = "decoded images are at least 1x1, so the trailing 1 in max(w, h, 1) never applies"
_F_DRAFT_ABOVE_FULL = (
    "a draft request above the full size decodes at full size (Pillow's scale min(w // rw, h // rh) is 0, "
    "its loop leaves s = 1), exactly as the original request of the full size does")
_F_JPEG_FORMAT_CASE = "Pillow looks up save formats by format.upper(): 'jpeg' is 'JPEG'"

EQUIVALENT.update({
    _F + "x__region_starts__mutmut_1": _F_REGION_STARTS_FIRST_BRANCH,
    _F + "x__region_starts__mutmut_2": _F_REGION_STARTS_FIRST_BRANCH,
    _F + "x__region_starts__mutmut_4": _F_REGION_STARTS_FIRST_BRANCH,
    _F + "x__region_starts__mutmut_10": _F_REGION_STARTS_FIRST_BRANCH + " (max(0, 0.0) is the int 0)",
    _F + "x__region_starts__mutmut_12": _F_REGION_STARTS_FIRST_BRANCH,
    _F + "x_rmac_regions__mutmut_35": _F_SQUARE_EXTRA_UNUSED,
    _F + "x_rmac_regions__mutmut_36": _F_SQUARE_EXTRA_UNUSED,
    _F + "x_rmac_regions__mutmut_60": _F_SQUARE_EXTRA_IS_ZERO,
    _F + "x_rmac_regions__mutmut_66": _F_SQUARE_EXTRA_IS_ZERO,
    _F + "x__decode__mutmut_15": "max(THUMBNAIL_SIDE=192, 0) == max(192, 1)",
    _F + "x__draft_size__mutmut_22": _F_DRAFT_ABOVE_FULL,
    _F + "x__draft_size__mutmut_34": _F_NO_ZERO_SIZED_IMAGES,
    _F + "x__draft_size__mutmut_35": _F_NEED_AT_LEAST_192,
    _F + "xǁPipelineǁbucket_size__mutmut_21": _F_NO_ZERO_SIZED_IMAGES + " (only 0x0 would divide by zero)",
    _F + "x_embed_image__mutmut_17": _F_ONE_IMAGE_BATCH,
    _F + "x_embed_image__mutmut_18": _F_SPEED_ONLY,
    _F + "x_embed_image__mutmut_19": _F_ONE_IMAGE_BATCH,
    _F + "x_embed_image__mutmut_20": _F_SPEED_ONLY,
    _F + "x_extract_features__mutmut_2": _F_SPEED_ONLY,
    _F + "x_extract_features__mutmut_14": _F_SPEED_ONLY + " (and iter_features' default is also 2)",
    _F + "x_iter_features__mutmut_2": _F_SPEED_ONLY,
    _F + "x_extract_features__mutmut_25": _F_ALREADY_FLOAT32,
    _F + "x_extract_features__mutmut_27": _F_ALREADY_FLOAT32,
    _F + "x_pool_regions__mutmut_4": _F_POOL_CASTS,
    _F + "x_pool_regions__mutmut_6": _F_POOL_CASTS,
    _F + "x_make_thumbnail__mutmut_17": _F_JPEG_FORMAT_CASE,
})

_F_THUMBNAIL_FILTER = (
    "thumbnail filter: Pillow's default (bicubic, also for None) instead of bilinear changes thumbnail pixels "
    "by a few grey levels, a look only; pinning it would need byte-exact Pillow resampling output")

NOTES.update({
    _F + "x_make_thumbnail__mutmut_4": _F_THUMBNAIL_FILTER,
    _F + "x_make_thumbnail__mutmut_6": _F_THUMBNAIL_FILTER,
})

# Reviewed on 2026-12-02: the rest of build's survivors (numbers after the fixes to record_results and
# assemble_index; _Cache's were not reached by the last run).
EQUIVALENT.update({
    _B + "x_assemble_index__mutmut_34": 'the vectors are float32 already (iter_features, the Ray engine and the cache all give float32), so astype(None) only widens them exactly to float64, and every later step (whitening, DBA, the graph, the ANN, _save_rows) turns them back to float32 first',
    _B + "x_assemble_index__mutmut_80": 'rows rounded to dtype and widened to float64 instead of float32 hold the same values, and build_graph turns them into float32 at once (as_rows)',
    _B + "x_assemble_index__mutmut_130": 'rows rounded to dtype and widened to float64 instead of float32 hold the same values, and build_ann copies them into float32 before training and adding',
    _B + "xǁ_Cacheǁload__mutmut_8": 'None and False are both falsy, so a state.json that cannot be parsed still empties the cache',
    _B + "xǁ_Cacheǁload__mutmut_25": 'state.json is only read back with json.loads, so its indentation changes the layout, not the key compared',
    _B + "xǁ_Cacheǁload__mutmut_27": 'state.json is only read back with json.loads, so its indentation changes the layout, not the key compared',
    _B + "xǁ_Cacheǁload__mutmut_28": 'state.json is only read back with json.loads, so its indentation changes the layout, not the key compared',
    _B + "xǁ_Cacheǁload__mutmut_31": "np.load's allow_pickle defaults to False and None is falsy: object arrays are refused either way",
    _B + "xǁ_Cacheǁload__mutmut_33": "np.load's allow_pickle defaults to False: leaving it out is the same call",
    _B + "xǁ_Cacheǁwrite_shard__mutmut_44": "numpy infers a '<U' (str) array from a list of str, and write_shard always gets at least one path",
    _B + "xǁ_Cacheǁwrite_shard__mutmut_46": "numpy infers a '<U' (str) array from a list of str, and write_shard always gets at least one path",
    _B + "xǁ_Cacheǁwrite_shard__mutmut_48": "numpy's default integer for Python ints is int64 (numpy 2 on 64-bit), so the sizes come out int64 anyway; the dtype test passes on both",
    _B + "xǁ_Cacheǁwrite_shard__mutmut_50": "numpy's default integer for Python ints is int64 (numpy 2 on 64-bit), so the sizes come out int64 anyway; the dtype test passes on both",
    _B + "xǁ_Cacheǁwrite_shard__mutmut_52": "numpy's default integer for Python ints is int64 (numpy 2 on 64-bit), and mtime_ns fits it; the dtype test passes on both",
    _B + "xǁ_Cacheǁwrite_shard__mutmut_54": "numpy's default integer for Python ints is int64 (numpy 2 on 64-bit), and mtime_ns fits it; the dtype test passes on both",
})
NOTES.update({
    _B + "x_assemble_index__mutmut_59": 'with dba 0, database_augmentation(k=0) gives back l2_normalize(rows) of rows that are L2-normalised already: at most a change in the last bit (none on the test rows; checked with the stored rows compared bit for bit to the cached ones)',
    _B + "xǁ_Cacheǁload__mutmut_63": 'missing_ok matters only if another process deletes the unreadable shard between the glob and this unlink; None is falsy, the same as False',
    _B + "xǁ_Cacheǁload__mutmut_64": 'missing_ok matters only if another process deletes the unreadable shard between the glob and this unlink (concurrent builds into one folder); a single build always finds it',
})

# Reviewed on 2026-12-03: ann's build_ann, refill and default_factory survivors of a full run.
_X_F32 = ("FAISS's Python add() converts its input to float32 itself (np.ascontiguousarray(x, dtype='float32') "
          "in class_wrappers.replacement_add), so a block left in float16 or float64 is added as the same float32 rows")
_X_ALL_ROWS = ("a sample of all n rows without replacement, sorted, is np.arange(n): the same training rows")
EQUIVALENT.update({
    _X + "x_build_ann__mutmut_19": "the log function's return value is never used: None or 0, nothing is said",
    _X + "x_build_ann__mutmut_27": "faiss.index_factory's metric defaults to METRIC_L2, the one passed",
    _X + "x_build_ann__mutmut_47": _X_ALL_ROWS,
    _X + "x_build_ann__mutmut_56": _X_ALL_ROWS,
    _X + "x_build_ann__mutmut_74": _X_F32,
    _X + "x_build_ann__mutmut_76": _X_F32,
    _X + "x_refill__mutmut_11": _X_F32,
    _X + "x_refill__mutmut_13": _X_F32,
    _X + "x_default_factory__mutmut_16": "2 sqrt(max(n, 1)) is at least 2, so the floor of 1.0 or 2.0 never applies",
    _X + "x_default_factory__mutmut_21": ("the cap goes through round(log2(.)): log2(4097) rounds to 12 like log2(4096), "
                                          "so at most 4096 lists either way"),
    _X + "x_default_factory__mutmut_29": ("max(n, 2) only differs for n < 2, where the halving loop brings the lists "
                                          "down to 1 whatever they start at"),
})
EQUIVALENT.update({
    _X + "x__nlist__mutmut_7": ("a flat index's 1 or 2 lists only size the training sample, 64 rows a list, which the "
                                "floor of 10000 rows (MIN_TRAIN) overrides either way"),
    _X + "x__rows__mutmut_12": ("a step of 1 instead of BLOCK copies overlapping slices of the same rows again: "
                                "the same matrix, only slower"),
})
EQUIVALENT.update({
    _X + "x_build_ann__mutmut_51": "numpy's Generator.choice reads replace=None as false: a sample without replacement, as with False",
})
EQUIVALENT.update({
    _X + "x__neighbours__mutmut_18": _SUPERSET,
    **{_X + f"x__neighbours__mutmut_{i}": ("one operand left float16 meets the other in float32: einsum promotes it "
       "exactly, so the products are those of two float32 operands") for i in (27, 69)},
})
EQUIVALENT.update({
    **{_X + f"x_rerank_exact__mutmut_{i}": ("np.full of the Python int -1 makes an int64 array (numpy's default "
       "integer on 64-bit): the rows come out int64 anyway, which the test checks") for i in (18, 21)},
    _X + "x_rerank_exact__mutmut_37": _UPPER_EINSUM,
    **{_X + f"xǁAnnIndexǁcandidates__mutmut_{i}": ("FAISS's Python search() converts the queries to float32 itself "
       "(class_wrappers.replacement_search): the same codes are compared") for i in (11, 13)},
})

# Reviewed on 2026-12-03: features survivors of the full run, after the tests they pointed to
# (every 16-bit mode, tRNS transparency, the orientations, load_image's messages, spoc, the forward
# passed in, the preview's quality, the Pipeline's messages, one-pixel content).
_F_DRAFT_MODE = ("Pillow's JPEG draft() only reads the mode to switch an RGB decode to L or YCbCr; None, "
                 "'rgb' or any other string leaves the decode in the file's mode, as 'RGB' does")
_F_SAME_FORWARD = ("embed_batch imports retrieval.networks.forward when given None, the very function "
                   "iter_features passes")
_F_PARTS_BY_SCALE = ("parts are (scale index, vector) pairs with distinct indices, so tuples sort on the index "
                     "alone, as the key does")
_F_FINAL_FLUSH_ORDER = ("the last buckets are each run once whichever goes first: the same batches and vectors, "
                        "yielded in another order, and iter_features only promises completion order "
                        "(every caller collects by position)")
_F_UPRIGHT_DEFAULT = "a missing orientation tag defaults to 1; None and 2 are not in (5, 6, 7, 8) either"
_F_AS_FLOAT = ("without dtype numpy keeps the image's integer type (or float32 for F), and multiplying by the "
               "Python float gives float64, which truncates to the same 8-bit values (checked for all 65536)")
_F_CLAMPED_COLOUR = "Pillow clamps colour components to 0..255: 256 is stored as 255"
EQUIVALENT.update({
    _F + "x__draft_size__mutmut_28": "callers pass need >= THUMBNAIL_SIDE (192), so max(need, 1) and "
                                    "max(need, 2) are both need",
    **{_F + f"x__exif_transposes__mutmut_{i}": _F_UPRIGHT_DEFAULT for i in (2, 4, 6)},
    **{_F + f"x_load_image__mutmut_{i}": _F_DRAFT_MODE for i in (65, 69, 70, 90, 94, 95)},
    _F + "x_load_image__mutmut_81": _F_DRAFT_ABOVE_FULL,
    _F + "x_load_image__mutmut_88": _F_NO_ZERO_SIZED_IMAGES,
    _F + "x_load_image__mutmut_89": "max(w, h, 2) differs from max(w, h, 1) only for a 1x1 JPEG, whose draft "
                                    "request is then ceil(0.5) = 1 pixel or more: its full size either way",
    **{_F + f"x_iter_features__mutmut_{i}": _F_SAME_FORWARD for i in (28, 33)},
    **{_F + f"x_iter_features__mutmut_{i}": _F_PARTS_BY_SCALE for i in (46, 48)},
    **{_F + f"x_iter_features__mutmut_{i}": _F_FINAL_FLUSH_ORDER for i in (137, 139)},
    _F + "x_iter_features__mutmut_89": "once the sources run out, next() on the spent iterator raises "
                                       "StopIteration again each time: the priming loop submits nothing more",
    _F + "x_pool__mutmut_101": "numpy reads any negative size as the unknown one: reshape(n, -2) is reshape(n, -1)",
    **{_F + f"x_prepare_image__mutmut_{i}": "paste() with no box puts the image at the top left, (0, 0)"
       for i in (28, 30)},
    **{_F + f"x__to_rgb__mutmut_{i}": _F_AS_FLOAT for i in (25, 27)},
    _F + "x__to_rgb__mutmut_40": ("left as float64 the clipped array becomes an F image, and Pillow's F to RGB "
                                  "conversion truncates to whole grey levels as astype(uint8) does"),
    **{_F + f"x__to_rgb__mutmut_{i}": _F_CLAMPED_COLOUR for i in (80, 81, 82, 83)},
})

# Reviewed on 2026-12-03: build's survivors of its first full run (all 566 mutants tried).
EQUIVALENT.update({
    _B + "xǁ_Cacheǁwrite_shard__mutmut_66": _TEXT_MODE_FSYNC,
})
NOTES.update({
    _B + "xǁ_Cacheǁcompact__mutmut_8": "missing_ok matters only if another process deletes an old shard between the "
                                       "listing and this unlink; None is falsy, the same as False",
    _B + "xǁ_Cacheǁcompact__mutmut_9": "missing_ok matters only if another process deletes an old shard between the "
                                       "listing and this unlink (concurrent builds into one folder); a single build "
                                       "always finds it",
})

# Reviewed on 2026-12-08: the query path (retrieval/query.py) after issues 26 and 27.
_ROUNDING = ("float64 instead of float32 arithmetic on float32 inputs, rounded back to float32: the values differ "
             "in the last bit at most, far below every tolerance that reads them (1e-4 for the indexed photo)")
EQUIVALENT.update({
    _Q + "x_self_similarity__mutmut_4": _ROUNDING,
    _Q + "x_self_similarity__mutmut_15": _UPPER_EINSUM,
    **{_Q + f"x_self_similarity__mutmut_{i}": _ROUNDING for i in (17, 19)},
    **{_Q + f"x_similarities__mutmut_{i}": _ROUNDING for i in (9, 15, 17)},
    _Q + "x_found__mutmut_5": "filtering by a mask that keeps every row gives the same scores and rows (copies)",
    **{_Q + f"xǁQueryPathǁrank__mutmut_{i}": "seed rows are an integer array already (a ranking's rows): int64 "
       "or the platform's integer, the same rows" for i in (71, 73)},
})
