"""Why did this match: a query and an index image side by side, with their consistent local matches drawn.

The matches are those spatial verification counts (`retrieval.verify`): SIFT keypoints matched
by RootSIFT descriptors, then kept when they agree on one homography (RANSAC). Both images are
shown at the size the detector sees them, so every line joins the two keypoints it matched.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from retrieval.features import load_image
from retrieval.verify import DEFAULT_MAX_SIDE, inlier_matches, local_features

GAP = 12
LINE = (255, 204, 0)
POINT = (0, 200, 255)


class MatchView(NamedTuple):
    """The side-by-side picture and what it shows.

    Attributes:
        image: RGB, the query on the left and the index image on the right, lines between matches.
        count: how many matches agree on one geometry.
        matches: (count, 4) float32 (x, y) in the left image, then (x, y) in the right one, in
            pixels of `image` (the right image's x already shifted by the left width and the gap).
    """

    image: Image.Image
    count: int
    matches: np.ndarray


def _fit(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def match_view(query, other, *, side: int = DEFAULT_MAX_SIDE, seed: int = 0) -> MatchView:
    """Returns the `MatchView` of two images (PIL images, paths or encoded bytes).

    Args:
        query, other: the two images; each is scaled down (never up) to `side` pixels on its
            longer side, the size `retrieval.verify` detects keypoints at by default.
        side: longest side in pixels of each half.
        seed: RANSAC's seed, so the same pair always shows the same matches.

    Raises:
        retrieval.features.ImageError: an image cannot be decoded.
    """
    left, right = _fit(load_image(query), side), _fit(load_image(other), side)
    arrays = [np.asarray(left), np.asarray(right)]
    features = [local_features(a, max_side=side) for a in arrays]
    found = inlier_matches(features[0], features[1], seed=seed)
    shift = left.width + GAP
    canvas = Image.new("RGB", (shift + right.width, max(left.height, right.height)), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (shift, 0))
    placed = found.copy()
    placed[:, 2] += shift
    draw = ImageDraw.Draw(canvas)
    for xa, ya, xb, yb in placed.tolist():
        draw.line((xa, ya, xb, yb), fill=LINE, width=1)
        for x, y in ((xa, ya), (xb, yb)):
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), outline=POINT, width=1)
    return MatchView(canvas, len(found), placed)
