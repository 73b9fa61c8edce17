"""Larger JPEG previews of indexed images, for the app's editor and its match view.

A 192-px thumbnail is enough for a result grid, not for showing a query sharply or for
finding local-feature matches. Previews are made from the original files, a few hundred
pixels on their longer side, and kept in a cache file beside the build cache, so that a
rebuild makes them only for new or changed files.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from retrieval.features import PREVIEW_QUALITY, ImageError, load_image, make_thumbnail

# 512 px: what spatial verification detects keypoints on (retrieval.verify.DEFAULT_MAX_SIDE), and
# sharp in an editor about 400 px high. About 45 kB per photo, so previews are stored only for
# collections up to PREVIEW_MAX_IMAGES (about 230 MB); above that the thumbnails serve alone.
PREVIEW_SIDE = 512
PREVIEW_MAX_IMAGES = 5000


def make_preview(source, side: int = PREVIEW_SIDE) -> bytes:
    """Returns a JPEG of the image whose longer side is at most `side` pixels (never enlarged).

    Raises:
        retrieval.features.ImageError: the file cannot be decoded.
    """
    return make_thumbnail(load_image(source, draft_side=side), side, quality=PREVIEW_QUALITY)


def build_previews(files: dict[str, Path], stamps: dict[str, tuple[int, int]], side: int, cache_file: Path,
                   *, workers: int = 2, made: dict[str, bytes] | None = None) -> list[bytes]:
    """Returns one preview per entry of `files` (in its order), reusing those in `cache_file` or `made`.

    Args:
        files: relative path -> image file.
        stamps: relative path -> (size, mtime_ns); a cached preview is reused when its stamp matches.
        side: longest side in pixels.
        cache_file: an .npz written atomically with every preview returned (and nothing else).
        workers: decoding threads.
        made: relative path -> preview made in this build's decoding pass (at `side`).

    Raises:
        retrieval.features.ImageError: a file that was embedded cannot be decoded any more.
    """
    cached = _load(cache_file, side)
    rels = list(files)
    made = {rel: made[rel] for rel in rels if rel in (made or {})}
    todo = [rel for rel in rels if rel not in made and (rel not in cached or cached[rel][0] != stamps[rel])]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        made.update(zip(todo, pool.map(lambda rel: make_preview(files[rel], side), todo)))
    previews = [made[rel] if rel in made else cached[rel][1] for rel in rels]
    if made or len(cached) != len(rels):
        _save(cache_file, side, rels, [stamps[rel] for rel in rels], previews)
    return previews


def _load(cache_file: Path, side: int) -> dict[str, tuple[tuple[int, int], bytes]]:
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            if int(z["side"]) != side:
                return {}
            blob, offsets = z["blob"].tobytes(), z["offsets"]
            return {rel: ((int(size), int(mtime)), blob[offsets[j]:offsets[j + 1]])
                    for j, (rel, size, mtime) in enumerate(zip(z["relpaths"].tolist(), z["sizes"], z["mtimes"]))}
    except (OSError, ValueError, KeyError, ImageError):
        return {}


def _save(cache_file: Path, side: int, rels: list[str], stamps: list[tuple[int, int]], previews: list[bytes]) -> None:
    offsets = np.zeros(len(previews) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in previews])
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.stem}.tmp.npz")
    try:
        np.savez(tmp, side=np.int64(side), relpaths=np.asarray(rels, dtype=str),
                 sizes=np.asarray([s for s, _ in stamps], dtype=np.int64),
                 mtimes=np.asarray([m for _, m in stamps], dtype=np.int64),
                 blob=np.frombuffer(b"".join(previews), dtype=np.uint8), offsets=offsets)
        os.replace(tmp, cache_file)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
