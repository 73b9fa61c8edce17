"""The match view: two images side by side, the verified matches drawn between them."""

import cv2
import numpy as np
from PIL import Image

from retrieval.matchview import GAP, LINE, match_view
from retrieval.verify import count_inliers, local_features
from tests.test_verify import texture, warped


def test_side_by_side_with_the_verified_matches_drawn():
    original = texture(0)
    moved = warped(original)
    view = match_view(Image.fromarray(original), Image.fromarray(moved))
    h, w = original.shape[:2]
    assert view.image.size == (w + GAP + moved.shape[1], max(h, moved.shape[0]))
    # The count is spatial verification's own on the same two images.
    assert view.count == count_inliers(local_features(original), local_features(moved)) > 100
    assert view.matches.shape == (view.count, 4)
    assert view.matches[:, 0].max() < w and view.matches[:, 2].min() >= w + GAP  # left end left, right end right
    pixels = np.asarray(view.image)
    # The left half is the image itself where no line or point is drawn.
    assert np.mean(np.all(pixels[:h, :w] == original, axis=2)) > 0.3  # (over 100 lines cross this one)
    # Lines are drawn in the gap, where there is no image.
    gap = pixels[:, w:w + GAP]
    assert np.any(np.all(gap == LINE, axis=2))


def test_images_larger_than_the_side_are_scaled_down_and_unrelated_ones_show_few_matches():
    big = cv2.resize(texture(0), (1280, 960), interpolation=cv2.INTER_CUBIC)
    view = match_view(Image.fromarray(big), Image.fromarray(texture(3)), side=512)
    assert view.image.size == (512 + GAP + 320, 384)
    assert view.count < 8
    # Where no match is drawn, the gap stays white.
    assert view.count > 0 or np.all(np.asarray(view.image)[:, 512:512 + GAP] == 255)
