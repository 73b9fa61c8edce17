"""Global image descriptors: image loading, resizing, pooling and batched extraction.

Every descriptor leaves this module as an L2-normalised float32 row. The network is passed
in (see `retrieval.networks`), so nothing here downloads or imports TensorFlow.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retrieval.search import l2_normalize

POOLINGS = ("gem", "mac", "spoc", "flatten", "rgem")
SCALE_COMBINATIONS = ("mean", "max")
# R-MAC's region levels (Tolias et al., ICLR 2016) and the overlap of neighbouring regions.
RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Refuse to decode more than this many pixels: a 12000x12000 photo decodes to 432 MB of RGB.
MAX_PIXELS = 100_000_000
THUMBNAIL_SIDE = 192
# JPEG quality of the larger previews (`retrieval.previews`), made in the same decoding pass.
PREVIEW_QUALITY = 85
# EfficientNetB7 halves sizes with floor five times: a side under 32 pixels leaves no feature map.
MIN_SIDE = 32
# Fixed-shape buckets: the shorter side is rounded to a multiple of the networks' stride, between
# 9:16 and 16:9 (at max side 384: 224, 256, ..., 384, landscape and portrait, 11 shapes).
BUCKET_STEP = 32
BUCKET_LOOKAHEAD = 5
BUCKET_MIN_RATIO = 9 / 16
BUCKET_FITS = ("resize", "pad")
# What a padded canvas is filled with: the ImageNet mean colour, which the network normalises to zero.
PAD_RGB = (124, 116, 104)


class ImageError(ValueError):
    """An input that is not an image we can decode safely."""


@dataclass(frozen=True)
class Pipeline:
    """How an image becomes a descriptor; recorded in every index so queries match it.

    Attributes:
        pooling: "gem" (generalized mean), "mac" (max), "spoc" (average), "rgem" (an R-MAC
            grid of GeM regions, each L2-normalised, summed) or "flatten" (the report's
            flattened feature map; needs a fixed input size).
        max_side: aspect-preserving resize so the longer side has this many pixels.
        squash: resize to squash x squash, ignoring the aspect ratio (the report used 224).
        scales: input scales whose descriptors are combined (multi-scale).
        gem_p: the GeM exponent.
        bucket: None (each image keeps its own aspect ratio), or map every image to the nearest
            of a few shapes at `max_side` (`bucket_size`), so batches have fixed shapes: "resize"
            stretches the image to the bucket's shape, "pad" fits it inside and pools over the
            image's part of the feature map only.
        combine: how the scales' L2-normalised descriptors are combined: "mean" or "max"
            (element-wise).
    """

    pooling: str = "gem"
    max_side: int | None = 384
    squash: int | None = None
    scales: tuple[float, ...] = (1.0,)
    gem_p: float = 3.0
    bucket: str | None = None
    combine: str = "mean"

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if (self.max_side is None) == (self.squash is None):
            raise ValueError("give exactly one of max_side (aspect-preserving) or squash (fixed square)")
        side = self.max_side or self.squash
        if side < 32:
            raise ValueError(f"input side must be at least 32 pixels, got {side}")
        if not self.scales or any(not 0 < s <= 4 for s in self.scales):
            raise ValueError(f"scales must be in (0, 4], got {self.scales}")
        if self.pooling == "flatten" and (self.squash is None or len(self.scales) != 1):
            raise ValueError("flatten pooling needs a fixed input size: use squash and a single scale")
        if self.combine not in SCALE_COMBINATIONS:
            raise ValueError(f"unknown scale combination {self.combine!r}; choose one of {', '.join(SCALE_COMBINATIONS)}")
        if self.pooling in ("gem", "rgem") and self.gem_p <= 0:
            raise ValueError(f"gem_p must be positive, got {self.gem_p}")
        if self.bucket is not None and (self.bucket not in BUCKET_FITS or self.max_side is None):
            raise ValueError(f"bucket is None or one of {', '.join(BUCKET_FITS)}, with max_side; got {self.bucket!r}")

    def to_meta(self) -> dict:
        """Returns the JSON-ready description stored in an index."""
        meta = asdict(self)
        meta["scales"] = list(self.scales)
        if meta["bucket"] is None:
            del meta["bucket"]  # as indexes made before buckets existed describe themselves
        if self.combine == "mean":  # added later: left out at its default, so older indexes and caches still match
            del meta["combine"]
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> Pipeline:
        """Rebuilds a pipeline from `to_meta()` output."""
        return cls(**{**meta, "scales": tuple(meta.get("scales", (1.0,)))})

    def target_size(self, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
        """Returns the (width, height) the network sees for an image of this size."""
        if self.squash is not None:
            side = max(MIN_SIDE, round(self.squash * scale))
            return side, side
        if self.bucket is not None:
            return self.bucket_size(width, height, scale)
        ratio = self.max_side * scale / max(width, height)
        # Extreme panoramas are stretched to MIN_SIDE rather than leaving the network nothing.
        return max(MIN_SIDE, round(width * ratio)), max(MIN_SIDE, round(height * ratio))

    def bucket_size(self, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
        """Returns the (width, height) of the image's bucket: the longer side at max side, the shorter
        a multiple of `BUCKET_STEP` (the nearest when resizing, the next up when padding, so that the
        image keeps its size), and no narrower than 9:16."""
        long = max(MIN_SIDE, round(self.max_side * scale))
        exact = long * min(width, height) / max(width, height, 1)
        lowest = max(MIN_SIDE, BUCKET_STEP * round(long * BUCKET_MIN_RATIO / BUCKET_STEP))
        # Padding: up to the next multiple, less a pixel of rounding (1024x683 at 384 is 384x256.1).
        steps = math.ceil((exact - 1) / BUCKET_STEP) if self.bucket == "pad" else round(exact / BUCKET_STEP)
        short = min(long, max(lowest, BUCKET_STEP * steps))
        return (long, short) if width >= height else (short, long)

    def content_size(self, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
        """Returns the (width, height) of the image itself inside the network input (smaller when padded)."""
        target = self.target_size(width, height, scale)
        if self.bucket != "pad":
            return target
        ratio = min(target[0] / width, target[1] / height)
        return (min(target[0], max(1, round(width * ratio))), min(target[1], max(1, round(height * ratio))))


REPORT_PIPELINE = Pipeline(pooling="flatten", max_side=None, squash=224)


TRUNCATED = "the file is cut short: it ends before the image does (an interrupted download or copy?)"


def too_large(max_pixels: int = MAX_PIXELS) -> str:
    """Returns the one message that refuses an image over the pixel limit (without its size)."""
    return f"the image is too large to decode safely: the limit is {max_pixels / 1e6:g} megapixels"


def load_image(source, *, max_pixels: int = MAX_PIXELS, draft_size: tuple[int, int] | None = None,
               draft_side: int | None = None) -> Image.Image:
    """Returns the image as RGB, upright per its EXIF orientation.

    Args:
        source: a path, encoded bytes, a binary file object or a PIL image.
        max_pixels: larger images are refused before they are decoded.
        draft_size: for JPEGs, lets the decoder scale down by a power of two while staying at
            least this (width, height) in the upright orientation, which is much faster.
        draft_side: the same for a longer side of at least this many pixels (either orientation).

    Raises:
        ImageError: the input is not a decodable image, or is too large to decode safely.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("the file is empty (0 bytes)")
            source = io.BytesIO(source)
        elif isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
            raise ImageError("the file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                # Pillow warns from 89.5 megapixels; our own limit below is the one that applies.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(source)
        except Image.DecompressionBombError as e:
            # Pillow refuses outright from twice its warning size, which is above max_pixels.
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
            raise ImageError(f"{too_large(max_pixels)}: the image has {size}") from None
        except Image.UnidentifiedImageError:
            # Pillow's message names the file, which may be a server's temporary path.
            raise ImageError("not a readable image (no image format recognised)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{too_large(max_pixels)}: the image has {width}x{height} = {width * height:,} pixels")
    try:
        if draft_size is not None and image.format == "JPEG":
            transposed = _exif_transposes(image)
            w, h = (draft_size[1], draft_size[0]) if transposed else draft_size
            image.draft("RGB", (w, h))
        elif draft_side is not None and image.format == "JPEG":
            # A longer side bounds both orientations alike: the stored size needs no transposing.
            ratio = min(1.0, draft_side / max(width, height, 1))
            image.draft("RGB", (math.ceil(width * ratio), math.ceil(height * ratio)))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, OSError) and "truncated" in str(e):  # Pillow's "image file is truncated (N bytes not processed)"
            raise ImageError(TRUNCATED) from None
        raise ImageError(f"the image cannot be decoded ({type(e).__name__}: {e})") from None


def _exif_transposes(image: Image.Image) -> bool:
    try:
        return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # a broken EXIF block is ignored, as exif_transpose does
        return False


def _to_rgb(image: Image.Image) -> Image.Image:
    # A PNG's tRNS chunk (a transparent palette index, grey level or RGB colour) is transparency too.
    transparent = "transparency" in image.info
    if image.mode == "RGB" and not transparent:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and float greyscale: PIL's convert("RGB") clips, so rescale to 8 bits first.
        arr = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # a 2-D uint8 array is an "L" image
    if transparent or image.mode in ("RGBA", "LA", "PA", "RGBa"):
        # Transparent parts are shown on white, as a browser shows them.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def crop_box(image: Image.Image, box) -> Image.Image:
    """Returns the (x0, y0, x1, y1) region of `image`, clipped to the image.

    Raises:
        ImageError: if the box is malformed or empty after clipping.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ImageError(f"a box is four numbers x0, y0, x1, y1; got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ImageError(f"box coordinates must be finite, got {box!r}")
    w, h = image.size
    x0, x1 = sorted((min(max(x0, 0), w), min(max(x1, 0), w)))
    y0, y1 = sorted((min(max(y0, 0), h), min(max(y1, 0), h)))
    x0, y0, x1, y1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ImageError(f"the crop {box!r} is empty on a {w}x{h} image")
    return image.crop((x0, y0, x1, y1))


def prepare_image(image: Image.Image, pipeline: Pipeline, scale: float = 1.0, *, source_size=None) -> np.ndarray:
    """Returns the network input for one scale: (h, w, 3) float32 RGB in [0, 255].

    `source_size` is the (width, height) of the full image when `image` was decoded smaller.
    With `pipeline.bucket == "pad"` the image sits at the top left of a canvas of the bucket's
    shape, filled with `PAD_RGB`; `pipeline.content_size` tells its extent.
    """
    full = source_size or image.size
    size, content = pipeline.target_size(*full, scale), pipeline.content_size(*full, scale)
    if image.size != content:
        image = image.resize(content, Image.BILINEAR)
    if content != size:
        canvas = Image.new("RGB", size, PAD_RGB)
        canvas.paste(image, (0, 0))
        image = canvas
    return np.asarray(image, dtype=np.float32)


def pool(feature_map: np.ndarray, pooling: str, *, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """Returns (b, d) float32 descriptors, not normalised, from (b, h, w, c) feature maps.

    gem: (mean x^p)^(1/p) over positions, with x clamped at eps (the last activation can be
    slightly negative); mac: max; spoc: mean; rgem: the sum of the L2-normalised GeM of the
    whole map and of R-MAC's grid of square regions; flatten: the whole map, d = h * w * c.
    """
    x = np.asarray(feature_map, dtype=np.float32)
    if pooling == "gem":
        return np.power(np.mean(np.power(np.maximum(x, eps), p), axis=(1, 2)), 1.0 / p)
    if pooling == "rgem":
        xp = np.power(np.maximum(x, eps), p)
        total = l2_normalize(np.power(np.mean(xp, axis=(1, 2)), 1.0 / p))
        for y0, x0, side in rmac_regions(x.shape[1], x.shape[2]):
            region = np.power(np.mean(xp[:, y0 : y0 + side, x0 : x0 + side], axis=(1, 2)), 1.0 / p)
            total += l2_normalize(region)
        return total
    if pooling == "mac":
        return x.max(axis=(1, 2))
    if pooling == "spoc":
        return x.mean(axis=(1, 2))
    if pooling == "flatten":
        return x.reshape(len(x), -1)
    raise ValueError(f"unknown pooling {pooling!r}")


def pool_regions(feature_map: np.ndarray, pooling: str, contents, input_hw, *, p: float = 3.0) -> np.ndarray:
    """Returns (b, d) descriptors pooled over each row's image part of a padded input, not normalised.

    Args:
        feature_map: (b, h', w', c) maps of (b, H, W, 3) inputs, `input_hw` = (H, W).
        contents: b (width, height) of each image at the input's top left (`Pipeline.content_size`).
    """
    fm = np.asarray(feature_map, dtype=np.float32)
    (fh, fw), (ih, iw) = fm.shape[1:3], input_hw
    if all(tuple(c) == (iw, ih) for c in contents):
        return pool(fm, pooling, p=p)
    # A feature cell belongs to the image when its stride window starts inside it.
    rows = [pool(fm[i : i + 1, : max(1, math.ceil(fh * ch / ih)), : max(1, math.ceil(fw * cw / iw))], pooling, p=p)
            for i, (cw, ch) in enumerate(contents)]
    return np.concatenate(rows)


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int]]:
    """Returns R-MAC's square regions of a height x width map as (y0, x0, side), level by level.

    Level l has regions of side 2 min(h, w) / (l + 1), spread evenly with about 40% overlap
    (Tolias et al., "Particular object retrieval with integral max-pooling of CNN activations");
    the longer side gets one more region per level when that brings the overlap nearer 40%.
    """
    short, long_ = min(height, width), max(height, width)
    steps = np.arange(2, 7)
    b = (long_ - short) / (steps - 1)
    extra = int(np.argmin(np.abs((short * short - short * b) / (short * short) - RMAC_OVERLAP))) + 1
    if height == width:
        extra = 0
    regions = []
    for level in range(1, levels + 1):
        side = int(np.floor(2 * short / (level + 1)))
        if side < 1:
            break
        n_y = level + (extra if height > width else 0)
        n_x = level + (extra if width > height else 0)
        ys = _region_starts(height, side, n_y)
        xs = _region_starts(width, side, n_x)
        regions += [(y, x, side) for y in ys for x in xs]
    return regions


def _region_starts(length: int, side: int, count: int) -> list[int]:
    if count <= 1 or length <= side:
        return [max(0, (length - side) // 2)]
    return sorted({int(round(i * (length - side) / (count - 1))) for i in range(count)})


def descriptor_dim(channels: int, pipeline: Pipeline) -> int:
    """Returns the descriptor length a network with `channels` output channels gives."""
    if pipeline.pooling == "flatten":
        side = math.ceil(pipeline.squash / 32)
        return side * side * channels
    return channels


@dataclass
class Embedded:
    """One input's outcome from `iter_features`: a descriptor or the reason it was skipped."""

    position: int
    vector: np.ndarray | None = None
    error: str | None = None
    thumbnail: bytes | None = None
    preview: bytes | None = None


@dataclass
class _Pending:
    parts: list = field(default_factory=list)
    thumbnail: bytes | None = None
    preview: bytes | None = None


def make_thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE, quality: int = 80) -> bytes:
    """Returns a JPEG of `image` whose longer side is at most `side` pixels."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


@dataclass(frozen=True)
class Decoded:
    """An image file decoded as a build decodes it (`decode_file`).

    `image` is RGB and upright, possibly decoded at 1/2, 1/4 or 1/8 of its size (a JPEG draft);
    `size` is the file's full upright (width, height), from which the network input's size is
    computed, or None when the file's header could not be read ahead.
    """

    image: Image.Image
    size: tuple[int, int] | None


def decode_file(source, pipeline: Pipeline, preview_side: int | None = None) -> Decoded:
    """Returns a whole image file (a path or encoded bytes) decoded as the build decodes it.

    A JPEG is decoded at the smallest power-of-two reduction that still gives the network input,
    a thumbnail and a `preview_side` preview (index.json "preview_side") their full size. An
    indexed photo and the same file sent as a query go through this one function, so that they
    get the same descriptor.

    Raises:
        ImageError: the input is not a decodable image, or is too large to decode safely.
    """
    draft, size = _draft_size(source, pipeline, max(THUMBNAIL_SIDE, preview_side or 0))
    return Decoded(load_image(source, draft_size=draft), size)


def _decode(source, pipeline: Pipeline, thumbnail_side: int | None, preview_side: int | None = None):
    """Runs in a worker thread: decode, resize per scale, thumbnail, preview. PIL drops the GIL here.

    Returns (network inputs per scale, their `content_size` per scale, thumbnail JPEG or None,
    preview JPEG or None). The preview comes from the same decoded image: a second decode of
    every photo for its preview cost the build about a tenth of its time. A `Decoded` source is
    already decoded.
    """
    if isinstance(source, Decoded):
        image, size = source.image, source.size
    elif isinstance(source, Image.Image):
        image, size = _to_rgb(source), None
    else:
        decoded = decode_file(source, pipeline, preview_side)
        image, size = decoded.image, decoded.size
    # The network input size comes from the full image's size, not the drafted one, so an indexed
    # file and the same file sent as a query are resized to the same shape.
    arrays = [prepare_image(image, pipeline, s, source_size=size) for s in pipeline.scales]
    contents = [pipeline.content_size(*(size or image.size), s) for s in pipeline.scales]
    thumb = make_thumbnail(image, thumbnail_side) if thumbnail_side else None
    preview = make_thumbnail(image, preview_side, quality=PREVIEW_QUALITY) if preview_side else None
    return arrays, contents, thumb, preview


def decode_error(error: Exception) -> str:
    """Returns the one-line reason a file was skipped, as every build engine reports it."""
    return str(error) if isinstance(error, ImageError) else f"{type(error).__name__}: {error}"


def _draft_size(source, pipeline: Pipeline, need: int = THUMBNAIL_SIDE):
    # Decoding a JPEG at 1/2 or 1/4 size is several times faster; ask for at least the largest
    # size the network, a thumbnail or a preview (`need`) will need. The exact size needs the
    # header, so open twice.
    try:
        with Image.open(source if not isinstance(source, bytes) else io.BytesIO(source)) as probe:
            w, h = probe.size
            if _exif_transposes(probe):
                w, h = h, w
    except Exception:
        return None, None
    tw, th = pipeline.target_size(w, h, max(pipeline.scales))
    # `need` is a longer side: the image at that size keeps its aspect ratio (never above full size).
    ratio = min(1.0, max(need, 1) / max(w, h, 1))
    return (max(tw, math.ceil(w * ratio)), max(th, math.ceil(h * ratio))), (w, h)


def embed_batch(network, batch: np.ndarray, pipeline: Pipeline, contents, *, forward=None) -> np.ndarray:
    """Returns (b, d) float32 L2-normalised descriptors of one (b, h, w, 3) batch of network inputs.

    Args:
        contents: each input's image extent, (width, height) (`Pipeline.content_size`); only
            padded inputs use it, to pool over the image and not the padding.
        forward: the forward function, `retrieval.networks.forward` when None.
    """
    if forward is None:
        from retrieval.networks import forward
    maps = forward(network, batch)
    if pipeline.bucket == "pad":
        return l2_normalize(pool_regions(maps, pipeline.pooling, contents, batch.shape[1:3], p=pipeline.gem_p))
    return l2_normalize(pool(maps, pipeline.pooling, p=pipeline.gem_p))


def iter_features(
    network,
    sources: Sequence,
    pipeline: Pipeline,
    *,
    batch_size: int = 8,
    workers: int = 2,
    thumbnail_side: int | None = None,
    preview_side: int | None = None,
) -> Iterator[Embedded]:
    """Yields one `Embedded` per source, in completion order, each vector (d,) float32 L2-normalised.

    Decoding runs in `workers` threads ahead of the network; inputs of equal shape are batched
    together (aspect-preserving resizes give only a few shapes in photo collections), so each
    descriptor is exactly what a batch of one would give. An undecodable source is yielded with
    `error` set; it never stops the others.

    Args:
        network: a `retrieval.networks.Network`.
        sources: paths, encoded bytes or PIL images.
        pipeline: resizing and pooling.
        batch_size: images per network call.
        workers: decoding threads.
        thumbnail_side: also return a JPEG thumbnail of each image when set.
        preview_side: also return a larger JPEG preview (at most this many pixels on its longer
            side, never enlarged past the decoded image) when set.
    """
    from retrieval.networks import forward  # the only way in to the network module

    n_scales = len(pipeline.scales)
    pending: dict[int, _Pending] = {}
    buckets: dict[tuple, list] = {}
    # Keep a bounded number of images decoded ahead, so memory stays flat on any collection size.
    # With fixed-shape buckets there are a dozen shapes to fill at once: waiting for more images
    # makes full batches (about 100 MB of inputs at batch 8 and max side 384).
    lookahead = max(2 * batch_size, 4 * workers) * (BUCKET_LOOKAHEAD if pipeline.bucket else 1)

    def run_bucket(key):
        entries = buckets.pop(key)
        batch = np.stack([arr for _, _, arr, _ in entries])
        vectors = embed_batch(network, batch, pipeline, [content for *_, content in entries], forward=forward)
        done = []
        for (pos, scale_idx, _, _), vec in zip(entries, vectors):
            pending[pos].parts.append((scale_idx, vec))
            if len(pending[pos].parts) == n_scales:
                done.append(pos)
        for pos in done:
            item = pending.pop(pos)
            parts = [v for _, v in sorted(item.parts, key=lambda t: t[0])]
            combined = np.max(parts, axis=0) if pipeline.combine == "max" else np.mean(parts, axis=0)
            yield Embedded(pos, l2_normalize(combined)[0], thumbnail=item.thumbnail, preview=item.preview)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool_:
        futures: deque = deque()  # decodes in flight, in submission order
        it = iter(enumerate(sources))

        def submit_one() -> bool:
            try:
                pos, src = next(it)
            except StopIteration:
                return False
            futures.append((pos, pool_.submit(_decode, src, pipeline, thumbnail_side, preview_side)))
            return True

        for _ in range(lookahead):
            if not submit_one():
                break
        while futures:
            pos, fut = futures.popleft()
            submit_one()
            try:
                arrays, contents, thumb, preview = fut.result()
            except Exception as e:  # any decoder failure on one file must not stop the run
                yield Embedded(pos, error=decode_error(e))
                continue
            pending[pos] = _Pending(thumbnail=thumb, preview=preview)
            for scale_idx, (arr, content) in enumerate(zip(arrays, contents)):
                key = arr.shape
                buckets.setdefault(key, []).append((pos, scale_idx, arr, content))
                if len(buckets[key]) >= batch_size:
                    yield from run_bucket(key)
            # Odd shapes would otherwise wait for company forever: flush the bucket waiting longest
            # (dicts keep insertion order). Flushing the fullest instead kept cutting the common
            # shapes' batches short: 220 network calls for the 409 Paris photos instead of 142.
            if len(pending) > lookahead:
                yield from run_bucket(next(iter(buckets)))
        while buckets:
            yield from run_bucket(max(buckets, key=lambda k: len(buckets[k])))


def extract_features(
    network,
    sources: Sequence,
    pipeline: Pipeline,
    *,
    batch_size: int = 8,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Returns (n, d) float32 L2-normalised descriptors, row i for sources[i].

    Raises:
        ImageError: if any source cannot be decoded (names its position).
    """
    out: list[np.ndarray | None] = [None] * len(sources)
    for item in iter_features(network, sources, pipeline, batch_size=batch_size, workers=workers):
        if item.error:
            raise ImageError(f"input {item.position} ({_describe(sources[item.position])}): {item.error}")
        out[item.position] = item.vector
        if progress:
            progress(1)
    if not out:
        raise ValueError("no images given")
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def embed_image(network, image, pipeline: Pipeline, *, box=None, preview_side: int | None = None) -> np.ndarray:
    """Returns the (d,) float32 L2-normalised descriptor of one image, optionally cropped to `box`.

    A whole file (a path or encoded bytes, no box) is decoded as a build decodes it
    (`decode_file`), JPEG draft included, so that an indexed photo sent as a query gets its
    indexed descriptor; a `Decoded` image is one already decoded that way. `preview_side` is the
    preview size that build stored (index.json "preview_side"): it sets how far the decoder may
    scale a JPEG down.

    Raises:
        ImageError: for an undecodable image or an empty crop.
    """
    if isinstance(image, Decoded) and box is not None:
        raise ValueError("a box is cut from the image at full size, not from a drafted decode")
    if box is None and isinstance(image, (str, Path, bytes, Decoded)):
        if not isinstance(image, Decoded):
            image = decode_file(image, pipeline, preview_side)
        item = next(iter_features(network, [image], pipeline, batch_size=1, workers=1))
        if item.error:
            raise ImageError(item.error)
        return item.vector
    image = load_image(image)
    if box is not None:
        image = crop_box(image, box)
    return extract_features(network, [image], pipeline, batch_size=1, workers=1)[0]


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return type(source).__name__


def find_images(root: Path) -> list[Path]:
    """Returns the image files under `root`, recursively, sorted; hidden folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)
