"""Spatial verification: re-rank the top results by how many local features agree on one geometry.

A global descriptor says two photos look alike; spatial verification checks that many local
features of the query land, through a single geometric transformation, on matching features
of the database image (Philbin et al., "Object retrieval with large vocabularies and fast
spatial matching", CVPR 2007). Here: OpenCV SIFT keypoints on a resized greyscale image,
RootSIFT descriptors (Arandjelović and Zisserman, CVPR 2012), nearest-neighbour matching with
the ratio test and a mutual check, and RANSAC counting the matches that fit one model.

Keypoints are (k, 2) float32 (x, y) in pixels of the image as resized for detection;
RootSIFT descriptors are (k, 128) float32 and L2-normalised. Nothing here prints or touches
files: `FeatureStore` packs many images' features into flat arrays for a caller to save.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import cv2
import numpy as np

from retrieval.features import load_image

# Chosen by measurement on the mini RParis, top 100 of Lite0's rankings (docs/evaluation.md, "Spatial
# verification"). Of max sides 384 to 1024 and 1000 to all keypoints, 512 and 1000 verify as
# many true matches as the largest settings, which are 2 to 4 times slower. With the ratio test
# and the mutual check no non-matching image reached 7 homography inliers at 4 pixels; affine
# did as well, while the fundamental matrix let them reach 10 and dropping either filter 9 to 30.
DEFAULT_MAX_SIDE = 512
DEFAULT_MAX_FEATURES = 1000
DEFAULT_RATIO = 0.8
DEFAULT_MODEL = "homography"
DEFAULT_THRESHOLD = 4.0
DEFAULT_MIN_INLIERS = 8
DEFAULT_TOP = 100

SIFT_DIM = 128
MODELS = ("homography", "affine", "similarity", "fundamental")
# Matches a model needs before RANSAC can fit it at all.
_MIN_MATCHES = {"homography": 4, "affine": 3, "similarity": 2, "fundamental": 8}
_RANSAC_ITERS = 2000
_RANSAC_CONFIDENCE = 0.995


class LocalFeatures(NamedTuple):
    """Local features of one image.

    Attributes:
        keypoints: (k, 2) float32 (x, y) in pixels of the image as resized for detection.
        descriptors: (k, 128) float32 RootSIFT, L2-normalised.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray


# ---------------------------------------------------------------- features


def _grey(image, max_side: int) -> np.ndarray:
    """Returns the image as a (h, w) uint8 array whose longer side is at most max_side."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"an image array must be (h, w) or (h, w, 3) uint8, got {image.dtype} {image.shape}")
        grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    else:
        # load_image also turns a PIL image upright by its EXIF tag, as the global descriptor sees it.
        grey = np.asarray(load_image(image).convert("L"))
    if min(grey.shape) < 1:
        raise ValueError(f"the image is empty ({grey.shape[1]}x{grey.shape[0]})")
    scale = max_side / max(grey.shape)
    if scale < 1:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(grey)


def detect_sift(image, *, max_side: int = DEFAULT_MAX_SIDE,
                max_features: int | None = DEFAULT_MAX_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Returns SIFT keypoints and raw SIFT descriptors of an image, strongest first.

    The image is turned grey and scaled down (never up) so its longer side is at most
    max_side. The order is canonical (response, then position, size, angle), so the result
    does not depend on how OpenCV's threads happened to interleave.

    Args:
        image: a PIL image, a path or encoded bytes (see `retrieval.features.load_image`), or an
            (h, w) / (h, w, 3) RGB uint8 array.
        max_side: longest side in pixels the detector sees.
        max_features: keep at most this many keypoints, by detector response; None keeps all.

    Returns:
        (keypoints (k, 2) float32 (x, y) in pixels of the resized image,
        descriptors (k, 128) uint8): OpenCV's SIFT descriptor values are whole numbers in
        [0, 255], so uint8 holds them exactly.

    Raises:
        ValueError: on a bad image array, an empty image or bad settings.
        retrieval.features.ImageError: on an undecodable image.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16:
        raise ValueError(f"max_side must be a whole number >= 16, got {max_side!r}")
    if max_features is not None and (isinstance(max_features, bool) or not isinstance(max_features, int)
                                     or max_features < 1):
        raise ValueError(f"max_features must be a whole number >= 1 or None, got {max_features!r}")
    grey = _grey(image, max_side)
    keypoints, descriptors = cv2.SIFT_create().detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, SIFT_DIM), np.uint8)
    info = np.array([(k.response, k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], dtype=np.float64)
    # lexsort's last key is the primary one: response, strongest first, then the rest for ties.
    order = np.lexsort((info[:, 4], info[:, 3], info[:, 2], info[:, 1], -info[:, 0]))[:max_features]
    points = np.ascontiguousarray(info[order, 1:3], dtype=np.float32)
    return points, np.ascontiguousarray(np.clip(np.rint(descriptors[order]), 0, 255), dtype=np.uint8)


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """Returns (k, 128) float32 RootSIFT: each SIFT row L1-normalised, then square-rooted.

    The result is L2-normalised (zero rows stay zero), so inner products are Hellinger
    kernels of the original histograms.

    Raises:
        ValueError: if the input is not (k, 128) non-negative.
    """
    d = np.asarray(descriptors, dtype=np.float32)
    if d.ndim != 2 or d.shape[1] != SIFT_DIM:
        raise ValueError(f"SIFT descriptors must be (k, {SIFT_DIM}), got shape {d.shape}")
    if d.size and not (np.isfinite(d).all() and d.min() >= 0):
        raise ValueError("SIFT descriptors must be finite and non-negative")
    total = d.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(np.sqrt(d / np.maximum(total, 1e-12)), dtype=np.float32)


def local_features(image, *, max_side: int = DEFAULT_MAX_SIDE,
                   max_features: int | None = DEFAULT_MAX_FEATURES) -> LocalFeatures:
    """Returns the SIFT keypoints and RootSIFT descriptors of an image (see `detect_sift`)."""
    keypoints, sift = detect_sift(image, max_side=max_side, max_features=max_features)
    return LocalFeatures(keypoints, root_sift(sift))


def feature_meta(*, max_side: int = DEFAULT_MAX_SIDE, max_features: int | None = DEFAULT_MAX_FEATURES) -> dict:
    """Returns the JSON-ready description of what decides the local features (for caches and reports)."""
    return {"detector": "SIFT", "descriptor": "RootSIFT", "opencv": cv2.__version__, "max_side": max_side,
            "max_features": max_features}


def verification_meta(*, top: int, min_inliers: int = DEFAULT_MIN_INLIERS) -> dict:
    """Returns the JSON-ready description of a spatial re-ranking with this module's defaults."""
    return {
        "top": top,
        "min_inliers": min_inliers,
        **feature_meta(),
        "matching": f"mutual nearest neighbours, ratio test {DEFAULT_RATIO:g}",
        "model": DEFAULT_MODEL,
        "estimator": "OpenCV USAC_DEFAULT" if DEFAULT_MODEL == "homography" else "OpenCV RANSAC",
        "threshold_px": DEFAULT_THRESHOLD,
    }


def _check_features(features, name: str) -> LocalFeatures:
    try:
        keypoints, descriptors = features
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (keypoints, descriptors) pair") from None
    keypoints = np.ascontiguousarray(keypoints, dtype=np.float32)
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise ValueError(f"{name} keypoints must be (k, 2), got shape {keypoints.shape}")
    if descriptors.ndim != 2 or descriptors.shape[1] != SIFT_DIM or len(descriptors) != len(keypoints):
        raise ValueError(
            f"{name} descriptors must be ({len(keypoints)}, {SIFT_DIM}) to match the keypoints, "
            f"got shape {descriptors.shape}"
        )
    if not (np.isfinite(keypoints).all() and np.isfinite(descriptors).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return LocalFeatures(keypoints, descriptors)


# ---------------------------------------------------------------- matching and geometry


def match_features(features_a, features_b, *, ratio: float | None = DEFAULT_RATIO,
                   mutual: bool = True) -> np.ndarray:
    """Returns (m, 2) int64 pairs (row in a, row in b) of tentative descriptor matches.

    Each descriptor of a is matched to its nearest neighbour in b (Euclidean distance of the
    L2-normalised descriptors). Lowe's ratio test keeps a match when the nearest neighbour
    is closer than `ratio` times the second nearest; the mutual check keeps it when a's
    descriptor is also the nearest in a to that neighbour.

    Args:
        features_a, features_b: `LocalFeatures` (descriptors L2-normalised).
        ratio: the ratio-test threshold in (0, 1]; None skips the test.
        mutual: keep only mutual nearest neighbours.

    Raises:
        ValueError: on malformed features or a ratio outside (0, 1].
    """
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1] or None, got {ratio!r}")
    a = _check_features(features_a, "features_a").descriptors
    b = _check_features(features_b, "features_b").descriptors
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), np.int64)
    sims = a @ b.T
    rows = np.arange(len(a))
    nearest = np.argmax(sims, axis=1)
    best = sims[rows, nearest]
    keep = np.ones(len(a), dtype=bool)
    if mutual:
        # a's descriptor is b's nearest when it reaches the column maximum (argmax down the
        # columns of a C-ordered matrix is many times slower than max).
        keep &= best >= sims.max(axis=0)[nearest]
    if ratio is not None and len(b) > 1:
        sims[rows, nearest] = -np.inf
        second = sims.max(axis=1)
        # squared distances of unit vectors are 2 - 2 cos; the ratio test compares distances.
        keep &= np.maximum(2 - 2 * best, 0) < ratio * ratio * np.maximum(2 - 2 * second, 0)
    return np.stack([rows[keep], nearest[keep]], axis=1).astype(np.int64)


def _check_model(model: str, threshold: float) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be a positive number of pixels, got {threshold!r}")


def _ransac_inliers(src: np.ndarray, dst: np.ndarray, model: str, threshold: float) -> int:
    mask = _ransac_mask(src, dst, model, threshold)
    return 0 if mask is None else int(np.count_nonzero(mask))


def _ransac_mask(src: np.ndarray, dst: np.ndarray, model: str, threshold: float) -> np.ndarray | None:
    if model == "homography":
        # OpenCV's USAC verified as many images as its classic RANSAC on the mini RParis, in half
        # the time; it seeds its own generator, so it repeats too.
        _, mask = cv2.findHomography(src, dst, cv2.USAC_DEFAULT, threshold, maxIters=_RANSAC_ITERS,
                                     confidence=_RANSAC_CONFIDENCE)
    elif model == "affine":
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                       maxIters=_RANSAC_ITERS, confidence=_RANSAC_CONFIDENCE)
    elif model == "similarity":
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                              maxIters=_RANSAC_ITERS, confidence=_RANSAC_CONFIDENCE)
    else:
        _, mask = cv2.findFundamentalMat(src, dst, cv2.FM_RANSAC, threshold, _RANSAC_CONFIDENCE, _RANSAC_ITERS)
    return mask


def count_inliers(features_a, features_b, *, model: str = DEFAULT_MODEL, threshold: float = DEFAULT_THRESHOLD,
                  ratio: float | None = DEFAULT_RATIO, mutual: bool = True, seed: int = 0, at_least: int = 0) -> int:
    """Returns how many tentative matches between two images fit one geometric model (RANSAC).

    Matches joining the same pair of positions count once: SIFT gives one keypoint several
    orientations, and repeats of one correspondence would otherwise inflate the count.

    Args:
        features_a, features_b: `LocalFeatures` of the two images.
        model: "homography" (a plane seen from two viewpoints), "affine", "similarity"
            (rotation, scale, shift) or "fundamental" (any rigid 3-D scene; weaker evidence).
        threshold: RANSAC's inlier distance in pixels of the resized images.
        ratio, mutual: see `match_features`.
        seed: OpenCV's random generator is reset to it first, so results repeat.
        at_least: return 0 without running RANSAC when fewer matches than this remain: the
            inliers could not reach it. For callers that only need counts from a floor up.

    Raises:
        ValueError: on malformed features or bad settings.
    """
    at_least = _check_count(at_least, "at_least", 0)
    coords = _tentative(features_a, features_b, model, threshold, ratio, mutual)
    if len(coords) < max(_MIN_MATCHES[model], at_least):
        return 0
    cv2.setRNGSeed(int(seed))
    src = np.ascontiguousarray(coords[:, :2], dtype=np.float32)
    dst = np.ascontiguousarray(coords[:, 2:], dtype=np.float32)
    return _ransac_inliers(src, dst, model, float(threshold))


def _tentative(features_a, features_b, model: str, threshold: float, ratio, mutual: bool) -> np.ndarray:
    """Returns (m, 4) float32 unique (xa, ya, xb, yb) tentative matches, after checking every input."""
    _check_model(model, threshold)
    a = _check_features(features_a, "features_a")
    b = _check_features(features_b, "features_b")
    pairs = match_features(a, b, ratio=ratio, mutual=mutual)
    coords = np.concatenate([a.keypoints[pairs[:, 0]], b.keypoints[pairs[:, 1]]], axis=1)
    return np.unique(coords, axis=0).astype(np.float32).reshape(-1, 4)


def inlier_matches(features_a, features_b, *, model: str = DEFAULT_MODEL, threshold: float = DEFAULT_THRESHOLD,
                   ratio: float | None = DEFAULT_RATIO, mutual: bool = True, seed: int = 0) -> np.ndarray:
    """Returns the (m, 4) float32 (xa, ya, xb, yb) matches that fit one geometric model (RANSAC).

    The same matches `count_inliers` counts (m equals its count, with the same settings and
    seed), as keypoint positions in pixels of each image as resized for detection, so that a
    caller can draw them.

    Raises:
        ValueError: on malformed features or bad settings.
    """
    coords = _tentative(features_a, features_b, model, threshold, ratio, mutual)
    if len(coords) < _MIN_MATCHES[model]:
        return np.zeros((0, 4), np.float32)
    cv2.setRNGSeed(int(seed))
    mask = _ransac_mask(np.ascontiguousarray(coords[:, :2]), np.ascontiguousarray(coords[:, 2:]), model,
                        float(threshold))
    if mask is None:
        return np.zeros((0, 4), np.float32)
    return np.ascontiguousarray(coords[np.asarray(mask).ravel() != 0])


# ---------------------------------------------------------------- re-ranking


def _check_ranking(ranking) -> np.ndarray:
    ranking = np.asarray(ranking)
    if ranking.ndim != 1 or not np.issubdtype(ranking.dtype, np.integer):
        raise ValueError(f"ranking must be a 1-D integer array, got {ranking.dtype} {ranking.shape}")
    if len(np.unique(ranking)) != len(ranking):
        raise ValueError("ranking lists a database row more than once")
    return ranking.astype(np.int64)


def _check_count(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def verify_top(ranking, query_features, db_features, *, top: int = DEFAULT_TOP, **match) -> np.ndarray:
    """Returns (min(top, n),) int64 inlier counts of the query against its top-ranked images.

    Args:
        ranking: (n,) database rows, best first.
        query_features: the query's `LocalFeatures`.
        db_features: a database row -> `LocalFeatures`: a callable, or anything indexable by
            row (a list, a mapping, a `FeatureStore`).
        top: how many images of the ranking to verify.
        **match: model, threshold, ratio, mutual, seed, at_least for `count_inliers`.

    Raises:
        ValueError: on a malformed ranking or features, or bad settings.
    """
    ranking = _check_ranking(ranking)
    top = _check_count(top, "top", 0)
    query = _check_features(query_features, "query_features")
    lookup = db_features if callable(db_features) else db_features.__getitem__
    return np.array([count_inliers(query, lookup(int(row)), **match) for row in ranking[:top]], dtype=np.int64)


def rerank_by_inliers(ranking, inliers, *, min_inliers: int = DEFAULT_MIN_INLIERS) -> np.ndarray:
    """Returns the (n,) ranking with its verified head first, ordered by inlier count.

    The first len(inliers) images are the verified part. Those with at least `min_inliers`
    inliers come first, most inliers first (ties keep the original order); the rest of the
    verified part follows in its original order, then the unverified tail unchanged.

    Raises:
        ValueError: if inliers is longer than the ranking, or on bad input.
    """
    ranking = _check_ranking(ranking)
    inliers = np.asarray(inliers)
    if inliers.ndim != 1 or not np.issubdtype(inliers.dtype, np.integer) or len(inliers) > len(ranking):
        raise ValueError(f"inliers must be 1-D integers, at most {len(ranking)} long, got {inliers.dtype} "
                         f"{inliers.shape}")
    min_inliers = _check_count(min_inliers, "min_inliers", 1)
    head = ranking[: len(inliers)]
    passed = inliers >= min_inliers
    order = np.flatnonzero(passed)
    order = order[np.argsort(-inliers[order], kind="stable")]
    return np.concatenate([head[order], head[~passed], ranking[len(inliers):]])


def spatial_rerank(ranking, query_features, db_features, *, top: int = DEFAULT_TOP,
                   min_inliers: int = DEFAULT_MIN_INLIERS, **match) -> np.ndarray:
    """Returns the (n,) ranking with its top images re-ordered by spatial verification.

    `verify_top` then `rerank_by_inliers`: images of the top `top` with at least
    `min_inliers` inliers first, most inliers first, then the others in their original order.

    Args:
        ranking: (n,) database rows, best first.
        query_features: the query's `LocalFeatures`.
        db_features: a database row -> `LocalFeatures` (callable or indexable).
        top: how many images of the ranking to verify; 0 returns the ranking unchanged.
        min_inliers: fewest inliers that count as verified.
        **match: model, threshold, ratio, mutual, seed for `count_inliers`.

    Raises:
        ValueError: on a malformed ranking or features, or bad settings.
    """
    min_inliers = _check_count(min_inliers, "min_inliers", 1)
    # Below min_inliers the exact count does not change the order, so RANSAC is skipped there.
    inliers = verify_top(ranking, query_features, db_features, top=top, at_least=min_inliers, **match)
    return rerank_by_inliers(ranking, inliers, min_inliers=min_inliers)


# ---------------------------------------------------------------- storage


class FeatureStore:
    """The local features of many images, packed into flat arrays for saving and loading.

    Raw SIFT is kept as uint8 (exact, a quarter of float32) and turned into RootSIFT when an
    image's features are read.

    Attributes:
        keypoints: (K, 2) float32, every image's keypoints one after another.
        descriptors: (K, 128) uint8 raw SIFT, aligned with keypoints.
        offsets: (n + 1,) int64; image i owns rows offsets[i]:offsets[i + 1].
    """

    def __init__(self, keypoints: np.ndarray, descriptors: np.ndarray, offsets: np.ndarray):
        keypoints = np.ascontiguousarray(keypoints, dtype=np.float32)
        descriptors = np.asarray(descriptors)
        offsets = np.asarray(offsets)
        if keypoints.ndim != 2 or keypoints.shape[1] != 2:
            raise ValueError(f"keypoints must be (K, 2), got shape {keypoints.shape}")
        if descriptors.dtype != np.uint8 or descriptors.shape != (len(keypoints), SIFT_DIM):
            raise ValueError(f"descriptors must be ({len(keypoints)}, {SIFT_DIM}) uint8, got "
                             f"{descriptors.dtype} {descriptors.shape}")
        if (offsets.ndim != 1 or len(offsets) < 1 or not np.issubdtype(offsets.dtype, np.integer)
                or offsets[0] != 0 or offsets[-1] != len(keypoints) or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"offsets must rise from 0 to {len(keypoints)}, got {offsets[:5]}... "
                             f"({offsets.dtype}, {len(offsets)} values)")
        self.keypoints = keypoints
        self.descriptors = np.ascontiguousarray(descriptors)
        self.offsets = offsets.astype(np.int64)

    @classmethod
    def from_sift(cls, features: Sequence[tuple[np.ndarray, np.ndarray]]) -> FeatureStore:
        """Packs per-image (keypoints (k, 2), uint8 SIFT (k, 128)) pairs from `detect_sift`."""
        counts = [len(k) for k, _ in features]
        offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        keypoints = np.concatenate([np.zeros((0, 2), np.float32)] + [k for k, _ in features])
        descriptors = np.concatenate([np.zeros((0, SIFT_DIM), np.uint8)] + [d for _, d in features])
        return cls(keypoints, descriptors, offsets)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FeatureStore:
        """Rebuilds a store from `to_arrays()` output (e.g. an opened npz file)."""
        return cls(arrays["keypoints"], arrays["descriptors"], arrays["offsets"])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Returns {keypoints, descriptors, offsets}, ready for `np.savez`."""
        return {"keypoints": self.keypoints, "descriptors": self.descriptors, "offsets": self.offsets}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> LocalFeatures:
        """Returns image i's `LocalFeatures` (RootSIFT descriptors)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} is out of range for {len(self)} images")
        i %= len(self)
        start, stop = self.offsets[i], self.offsets[i + 1]
        return LocalFeatures(self.keypoints[start:stop], root_sift(self.descriptors[start:stop]))

