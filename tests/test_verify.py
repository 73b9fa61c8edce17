"""Spatial verification on synthetic textures with a known homography, and the evaluate command's --sv."""

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from precompute import evaluate as cmd
from retrieval import evaluation
from retrieval import verify
from retrieval.datasets import Dataset
from retrieval.features import Pipeline
from retrieval.verify import (
    DEFAULT_MIN_INLIERS, FeatureStore, LocalFeatures, count_inliers, detect_sift, local_features, match_features,
    rerank_by_inliers, root_sift, spatial_rerank, verify_top,
)

# A mild perspective: rotation, shear, shift and a little foreshortening.
H = np.array([[0.9, 0.12, 18.0], [-0.08, 0.95, 14.0], [2e-4, -1e-4, 1.0]])
SIZE = (320, 240)


def texture(seed: int, size=SIZE) -> np.ndarray:
    """Returns an (h, w, 3) uint8 RGB image of random discs, boxes and lines on noise: plenty of corners."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 166, (h, w)).astype(np.uint8)
    for _ in range(80):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = int(rng.integers(0, 256))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(img, c, int(rng.integers(3, 25)), colour, -1)
        elif kind == 1:
            cv2.rectangle(img, c, (c[0] + int(rng.integers(4, 40)), c[1] + int(rng.integers(4, 40))), colour, -1)
        else:
            cv2.line(img, c, (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, int(rng.integers(1, 4)))
    return np.stack([cv2.GaussianBlur(img, (3, 3), 0)] * 3, axis=-1)


def warped(image: np.ndarray) -> np.ndarray:
    return cv2.warpPerspective(image, H, SIZE)


@pytest.fixture(scope="module")
def feats():
    """Features of the original texture, its warp and four unrelated textures."""
    original = texture(0)
    return {
        "original": local_features(original),
        "warped": local_features(warped(original)),
        "others": [local_features(texture(s)) for s in range(1, 5)],
    }


# ---------------------------------------------------------------- features


def test_local_features_shapes_and_rootsift(feats):
    kp, desc = feats["original"]
    assert kp.dtype == np.float32 and desc.dtype == np.float32
    assert kp.shape == (len(desc), 2) and desc.shape[1] == 128 and len(kp) > 200
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    assert desc.min() >= 0
    assert (kp[:, 0] < SIZE[0]).all() and (kp[:, 1] < SIZE[1]).all() and (kp >= 0).all()


def test_images_are_scaled_down_to_max_side_and_features_capped():
    big = cv2.resize(texture(0), (960, 720), interpolation=cv2.INTER_LINEAR)
    kp, sift = detect_sift(big, max_side=200, max_features=50)
    assert sift.dtype == np.uint8 and sift.shape == (50, 128) and kp.shape == (50, 2)
    assert kp[:, 0].max() < 200 and kp[:, 1].max() < 150
    # strongest first: the first 50 of an uncapped run are the capped run
    kp_all, sift_all = detect_sift(big, max_side=200, max_features=None)
    assert len(kp_all) > 50
    np.testing.assert_array_equal(kp_all[:50], kp)
    np.testing.assert_array_equal(sift_all[:50], sift)


def test_pil_images_and_arrays_give_the_same_features():
    image = texture(3)
    from_array = local_features(image)
    from_pil = local_features(Image.fromarray(image))
    np.testing.assert_array_equal(from_array.keypoints, from_pil.keypoints)
    np.testing.assert_array_equal(from_array.descriptors, from_pil.descriptors)


def test_root_sift_by_hand():
    sift = np.zeros((2, 128), np.uint8)
    sift[0, :2] = (1, 3)
    out = root_sift(sift)
    np.testing.assert_allclose(out[0, :2], [0.5, np.sqrt(0.75)], rtol=1e-6)
    assert out[0, 2:].sum() == 0 and not out[1].any()  # a zero row stays zero


# ---------------------------------------------------------------- matching and geometry


def test_match_features_ratio_and_mutual_by_hand():
    e = np.eye(128, dtype=np.float32)
    a = LocalFeatures(np.zeros((3, 2), np.float32), e[[0, 1, 2]])
    close = (e[1] + 0.05 * e[5]) / np.linalg.norm(e[1] + 0.05 * e[5])
    # b0 = a0 exactly; b1 and b2 are equally close to a1 (ambiguous); nothing near a2
    b = LocalFeatures(np.zeros((4, 2), np.float32), np.stack([e[0], close, close, e[9]]))
    assert match_features(a, b, ratio=0.8, mutual=True).tolist() == [[0, 0]]
    # without the ratio test a1 keeps the first of its tie; a2's nearest (b0, a tie at 0) prefers a0
    assert match_features(a, b, ratio=None, mutual=True).tolist() == [[0, 0], [1, 1]]
    assert match_features(a, b, ratio=None, mutual=False).tolist() == [[0, 0], [1, 1], [2, 0]]


def test_known_homography_is_recovered(feats):
    a, b = feats["original"], feats["warped"]
    pairs = match_features(a, b)
    moved = cv2.perspectiveTransform(a.keypoints[pairs[:, 0]][None].astype(np.float64), H)[0]
    fits = np.linalg.norm(moved - b.keypoints[pairs[:, 1]], axis=1) < verify.DEFAULT_THRESHOLD
    # the oracle: distinct position pairs that the true homography maps onto each other
    oracle = len(np.unique(np.concatenate([a.keypoints[pairs[fits, 0]], b.keypoints[pairs[fits, 1]]], 1), axis=0))
    inliers = count_inliers(a, b)
    assert oracle > 100
    assert 0.95 * oracle <= inliers <= len(pairs)


def test_inlier_matches_are_the_counted_inliers_and_fit_the_true_homography(feats):
    a, b = feats["original"], feats["warped"]
    found = verify.inlier_matches(a, b)
    assert found.dtype == np.float32 and found.shape == (count_inliers(a, b), 4)
    moved = cv2.perspectiveTransform(found[None, :, :2].astype(np.float64), H)[0]
    # RANSAC's own model is fitted to the matches: nearly all lie within its threshold of the true one.
    assert np.mean(np.linalg.norm(moved - found[:, 2:], axis=1) < 2 * verify.DEFAULT_THRESHOLD) > 0.95
    assert verify.inlier_matches(feats["original"], feats["others"][0]).shape[0] < DEFAULT_MIN_INLIERS


def test_unrelated_images_have_few_inliers(feats):
    counts = [count_inliers(feats["original"], other) for other in feats["others"]]
    counts += [count_inliers(feats["warped"], other) for other in feats["others"]]
    assert max(counts) < DEFAULT_MIN_INLIERS


def test_every_model_verifies_the_warp_and_not_the_others(feats):
    for model in verify.MODELS:
        threshold = 2.0 if model == "fundamental" else verify.DEFAULT_THRESHOLD
        good = count_inliers(feats["original"], feats["warped"], model=model, threshold=threshold)
        bad = max(count_inliers(feats["original"], o, model=model, threshold=threshold) for o in feats["others"])
        # a similarity cannot follow the perspective everywhere, but still explains many matches
        assert good > 60 and good > 5 * bad, model


def test_results_repeat(feats):
    image = warped(texture(0))
    again = local_features(image)
    np.testing.assert_array_equal(again.keypoints, feats["warped"].keypoints)
    np.testing.assert_array_equal(again.descriptors, feats["warped"].descriptors)
    for model in ("homography", "affine"):
        first = count_inliers(feats["original"], feats["warped"], model=model)
        cv2.setRNGSeed(12345)  # disturbing the global generator must not matter
        assert count_inliers(feats["original"], feats["warped"], model=model) == first


def test_at_least_skips_only_what_cannot_reach_it(feats):
    a, b = feats["original"], feats["warped"]
    full = count_inliers(a, b)
    assert count_inliers(a, b, at_least=full) == full
    assert count_inliers(a, b, at_least=len(match_features(a, b)) + 1) == 0


# ---------------------------------------------------------------- re-ranking


def test_rerank_by_inliers_by_hand():
    ranking = np.array([5, 3, 9, 1, 7, 2])
    # verified: 3 (30), 9 (10), 1 (30); 5 (2) fails; 7 and 2 were not verified
    out = rerank_by_inliers(ranking, np.array([2, 30, 10, 30]), min_inliers=8)
    assert out.tolist() == [3, 1, 9, 5, 7, 2]
    assert rerank_by_inliers(ranking, np.array([], dtype=np.int64)).tolist() == ranking.tolist()


def test_spatial_rerank_puts_the_verified_image_first(feats):
    db = [feats["others"][0], feats["others"][1], feats["warped"], feats["others"][2], feats["others"][3]]
    ranking = np.array([0, 1, 3, 2, 4])
    inliers = verify_top(ranking, feats["original"], db, top=5)
    assert inliers[3] > 100 and np.delete(inliers, 3).max() < DEFAULT_MIN_INLIERS
    assert spatial_rerank(ranking, feats["original"], db, top=5).tolist() == [2, 0, 1, 3, 4]
    # a callable lookup works the same; a top that stops short of the match leaves the ranking alone
    assert spatial_rerank(ranking, feats["original"], db.__getitem__, top=4).tolist() == [2, 0, 1, 3, 4]
    assert spatial_rerank(ranking, feats["original"], db, top=3).tolist() == ranking.tolist()


def test_bad_inputs_are_refused(feats):
    a = feats["original"]
    with pytest.raises(ValueError, match="uint8"):
        local_features(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        local_features(np.zeros((50, 50, 4), np.uint8))
    with pytest.raises(ValueError, match="max_side"):
        local_features(texture(0), max_side=0)
    with pytest.raises(ValueError, match="max_features"):
        local_features(texture(0), max_features=0)
    with pytest.raises(ValueError, match="keypoints"):
        count_inliers(LocalFeatures(np.zeros((3, 3), np.float32), np.zeros((3, 128), np.float32)), a)
    with pytest.raises(ValueError, match="descriptors"):
        count_inliers(a, LocalFeatures(np.zeros((3, 2), np.float32), np.zeros((4, 128), np.float32)))
    with pytest.raises(ValueError, match="NaN"):
        count_inliers(a, LocalFeatures(np.full((1, 2), np.nan, np.float32), np.zeros((1, 128), np.float32)))
    with pytest.raises(ValueError, match="unknown model"):
        count_inliers(a, a, model="projective")
    with pytest.raises(ValueError, match="threshold"):
        count_inliers(a, a, threshold=0)
    with pytest.raises(ValueError, match="ratio"):
        match_features(a, a, ratio=1.5)
    with pytest.raises(ValueError, match="more than once"):
        spatial_rerank(np.array([0, 0]), a, [a])
    with pytest.raises(ValueError, match="1-D integer"):
        spatial_rerank(np.array([0.0, 1.0]), a, [a, a])
    with pytest.raises(ValueError, match="min_inliers"):
        spatial_rerank(np.array([0]), a, [a], min_inliers=0)
    with pytest.raises(ValueError, match="at most 2"):
        rerank_by_inliers(np.array([0, 1]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        root_sift(-np.ones((1, 128)))


def test_no_features_gives_no_inliers():
    blank = local_features(np.full((64, 64), 128, np.uint8))
    assert blank.keypoints.shape == (0, 2) and blank.descriptors.shape == (0, 128)
    assert count_inliers(blank, local_features(texture(0))) == 0


# ---------------------------------------------------------------- storage


def test_feature_store_round_trip(tmp_path):
    images = [texture(0), np.full((40, 40), 7, np.uint8), texture(1)]  # the middle one has no keypoints
    store = FeatureStore.from_sift([detect_sift(i) for i in images])
    np.savez(tmp_path / "f.npz", **store.to_arrays())
    with np.load(tmp_path / "f.npz") as z:
        loaded = FeatureStore.from_arrays(z)
    assert len(loaded) == 3 and loaded.offsets[1] == loaded.offsets[2]
    for i, image in enumerate(images):
        direct = local_features(image)
        np.testing.assert_array_equal(loaded[i].keypoints, direct.keypoints)
        np.testing.assert_array_equal(loaded[i].descriptors, direct.descriptors)
    np.testing.assert_array_equal(loaded[-1].keypoints, loaded[2].keypoints)
    with pytest.raises(IndexError):
        loaded[3]
    with pytest.raises(ValueError, match="offsets"):
        FeatureStore(store.keypoints, store.descriptors, store.offsets[::-1])
    with pytest.raises(ValueError, match="uint8"):
        FeatureStore(store.keypoints, store.descriptors.astype(np.float32), store.offsets)


# ---------------------------------------------------------------- the evaluate command's --sv

PIPE = Pipeline(max_side=64)


@pytest.fixture()
def synthetic(tmp_path):
    """A 4-image benchmark: the query's only positive is a warp of it (row 2), the rest unrelated."""
    jpg, crops = tmp_path / "synthetic" / "jpg", tmp_path / "synthetic" / "query_crops"
    jpg.mkdir(parents=True)
    crops.mkdir()
    query = texture(0)
    Image.fromarray(query).save(crops / "q.jpg", quality=95)
    images = {"u1": texture(1), "u2": texture(2), "match": warped(query), "u3": texture(3)}
    for name, image in images.items():
        Image.fromarray(image).save(jpg / f"{name}.jpg", quality=95)
    empty = np.zeros(0, np.int64)
    return Dataset(name="synthetic", root=tmp_path, kind="revisited", db_ids=list(images), query_ids=["q"],
                   query_boxes=[None], gnd=[{"easy": np.array([2]), "hard": empty, "junk": empty}],
                   total_db=4, total_queries=1, images_dir=jpg, crops_dir=crops)


def test_evaluate_sv_reranks_caches_and_reports(synthetic, tmp_path, monkeypatch):
    # The global search is stubbed to rank the match last, so only verification can lift it;
    # no network is needed for that.
    network = SimpleNamespace(name="stub", weights="none")
    found = evaluation.Descriptors(np.eye(4, dtype=np.float32), np.eye(1, 4, dtype=np.float32), np.full(1, 0.01))
    monkeypatch.setattr(evaluation, "dataset_descriptors", lambda *a, **k: found)
    monkeypatch.setattr(evaluation, "rank_queries", lambda *a, **k: (np.array([[0, 1, 3, 2]]), np.full(1, 0.001)))
    calls = []
    real = verify.detect_sift
    monkeypatch.setattr(verify, "detect_sift", lambda image, **k: calls.append(image) or real(image, **k))

    def database_calls():
        return sum(isinstance(c, Path) for c in calls)

    cache = tmp_path / "cache"
    plain = evaluation.run_evaluation(synthetic, network, PIPE, cache_dir=cache).report
    # one positive at 0-based position 3: AP = (0 / 3 + 1 / 4) / 2
    assert plain["map"]["easy"] == pytest.approx(0.125, abs=1e-6)
    assert plain["per_query"][0]["top10"][-1] == "match" and plain["pipeline"]["sv"] is None
    first = evaluation.run_evaluation(synthetic, network, PIPE, sv=4, cache_dir=cache).report
    assert first["per_query"][0]["top10"] == ["match", "u1", "u2", "u3"]
    assert first["map"] == {"easy": 1.0, "medium": 1.0, "hard": None}
    assert database_calls() == 4 and len(calls) == 5  # the database, then the query
    assert len(list(cache.glob("synthetic-sift-*.npz"))) == 1
    sv = first["pipeline"]["sv"]
    assert sv["top"] == 4 and sv["min_inliers"] == DEFAULT_MIN_INLIERS and sv["descriptor"] == "RootSIFT"
    t = first["seconds_per_query"]
    assert t["verify"] > 0 and t["total"] == pytest.approx(t["embed"] + t["search"] + t["verify"], abs=1e-5)
    assert "SV top 4" in cmd.describe(first) and "+ verify" in cmd.format_table(first)
    # the database's local features come from the cache now; a top of 3 stops short of the match
    short = evaluation.run_evaluation(synthetic, network, PIPE, sv=3, cache_dir=cache).report
    assert database_calls() == 4 and len(calls) == 6
    assert short["per_query"][0]["top10"] == ["u1", "u2", "u3", "match"]
    json.dumps(first)  # the report stays JSON-ready


def test_evaluate_sv_options():
    args = cmd.parse_args(["--dataset", "rparis6k", "--data-root", "."])
    assert args.sv == 0 and args.sv_min_inliers is None
    args = cmd.parse_args(["--dataset", "rparis6k", "--data-root", ".", "--sv", "50", "--sv-min-inliers", "12"])
    assert (args.sv, args.sv_min_inliers) == (50, 12)
    for bad in (["--sv", "-1"], ["--sv-min-inliers", "0"]):
        with pytest.raises(SystemExit):
            cmd.parse_args(["--dataset", "rparis6k", "--data-root", ".", *bad])


def unit_at(distance: float, axis: int) -> np.ndarray:
    """A unit 128-vector at Euclidean distance `distance` from e0, leaning towards e_axis."""
    theta = 2 * np.arcsin(distance / 2)
    v = np.zeros(128, np.float32)
    v[0], v[axis] = np.cos(theta), np.sin(theta)
    return v


@pytest.mark.parametrize("ratio_of_distances, kept", [(0.6, True), (0.7, True), (0.79, True), (0.81, False),
                                                      (0.85, False), (0.95, False)])
def test_ratio_test_compares_distances_with_the_ratio_itself(ratio_of_distances, kept):
    # Nearest at distance 0.5 r, second at 0.5: kept exactly when r < 0.8. Cases between 0.8^2 and 0.8
    # and between 0.8 and sqrt(0.8) tell distances from squared distances.
    a = LocalFeatures(np.zeros((1, 2), np.float32), unit_at(0.0, 1)[None])
    b = LocalFeatures(np.zeros((2, 2), np.float32), np.stack([unit_at(0.5 * ratio_of_distances, 1),
                                                              unit_at(0.5, 2)]))
    assert match_features(a, b, ratio=0.8).tolist() == ([[0, 0]] if kept else [])
    assert match_features(a, b, ratio=None).tolist() == [[0, 0]]
    assert match_features(a, LocalFeatures(b.keypoints[:1], b.descriptors[:1]), ratio=0.8).tolist() == [[0, 0]]


def test_repeated_correspondences_count_once():
    # 30 points moved by a known homography; each point has three keypoints at one position (as SIFT
    # gives one position several orientations), each with its own descriptor and its own match.
    rng = np.random.default_rng(0)
    points = rng.uniform(10, 300, (30, 2)).astype(np.float32)
    moved = cv2.perspectiveTransform(points[None].astype(np.float64), H)[0].astype(np.float32)
    e = np.eye(128, dtype=np.float32)
    descriptors = e[:90]
    a = LocalFeatures(np.repeat(points, 3, axis=0), descriptors)
    b = LocalFeatures(np.repeat(moved, 3, axis=0), descriptors)
    assert len(match_features(a, b)) == 90
    assert count_inliers(a, b) == 30
    assert count_inliers(a, b, at_least=31) == 0  # 30 distinct correspondences cannot reach 31
    assert count_inliers(a, b, at_least=30) == 30
    once = LocalFeatures(points, e[:30])
    assert count_inliers(once, LocalFeatures(moved, e[:30])) == 30


def test_refusals_say_what_is_wrong(feats):
    a = feats["original"]
    cases = [
        (lambda: local_features(np.zeros((50, 50, 3), np.float32)),
         r"^an image array must be \(h, w\) or \(h, w, 3\) uint8, got float32 \(50, 50, 3\)$"),
        (lambda: local_features(texture(0), max_side=15), r"^max_side must be a whole number >= 16, got 15$"),
        (lambda: local_features(texture(0), max_side=True), r"^max_side must be a whole number >= 16, got True$"),
        (lambda: local_features(texture(0), max_features=0), r"^max_features must be a whole number >= 1 or None, got 0$"),
        (lambda: local_features(texture(0), max_features=2.0), r"^max_features must be a whole number >= 1 or None"),
        (lambda: local_features(np.zeros((0, 5), np.uint8)), r"^the image is empty \(5x0\)$"),
        (lambda: root_sift(np.ones((2, 5))), r"^SIFT descriptors must be \(k, 128\), got shape \(2, 5\)$"),
        (lambda: root_sift(np.full((1, 128), np.nan)), r"^SIFT descriptors must be finite and non-negative$"),
        (lambda: match_features(a, a, ratio=0), r"^ratio must be in \(0, 1\] or None, got 0$"),
        (lambda: match_features(a, (1, 2, 3)), r"^features_b must be a \(keypoints, descriptors\) pair$"),
        (lambda: match_features(LocalFeatures(np.zeros((2, 3)), np.zeros((2, 128))), a),
         r"^features_a keypoints must be \(k, 2\), got shape \(2, 3\)$"),
        (lambda: match_features(a, LocalFeatures(np.zeros((2, 2)), np.zeros((3, 128)))),
         r"^features_b descriptors must be \(2, 128\) to match the keypoints, got shape \(3, 128\)$"),
        (lambda: count_inliers(a, a, model="projective"),
         r"^unknown model 'projective'; choose one of homography, affine, similarity, fundamental$"),
        (lambda: count_inliers(a, a, threshold=float("nan")), r"^threshold must be a positive number of pixels, got nan$"),
        (lambda: count_inliers(a, a, at_least=-1), r"^at_least must be a whole number >= 0, got -1$"),
        (lambda: verify_top(np.array([[0]]), a, [a]), r"^ranking must be a 1-D integer array, got int64 \(1, 1\)$"),
        (lambda: verify_top(np.array([0]), a, [a], top=True), r"^top must be a whole number >= 0, got True$"),
        (lambda: rerank_by_inliers(np.array([0, 1]), np.array([1.0])),
         r"^inliers must be 1-D integers, at most 2 long, got float64 \(1,\)$"),
        (lambda: rerank_by_inliers(np.array([0, 1]), np.array([1]), min_inliers=0),
         r"^min_inliers must be a whole number >= 1, got 0$"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_feature_store_refusals_and_negative_indexing(tmp_path):
    store = FeatureStore.from_sift([detect_sift(texture(0)), detect_sift(texture(1))])
    np.testing.assert_array_equal(store[-1].keypoints, store[1].keypoints)
    with pytest.raises(IndexError, match="^image 2 is out of range for 2 images$"):
        store[2]
    with pytest.raises(IndexError, match="^image -3 is out of range for 2 images$"):
        store[-3]
    k, d, o = store.keypoints, store.descriptors, store.offsets
    with pytest.raises(ValueError, match=r"^keypoints must be \(K, 2\), got shape"):
        FeatureStore(k[:, :1], d, o)
    with pytest.raises(ValueError, match=r"^descriptors must be \(\d+, 128\) uint8, got float32"):
        FeatureStore(k, d.astype(np.float32), o)
    for bad in (o[:-1], o + 1, o[::-1], o.astype(np.float64), np.array([], np.int64)):
        with pytest.raises(ValueError, match=r"^offsets must rise from 0 to \d+"):
            FeatureStore(k, d, bad)
    assert FeatureStore.from_sift([]).offsets.tolist() == [0] and len(FeatureStore.from_sift([])) == 0


def test_the_verification_is_described_for_reports():
    meta = verify.verification_meta(top=50)
    assert meta == {"top": 50, "min_inliers": 8, "detector": "SIFT", "descriptor": "RootSIFT",
                    "opencv": cv2.__version__, "max_side": 512, "max_features": 1000,
                    "matching": "mutual nearest neighbours, ratio test 0.8", "model": "homography",
                    "estimator": "OpenCV USAC_DEFAULT", "threshold_px": 4.0}
    assert verify.feature_meta(max_side=256, max_features=None)["max_features"] is None


# ---------------------------------------------------------------- planted correspondences

E128 = np.eye(128, dtype=np.float32)
SHEAR = np.array([[1.0, 0.3, 15.0], [0.0, 0.9, -8.0]])  # an affine map no similarity can follow


def planted(matrix: np.ndarray, seed: int = 0) -> tuple[LocalFeatures, LocalFeatures]:
    """60 one-to-one matches through an affine map: 30 exact, 10 off by 3.5 px, 20 elsewhere."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(20, 480, (60, 2))
    moved = points @ matrix[:, :2].T + matrix[:, 2]
    angle = rng.uniform(0, 2 * np.pi, 10)
    moved[30:40] += 3.5 * np.stack([np.cos(angle), np.sin(angle)], 1)
    moved[40:] = rng.uniform(20, 480, (20, 2))
    return (LocalFeatures(points.astype(np.float32), E128[:60]),
            LocalFeatures(moved.astype(np.float32), E128[:60]))


def test_each_model_counts_the_planted_inliers_at_its_threshold():
    a, b = planted(SHEAR)
    # 4 px takes the 30 exact and the 10 near matches, never the 20 others; 3 px leaves out the near ones
    assert count_inliers(a, b) == 40
    assert count_inliers(a, b, model="affine") == 40
    assert count_inliers(a, b, threshold=3.0) < 40 and count_inliers(a, b, model="affine", threshold=3.0) < 40
    # a similarity cannot follow the shear
    assert count_inliers(a, b, model="similarity") < 20
    assert count_inliers(*planted(np.array([[1.0, -0.3, 20.0], [0.3, 1.0, 5.0]])), model="similarity") == 40
    assert count_inliers(*planted(np.array([[1.0, -0.3, 20.0], [0.3, 1.0, 5.0]])), model="similarity",
                         threshold=3.0) < 40
    # the fundamental matrix's threshold is a distance to the epipolar line: a wider one takes more
    for model in verify.MODELS:
        assert count_inliers(a, b, model=model, threshold=0.5) < count_inliers(a, b, model=model, threshold=8.0)


def test_degenerate_matches_give_no_inliers():
    # eight matches on one line: no homography is fitted, so nothing is counted or drawn
    line = LocalFeatures(np.stack([np.arange(8) * 10.0, np.zeros(8)], 1).astype(np.float32), E128[:8])
    assert count_inliers(line, line) == 0
    assert verify.inlier_matches(line, line).shape == (0, 4)


def ambiguous_pairs() -> tuple[LocalFeatures, LocalFeatures]:
    """30 exact matches by a shift, plus 10 that only the ratio test drops and 10 only the mutual check drops.

    Ratio: a's descriptor appears twice in b, first at the right place. Mutual: a second descriptor of a,
    near one of the 30 and half a pixel from it, whose nearest in b is that one's match."""
    rng = np.random.default_rng(1)
    points = rng.uniform(20, 480, (40, 2)).astype(np.float32)
    shift = np.float32([12, -7])
    near = (E128[:10] + 0.2 * E128[100:110]) / np.linalg.norm(E128[0] + 0.2 * E128[100])
    a = LocalFeatures(np.concatenate([points, points[:10] + np.float32([0.5, 0])]),
                      np.concatenate([E128[:40], near]))
    b = LocalFeatures(np.concatenate([points + shift, rng.uniform(20, 480, (10, 2)).astype(np.float32)]),
                      np.concatenate([E128[:40], E128[30:40]]))
    return a, b


def test_ratio_and_mutual_reach_the_inlier_count():
    a, b = ambiguous_pairs()
    assert count_inliers(a, b) == 30
    assert count_inliers(a, b, ratio=None) == 40
    assert count_inliers(a, b, mutual=False) == 40
    assert count_inliers(a, b, ratio=None, mutual=False) == 50
    assert match_features(a, b).tolist() == match_features(a, b, mutual=True).tolist()
    assert len(match_features(a, b)) == 30
    none = LocalFeatures(a.keypoints[:0], a.descriptors[:0])
    assert verify_top(np.array([1, 0, 2]), a, [a, b, none], top=3, ratio=None).tolist() == [40, 50, 0]
    assert verify_top(np.array([1, 0, 2]), a, [a, b, none], top=3).tolist() == [30, 50, 0]
    # passed on to the verification, and min_inliers on to the re-ranking: 40 passes 35, 30 does not
    db = [none, b, none]
    assert spatial_rerank(np.array([0, 2, 1]), a, db, top=3, min_inliers=35, ratio=None).tolist() == [1, 0, 2]
    assert spatial_rerank(np.array([0, 2, 1]), a, db, top=3, min_inliers=35).tolist() == [0, 2, 1]
    assert spatial_rerank(np.array([0, 2, 1]), a, db, top=3, min_inliers=1).tolist() == [1, 0, 2]


def test_edge_settings_and_result_types():
    image = texture(0)
    keypoints, sift = detect_sift(image)
    # the strongest keypoint comes first, by OpenCV's own response
    found = cv2.SIFT_create().detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    strongest = max(found, key=lambda k: k.response)
    np.testing.assert_allclose(keypoints[0], strongest.pt, atol=1e-3)
    assert sift.min() == 0  # zeros of the descriptor stay zero
    one, _ = detect_sift(image, max_features=1)
    np.testing.assert_array_equal(one, keypoints[:1])
    small, _ = detect_sift(image, max_side=16)
    assert small.dtype == np.float32 and (small <= 16).all()
    with pytest.raises(ValueError, match="^max_side must be a whole number >= 16, got 512.0$"):
        detect_sift(image, max_side=512.0)
    # a one-pixel sliver and a flat image are images, with no keypoints
    for flat in (np.full((1, 40), 9, np.uint8), np.full((64, 64), 128, np.uint8)):
        k, d = detect_sift(flat)
        assert k.shape == (0, 2) and k.dtype == np.float32 and d.shape == (0, 128) and d.dtype == np.uint8
    # a colour array is turned grey as RGB, and a PIL image the same way
    colour = image.copy()
    colour[..., 0] = np.flipud(image[..., 0])
    colour[..., 2] = 255 - image[..., 2]
    for a, b in ((colour, cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)),
                 (Image.fromarray(colour), np.asarray(Image.fromarray(colour).convert("L")))):
        np.testing.assert_array_equal(detect_sift(a)[0], detect_sift(b)[0])
    # downscaling averages areas
    big = cv2.resize(colour, (640, 480), interpolation=cv2.INTER_CUBIC)
    grey = cv2.resize(cv2.cvtColor(big, cv2.COLOR_RGB2GRAY), (160, 120), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(detect_sift(big, max_side=160)[0], detect_sift(grey, max_side=160)[0])


def test_matching_edges_and_types():
    a = LocalFeatures(np.zeros((3, 2), np.float32), E128[[0, 1, 2]])
    close = (E128[1] + 0.05 * E128[5]) / np.linalg.norm(E128[1] + 0.05 * E128[5])
    b = LocalFeatures(np.zeros((4, 2), np.float32), np.stack([E128[0], close, close, E128[9]]))
    # ratio 1 is allowed; a tie (equal distances) fails it
    assert match_features(a, b, ratio=1.0).tolist() == [[0, 0]]
    assert match_features(a, b, ratio=None).tolist() == match_features(a, b, ratio=None, mutual=True).tolist()
    none = match_features(LocalFeatures(np.zeros((0, 2)), np.zeros((0, 128))), b)
    assert none.shape == (0, 2) and none.dtype == np.int64
    # each row's second nearest is its own: a1's ambiguity does not fail a0
    one, two = E128[5] + 0.05 * E128[6], E128[5] + 0.06 * E128[7]
    a2 = LocalFeatures(np.zeros((2, 2), np.float32), np.stack([E128[0], E128[5]]))
    b2 = LocalFeatures(np.zeros((3, 2), np.float32),
                       np.stack([unit_at(0.3, 1), one / np.linalg.norm(one), two / np.linalg.norm(two)]))
    assert match_features(a2, b2).tolist() == [[0, 0]]
    # integer descriptors and None-filled arrays are read as numbers
    ints = LocalFeatures([[0, 0], [1, 1]], [[1] + [0] * 127, [0, 1] + [0] * 126])
    assert match_features(ints, ints).tolist() == [[0, 0], [1, 1]]
    for bad in (LocalFeatures([[None, None]], np.zeros((1, 128))), LocalFeatures(np.zeros((1, 2)), [[None] * 128])):
        with pytest.raises(ValueError, match="^features_b holds NaN or infinite values$"):
            match_features(a, bad)
    with pytest.raises(ValueError, match=r"^features_b descriptors must be \(3, 128\) to match the keypoints, "
                                         r"got shape \(3, 64\)$"):
        match_features(a, LocalFeatures(np.zeros((3, 2)), np.zeros((3, 64))))
    # the checks name the argument at fault, whichever function is called
    bad = LocalFeatures(np.zeros((3, 3)), np.zeros((3, 128)))
    with pytest.raises(ValueError, match=r"^features_a keypoints must be \(k, 2\)"):
        count_inliers(bad, a)
    with pytest.raises(ValueError, match=r"^features_b keypoints must be \(k, 2\)"):
        count_inliers(a, bad)
    with pytest.raises(ValueError, match=r"^query_features keypoints must be \(k, 2\)"):
        verify_top(np.array([0]), bad, [a])
    assert count_inliers(a, a, threshold=0.5) == 0  # a threshold under a pixel is allowed


def test_rerank_edges_and_types():
    ranking = np.arange(60, dtype=np.int32)[::-1]
    out = rerank_by_inliers(ranking, np.array([8, 3] * 30))
    assert out.dtype == np.int64
    # exactly min_inliers passes; the ties keep their order, however many
    assert out.tolist() == ranking[::2].tolist() + ranking[1::2].tolist()
    with pytest.raises(ValueError, match="^ranking lists a database row more than once$"):
        rerank_by_inliers(np.array([0, 0]), np.array([1]))
    with pytest.raises(ValueError, match="^min_inliers must be a whole number >= 1, got 0$"):
        spatial_rerank(np.array([0]), planted(SHEAR)[0], [planted(SHEAR)[0]], min_inliers=0)
    a = planted(SHEAR)[0]
    empty = verify_top(np.array([0, 1]), a, [a, a], top=0)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert spatial_rerank(np.array([1, 0]), a, [a, a], top=0).tolist() == [1, 0]


def test_root_sift_normalises_any_scale_and_the_store_keeps_its_types(monkeypatch):
    np.testing.assert_array_equal(root_sift(0.25 * E128[:1]), E128[:1])
    store = FeatureStore.from_sift([detect_sift(texture(0)), detect_sift(texture(1))])
    np.testing.assert_array_equal(store[-2].keypoints, store[0].keypoints)
    k, d, o = store.keypoints, store.descriptors, store.offsets
    assert FeatureStore(k.astype(np.float64), d, o).keypoints.dtype == np.float32
    with pytest.raises(ValueError, match=r"^offsets must rise from 0 to \d+, got \[\s*0\s+\d+\s+1\s+\d+\]\.\.\. "
                                         r"\(int64, 4 values\)$"):
        FeatureStore(k, d, np.array([0, len(k), 1, len(k)]))
    with pytest.raises(ValueError, match=r"^offsets must rise from 0 to \d+, got \[0 1 2 3 4\]\.\.\. "
                                         r"\(int64, 7 values\)$"):
        FeatureStore(k, d, np.arange(7))
    # the described estimator follows the default model
    monkeypatch.setattr(verify, "DEFAULT_MODEL", "affine")
    assert verify.verification_meta(top=1)["estimator"] == "OpenCV RANSAC"


def test_many_tied_counts_keep_the_first_ranking_order():
    ranking = np.arange(100)[::-1].copy()
    inliers = np.tile([30, 12, 30, 9, 12], 16)  # 80 verified, many ties at each count
    ranked = verify.rerank_by_inliers(ranking, inliers)
    positions = {30: [i for i in range(80) if inliers[i] == 30], 12: [i for i in range(80) if inliers[i] == 12],
                 9: [i for i in range(80) if inliers[i] == 9]}
    expected = [ranking[i] for i in positions[30] + positions[12] + positions[9]] + ranking[80:].tolist()
    assert ranked.tolist() == expected


def test_inlier_matches_at_the_fewest_matches_a_model_takes_and_below():
    points = np.array([[10, 10], [200, 15], [30, 220], [240, 260]], np.float32)
    a = LocalFeatures(points, E128[:4])
    b = LocalFeatures(points * 1.5 + np.float32([7, -3]), E128[:4])
    four = verify.inlier_matches(a, b)  # a homography needs 4: exactly 4 exact matches are its inliers
    assert four.shape == (4, 4) and four.dtype == np.float32
    np.testing.assert_allclose(sorted(four[:, 0]), sorted(points[:, 0]))
    for few in (verify.inlier_matches(LocalFeatures(points[:3], E128[:3]), LocalFeatures(points[:3], E128[:3])),
                verify.inlier_matches(LocalFeatures(points[:0], E128[:0]), b)):
        assert few.shape == (0, 4) and few.dtype == np.float32


def test_inlier_matches_are_the_counted_inliers_for_every_model():
    # planted: 30 exact and 10 near matches through the shear, 20 elsewhere (the same pairs count_inliers counts)
    a, b = planted(SHEAR)
    planted_pairs = np.concatenate([a.keypoints[:40], b.keypoints[:40]], axis=1)
    for model in verify.MODELS:
        found = verify.inlier_matches(a, b, model=model)
        assert found.dtype == np.float32 and found.shape == (count_inliers(a, b, model=model), 4), model
        if model in ("homography", "affine"):  # both follow the shear: exactly the 40 planted matches
            np.testing.assert_array_equal(np.unique(found, axis=0), np.unique(planted_pairs, axis=0))
