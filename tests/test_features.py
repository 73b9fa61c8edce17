import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.features import (
    REPORT_PIPELINE, ImageError, Pipeline, crop_box, descriptor_dim, embed_image, extract_features,
    find_images, iter_features, load_image, pool, pool_regions, prepare_image,
)


def encode(image, fmt="PNG", **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w=96, h=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_pooling_hand_computed():
    fm = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(pool(fm, "mac"), [[4.0]])
    np.testing.assert_allclose(pool(fm, "spoc"), [[2.5]])
    np.testing.assert_allclose(pool(fm, "gem", p=3), [[(100 / 4) ** (1 / 3)]], rtol=1e-6)
    np.testing.assert_allclose(pool(fm, "gem", p=1), [[2.5]], rtol=1e-6)
    assert pool(np.ones((2, 7, 7, 3)), "flatten").shape == (2, 147)
    # negative activations are clamped before the power, not allowed to cancel positives
    neg = np.array([-8.0, 8.0], dtype=np.float32).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(pool(neg, "gem", p=3), [[(512 / 2) ** (1 / 3)]], rtol=1e-4)


def test_pipeline_validation_and_meta_round_trip():
    p = Pipeline(pooling="mac", max_side=300, scales=(1, 0.5))
    assert Pipeline.from_meta(p.to_meta()) == p
    assert REPORT_PIPELINE.squash == 224 and REPORT_PIPELINE.pooling == "flatten"
    for bad in [dict(pooling="avg"), dict(max_side=None), dict(squash=224), dict(pooling="flatten"),
                dict(max_side=8), dict(scales=()), dict(scales=(0,))]:
        with pytest.raises(ValueError):
            Pipeline(**bad)
    assert descriptor_dim(2560, REPORT_PIPELINE) == 125440
    assert Pipeline(max_side=512).target_size(1024, 768) == (512, 384)
    assert Pipeline(max_side=512).target_size(20000, 10) == (512, 32)
    assert REPORT_PIPELINE.target_size(1024, 768) == (224, 224)


def test_crop_box():
    img = photo(100, 50)
    assert crop_box(img, (10, 5, 40.5, 25)).size == (31, 20)
    assert crop_box(img, (40, 25, 10, 5)).size == (30, 20)  # corners in any order
    assert crop_box(img, (-10, -10, 500, 500)).size == (100, 50)  # clipped
    for bad in [(5, 5, 5, 20), (200, 0, 300, 10), (1, 2, 3), ("a", 1, 2, 3), (0, 0, float("nan"), 4)]:
        with pytest.raises(ImageError):
            crop_box(img, bad)


def test_load_image_refuses_bad_files_with_a_reason(tmp_path):
    good = encode(photo(), "JPEG")
    cases = {
        "zero.jpg": (b"", "empty"),
        "text.jpg": (b"this is not an image\n" * 10, "not a readable image"),
        "corrupt.jpg": (good[:20] + b"\x00" * 200, "cannot be decoded|not a readable image"),
        "truncated.jpg": (good[: len(good) // 2], "cut short"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=reason):
            load_image(tmp_path / name)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    bomb = encode(Image.new("L", (12000, 12000)), "PNG")  # 144 MP of zeros, a few hundred KB
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(bomb)


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode in ("CMYK", "L") else ("TIFF" if mode == "I;16" else "PNG")
    src = photo(40, 30).convert("L") if mode == "I;16" else photo(40, 30)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(src, dtype=np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = src.convert(mode)
    out = load_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)
    if mode == "I;16":  # 16-bit values are rescaled, not clipped to white
        np.testing.assert_allclose(np.asarray(out)[..., 0], np.asarray(src), atol=1)


def test_transparent_png_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(encode(rgba)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_applied():
    img = photo(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 60)
    drafted = load_image(encode(photo(800, 200), "JPEG", exif=exif.tobytes()), draft_size=(50, 200))
    assert drafted.size[1] > drafted.size[0] and drafted.size[1] >= 200


def test_prepare_image_sizes():
    assert prepare_image(photo(1, 1), Pipeline(max_side=64)).shape == (64, 64, 3)
    assert prepare_image(photo(2000, 1), Pipeline(max_side=64)).shape == (32, 64, 3)
    arr = prepare_image(photo(300, 200), REPORT_PIPELINE)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.float32 and arr.max() > 1


def test_batched_extraction_equals_one_at_a_time(tiny):
    images = [photo(96, 64, s) for s in range(5)] + [photo(64, 96, 9), photo(50, 50, 7)]
    pipe = Pipeline(max_side=96)
    together = extract_features(tiny, images, pipe, batch_size=3)
    alone = np.stack([embed_image(tiny, im, pipe) for im in images])
    assert together.shape == (7, 8) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_multiscale_is_the_normalised_mean_of_scales(tiny):
    img = photo(128, 96)
    one = embed_image(tiny, img, Pipeline(max_side=128))
    half = embed_image(tiny, img, Pipeline(max_side=64))
    both = embed_image(tiny, img, Pipeline(max_side=128, scales=(1, 0.5)))
    want = (one + half) / np.linalg.norm(one + half)
    np.testing.assert_allclose(both, want, atol=1e-5)


def test_flatten_dimension_and_box(tiny):
    vec = embed_image(tiny, photo(300, 200), REPORT_PIPELINE)
    assert vec.shape == (descriptor_dim(8, REPORT_PIPELINE),) == (7 * 7 * 8,)
    img = photo(200, 200)
    cropped = embed_image(tiny, img, Pipeline(max_side=64), box=(0, 0, 100, 100))
    np.testing.assert_allclose(cropped, embed_image(tiny, img.crop((0, 0, 100, 100)), Pipeline(max_side=64)), atol=1e-6)


def test_bad_inputs_reported_per_item_without_stopping(tiny, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    photo().save(tmp_path / "good.png")
    items = list(iter_features(tiny, [tmp_path / "bad.jpg", tmp_path / "good.png"], Pipeline(max_side=64),
                               thumbnail_side=32))
    by_pos = {it.position: it for it in items}
    assert by_pos[0].vector is None and "not a readable image" in by_pos[0].error
    assert by_pos[1].vector.shape == (8,) and Image.open(io.BytesIO(by_pos[1].thumbnail)).size == (32, 21)
    with pytest.raises(ImageError, match="input 0"):
        extract_features(tiny, [tmp_path / "bad.jpg"], Pipeline(max_side=64))


def test_find_images_recursive(tmp_path):
    for rel in ["a.jpg", "sub/b.PNG", "sub/deeper/c.webp", "notes.txt", ".hidden/d.jpg", "e.tiff"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == [
        "a.jpg", "e.tiff", "sub/b.PNG", "sub/deeper/c.webp"]
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


def test_indexed_jpeg_gets_the_query_input_size(tiny, tmp_path, monkeypatch):
    # The build decodes JPEGs at reduced size (draft); the network input size must still come
    # from the full image, as it does for the same file sent as a query.
    import retrieval.features as features

    shapes = []
    real_prepare = features.prepare_image

    def spy(*args, **kwargs):
        arr = real_prepare(*args, **kwargs)
        shapes.append(arr.shape)
        return arr

    monkeypatch.setattr(features, "prepare_image", spy)
    # 1000x665 decodes at half size as 500x333, which alone would resize to 384x256.
    photo(1000, 665).save(tmp_path / "odd.jpg", quality=95)
    list(iter_features(tiny, [tmp_path / "odd.jpg"], Pipeline(max_side=384)))
    assert shapes == [(255, 384, 3)]
    assert Pipeline(max_side=384).target_size(500, 333) == (384, 256)


@pytest.mark.parametrize("size, bucket", [
    ((1024, 768), (384, 288)),    # 4:3
    ((768, 1024), (288, 384)),    # 3:4
    ((1500, 1000), (384, 256)),   # 3:2
    ((1024, 683), (384, 256)),    # 3:2, rounded
    ((1000, 1500), (256, 384)),   # 2:3
    ((1920, 1080), (384, 224)),   # 16:9: 216 rounds to 224
    ((1080, 1920), (224, 384)),   # 9:16
    ((1000, 1000), (384, 384)),   # 1:1
    ((1000, 900), (384, 352)),    # 10:9
    ((1250, 1000), (384, 320)),   # 5:4 (307) rounds to 320
    ((20000, 10), (384, 224)),    # panoramas clamp at 16:9
    ((10, 20000), (224, 384)),
    ((1, 1), (384, 384)),
])
def test_every_aspect_ratio_has_its_bucket(size, bucket):
    for fit in ("resize", "pad"):
        assert Pipeline(max_side=384, bucket=fit).target_size(*size) == bucket
    assert Pipeline(max_side=384, bucket="resize").content_size(*size) == bucket
    assert Pipeline(max_side=384, bucket="resize").target_size(*size, 0.5) == tuple(
        Pipeline(max_side=192, bucket="resize").target_size(*size))


def test_padding_rounds_the_shorter_side_up_so_the_image_keeps_the_max_side():
    assert Pipeline(max_side=384, bucket="resize").target_size(1000, 700) == (384, 256)  # 268.8: nearest
    pad = Pipeline(max_side=384, bucket="pad")
    assert pad.target_size(1000, 700) == (384, 288) and pad.content_size(1000, 700) == (384, 269)
    assert pad.content_size(700, 1000) == (269, 384)


def test_buckets_are_few_and_stride_aligned():
    for fit in ("resize", "pad"):
        pipe = Pipeline(max_side=384, bucket=fit)
        shapes = {pipe.target_size(w, 1000) for w in range(100, 10000, 7)}
        assert len(shapes) == 11 and all(w % 32 == 0 and h % 32 == 0 for w, h in shapes)


def test_padded_image_keeps_its_aspect_ratio_on_a_mean_colour_canvas():
    pipe = Pipeline(max_side=64, bucket="pad")
    assert pipe.target_size(100, 50) == (64, 32) and pipe.content_size(100, 50) == (64, 32)
    assert pipe.target_size(100, 60) == (64, 64) and pipe.content_size(100, 60) == (64, 38)
    arr = prepare_image(photo(100, 60), pipe)
    assert arr.shape == (64, 64, 3)
    np.testing.assert_array_equal(arr[38:], np.broadcast_to(np.float32([124, 116, 104]), (26, 64, 3)))
    np.testing.assert_array_equal(arr[:38], np.asarray(photo(100, 60).resize((64, 38), Image.BILINEAR), "f"))


def test_padded_pooling_covers_only_the_image_cells():
    fm = np.arange(2 * 2 * 4 * 1, dtype=np.float32).reshape(2, 2, 4, 1)
    # Input 64x128 (h x w): the first image fills it, the second is 64 wide: cells 0-1 of each row.
    out = pool_regions(fm, "mac", [(128, 64), (64, 64)], (64, 128))
    np.testing.assert_allclose(out, [[7.0], [13.0]])  # image 2: max of 8, 9, 12, 13
    np.testing.assert_allclose(pool_regions(fm, "spoc", [(128, 64)] * 2, (64, 128)), pool(fm, "spoc"))


def test_bucket_recorded_and_old_pipelines_still_read():
    pipe = Pipeline(max_side=384, bucket="pad")
    assert pipe.to_meta()["bucket"] == "pad" and Pipeline.from_meta(pipe.to_meta()) == pipe
    old = {"pooling": "gem", "max_side": 384, "squash": None, "scales": [1.0], "gem_p": 3.0}  # before buckets
    assert Pipeline.from_meta(old).bucket is None and Pipeline().to_meta() == old
    for bad in [dict(bucket="crop"), dict(max_side=None, squash=224, bucket="resize")]:
        with pytest.raises(ValueError, match="bucket"):
            Pipeline(**bad)


def _jpeg_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def test_our_pixel_limit_is_the_one_that_applies():
    import warnings

    from retrieval.features import MAX_PIXELS

    # 95 megapixels: over Pillow's 89.5-megapixel warning, under our 100: decoded, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(_jpeg_of_size(9750, 9750), draft_size=(64, 64))
    assert image.mode == "RGB" and max(image.size) < 9750  # drafted at 1/8 scale, so the test stays fast
    # Just over ours: refused with our message, before decoding.
    with pytest.raises(ImageError, match=r"the limit is 100 megapixels: the image has 10050x10000 = 100,500,000"):
        load_image(_jpeg_of_size(10050, 10000))
    assert MAX_PIXELS == 100_000_000


def test_pillows_own_refusal_reads_as_ours():
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")  # 400 MP: Pillow refuses it outright at open
    with pytest.raises(ImageError) as refused:
        load_image(bomb)
    assert str(refused.value) == ("the image is too large to decode safely: the limit is 100 megapixels: "
                                  "the image has 400,000,000 pixels")


def test_readme_states_the_pixel_limit_the_code_enforces():
    import re

    from retrieval.features import MAX_PIXELS

    root = Path(__file__).resolve().parents[1]
    readme = "".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    stated = {int(m) for m in re.findall(r"over (\d+)\s+megapixels", readme)}
    assert stated == {MAX_PIXELS // 1_000_000}


def test_an_unidentified_file_is_refused_without_its_path(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(ImageError) as refused:
        load_image(path)
    assert str(tmp_path) not in str(refused.value) and "not a readable image" in str(refused.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(pooling="avg"), r"^unknown pooling 'avg'; choose one of gem, mac, spoc, flatten, rgem$"),
    (dict(max_side=None), r"^give exactly one of max_side \(aspect-preserving\) or squash \(fixed square\)$"),
    (dict(squash=224), r"^give exactly one of max_side"),
    (dict(max_side=31), r"^input side must be at least 32 pixels, got 31$"),
    (dict(max_side=None, squash=16), r"^input side must be at least 32 pixels, got 16$"),
    (dict(scales=()), r"^scales must be in \(0, 4\], got \(\)$"),
    (dict(scales=(1, 4.5)), r"^scales must be in \(0, 4\], got \(1.0, 4.5\)$"),
    (dict(scales=(-1,)), r"^scales must be in \(0, 4\]"),
    (dict(pooling="flatten"), r"^flatten pooling needs a fixed input size: use squash and a single scale$"),
    (dict(pooling="flatten", max_side=None, squash=224, scales=(1, 0.5)), r"^flatten pooling needs a fixed"),
    (dict(gem_p=0), r"^gem_p must be positive, got 0$"),
])
def test_pipeline_refusals_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pipeline(**kwargs)


def test_pipeline_edges_that_are_allowed():
    assert Pipeline(max_side=32).max_side == 32 and Pipeline(scales=(4,)).scales == (4.0,)
    assert Pipeline(pooling="mac", gem_p=0).gem_p == 0  # the exponent only matters to GeM
    assert Pipeline(scales=[1, 0.5]).scales == (1.0, 0.5)
    assert Pipeline().to_meta() == {"pooling": "gem", "max_side": 384, "squash": None, "scales": [1.0], "gem_p": 3.0}
    assert Pipeline.from_meta({"pooling": "mac", "max_side": 64, "squash": None, "gem_p": 3.0}).scales == (1.0,)
    # sizes round to the nearest pixel and never fall under 32
    assert Pipeline(max_side=100).target_size(300, 200) == (100, 67)
    assert Pipeline(max_side=100).target_size(300, 200, 0.5) == (50, 33)
    assert Pipeline(max_side=None, squash=100).target_size(300, 200, 0.5) == (50, 50)
    assert Pipeline(max_side=None, squash=40).target_size(300, 200, 0.5) == (32, 32)
    assert descriptor_dim(8, Pipeline(max_side=None, squash=65, pooling="flatten")) == 3 * 3 * 8
    assert descriptor_dim(8, Pipeline()) == 8


def test_crop_box_messages_and_rounding_outwards():
    img = photo(100, 50)
    assert crop_box(img, (10.2, 5.7, 40.5, 25.1)).size == (31, 21)  # floor the start, ceil the end
    assert crop_box(img, (0, 0, 0.2, 0.2)).size == (1, 1)
    with pytest.raises(ImageError, match=r"^a box is four numbers x0, y0, x1, y1; got \(1, 2, 3\)$"):
        crop_box(img, (1, 2, 3))
    with pytest.raises(ImageError, match=r"^box coordinates must be finite, got \(0, 0, inf, 4\)$"):
        crop_box(img, (0, 0, float("inf"), 4))
    with pytest.raises(ImageError, match=r"^the crop \(5, 5, 5, 20\) is empty on a 100x50 image$"):
        crop_box(img, (5, 5, 5, 20))
    with pytest.raises(ImageError, match=r"^the crop \(0, 60, 10, 70\) is empty on a 100x50 image$"):
        crop_box(img, (0, 60, 10, 70))
    with pytest.raises(ImageError, match=r"^the crop \(-20, 0, -10, 10\) is empty on a 100x50 image$"):
        crop_box(img, (-20, 0, -10, 10))  # left of the image
    with pytest.raises(ImageError, match=r"^the crop \(0, -20, 10, -10\) is empty on a 100x50 image$"):
        crop_box(img, (0, -20, 10, -10))  # above it


def test_load_image_messages(tmp_path):
    with pytest.raises(ImageError, match=r"^the file is empty \(0 bytes\)$"):
        load_image(b"")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"^the file is empty \(0 bytes\)$"):
        load_image(tmp_path / "zero.png")
    with pytest.raises(ImageError, match=r"^not a readable image \(no image format recognised\)$"):
        load_image(b"text")
    with pytest.raises(ImageError, match=r"^the image is too large to decode safely: the limit is 0\.019999 "
                       r"megapixels: the image has 200x100 = 20,000 pixels$"):
        load_image(encode(photo(200, 100)), max_pixels=19_999)
    assert load_image(encode(photo(200, 100)), max_pixels=20_000).size == (200, 100)
    with pytest.raises(ValueError, match="^unknown pooling 'median'$"):
        pool(np.ones((1, 2, 2, 1)), "median")


def test_sixteen_bit_and_float_images_are_scaled_not_clipped():
    from retrieval.features import _to_rgb

    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    np.testing.assert_array_equal(np.asarray(_to_rgb(sixteen))[..., 0], grey)
    as_float = Image.fromarray(grey.astype(np.float32), "F")  # values up to 255: already 8-bit range
    np.testing.assert_array_equal(np.asarray(_to_rgb(as_float))[..., 1], grey)
    wide = Image.fromarray(grey.astype(np.int32) * 257, "I")  # over 255: a 16-bit range
    np.testing.assert_array_equal(np.asarray(_to_rgb(wide))[..., 2], grey)
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30] * 256)
    assert _to_rgb(palette).getpixel((0, 0)) == (10, 20, 30)
    half = Image.new("LA", (1, 1), (0, 128))
    assert _to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


def test_thumbnails_are_jpegs_of_the_given_side():
    from retrieval.features import make_thumbnail

    thumb = Image.open(io.BytesIO(make_thumbnail(photo(400, 100), 64)))
    assert thumb.format == "JPEG" and thumb.size == (64, 16)
    assert Image.open(io.BytesIO(make_thumbnail(photo(40, 30)))).size == (40, 30)  # never enlarged


def test_find_images_skips_hidden_folders_and_other_files(tmp_path):
    for name in ("a.JPG", "b.jpeg", "c.webp", "d.tif", "e.tiff", "f.bmp", "g.png", "notes.txt", ".hidden/h.jpg",
                 "sub/.x/i.jpg", "sub/j.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.JPG", "b.jpeg", "c.webp", "d.tif", "e.tiff", "f.bmp", "g.png", "sub/j.jpg"]
    with pytest.raises(FileNotFoundError, match="^image folder not found: "):
        find_images(tmp_path / "none")


def test_extract_features_messages_progress_and_descriptions(tiny, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ImageError, match=rf"^input 1 \({tmp_path / 'bad.jpg'}\): not a readable image"):
        extract_features(tiny, [photo(), tmp_path / "bad.jpg"], Pipeline(max_side=64))
    with pytest.raises(ImageError, match=r"^input 0 \(bytes\): the file is empty"):
        extract_features(tiny, [b""], Pipeline(max_side=64))
    with pytest.raises(ValueError, match="^no images given$"):
        extract_features(tiny, [], Pipeline(max_side=64))
    ticks = []
    out = extract_features(tiny, [photo(seed=s) for s in range(3)], Pipeline(max_side=64), progress=ticks.append)
    assert ticks == [1, 1, 1] and out.flags.c_contiguous and out.dtype == np.float32


def test_iter_features_yields_every_input_once_with_its_thumbnail(tiny):
    images = [photo(96 + 8 * (i % 3), 64, seed=i) for i in range(11)]  # three shapes, odd counts
    items = list(iter_features(tiny, images, Pipeline(max_side=64), batch_size=4, workers=1, thumbnail_side=40))
    assert sorted(it.position for it in items) == list(range(11))
    for it in items:
        np.testing.assert_allclose(it.vector, embed_image(tiny, images[it.position], Pipeline(max_side=64)), atol=1e-5)
        assert Image.open(io.BytesIO(it.thumbnail)).size[0] == 40
    assert all(it.thumbnail is None for it in iter_features(tiny, images[:2], Pipeline(max_side=64)))


def test_a_decoder_crash_on_one_file_is_reported_and_the_rest_go_on(tiny, monkeypatch):
    import retrieval.features as features

    real = features._decode

    def flaky(source, pipeline, thumbnail_side, preview_side=None):
        if isinstance(source, bytes) and source == b"boom":
            raise RuntimeError("decoder bug")
        return real(source, pipeline, thumbnail_side, preview_side)

    monkeypatch.setattr(features, "_decode", flaky)
    items = {it.position: it for it in iter_features(tiny, [b"boom", photo()], Pipeline(max_side=64))}
    assert items[0].error == "RuntimeError: decoder bug" and items[1].vector is not None


def test_gem_clamps_at_eps_and_uses_its_exponent():
    fm = np.array([0.0, 0.0, 0.0, 8.0], dtype=np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(pool(fm, "gem", p=3), [[(512 / 4) ** (1 / 3)]], rtol=1e-6)
    np.testing.assert_allclose(pool(fm, "gem", p=2), [[(64 / 4) ** 0.5]], rtol=1e-6)
    tiny_values = np.full((1, 1, 1, 1), -5.0, dtype=np.float32)
    np.testing.assert_allclose(pool(tiny_values, "gem", p=3), [[1e-6]], rtol=1e-3)
    np.testing.assert_allclose(pool(tiny_values, "gem", p=3, eps=1e-2), [[1e-2]], rtol=1e-3)
    assert pool(fm, "mac").dtype == np.float32 and pool(fm.astype(np.float64), "spoc").dtype == np.float32


def test_a_draft_side_decodes_a_jpeg_smaller_but_never_below_that_side(tmp_path):
    photo(1000, 665).save(tmp_path / "wide.jpg", quality=90)
    photo(665, 1000).save(tmp_path / "tall.jpg", quality=90)
    assert load_image(tmp_path / "wide.jpg", draft_side=400).size == (500, 333)  # 1/2: the longer side 500 >= 400
    assert load_image(tmp_path / "tall.jpg", draft_side=400).size == (333, 500)
    assert load_image(tmp_path / "wide.jpg", draft_side=600).size == (1000, 665)  # 1/2 would give 500 < 600


def test_rmac_regions_hand_computed():
    from retrieval.features import rmac_regions

    # Square 7x7, three levels: sides 2*7/2, 2*7/3, 2*7/4 rounded down, l x l regions each, spread from
    # one edge to the other.
    assert rmac_regions(7, 7) == [(0, 0, 7)] + [(y, x, 4) for y in (0, 3) for x in (0, 3)] + [
        (y, x, 3) for y in (0, 2, 4) for x in (0, 2, 4)]
    # 5 high, 10 wide: b = (10 - 5) / (steps - 1) for steps 2..6 gives overlaps 1 - b/5 of 0, 0.5, 0.67,
    # 0.75, 0.8; 0.5 is the nearest 40%, at steps 3, so the long side gets two more regions per level.
    wide = rmac_regions(5, 10)
    assert wide == ([(0, x, 5) for x in (0, 2, 5)] + [(y, x, 3) for y in (0, 2) for x in (0, 2, 5, 7)]
                    + [(y, x, 2) for y in (0, 2, 3) for x in (0, 2, 4, 6, 8)])
    assert rmac_regions(10, 5) == sorted(((x, y, s) for y, x, s in wide), key=lambda r: (-r[2], r[0], r[1]))  # transposed
    assert rmac_regions(7, 7, levels=1) == [(0, 0, 7)]
    assert rmac_regions(1, 1) == [(0, 0, 1)]  # level 2's side would be 0: no more levels
    assert rmac_regions(2, 2) == [(0, 0, 2)] + [(y, x, 1) for y in (0, 1) for x in (0, 1)] * 2
    for h, w in [(3, 30), (12, 9), (6, 6), (1, 4)]:
        regions = rmac_regions(h, w)
        assert all(0 <= y and y + s <= h and 0 <= x and x + s <= w and s >= 1 for y, x, s in regions)
        last_side = regions[-1][2]  # every level reaches both far edges
        assert {y + s for y, x, s in regions if s == last_side} >= {h} and max(x + s for y, x, s in regions) == w


def test_rgem_is_the_normalised_gem_of_the_map_plus_that_of_each_region():
    from retrieval.features import rmac_regions

    rng = np.random.default_rng(3)
    fm = rng.uniform(-0.1, 2.0, (2, 5, 10, 4)).astype(np.float32)

    def gem(block, p):
        return np.mean(np.maximum(block, 1e-6) ** p, axis=(1, 2)) ** (1 / p)

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for p in (3.0, 1.5):
        want = unit(gem(fm, p)) + sum(unit(gem(fm[:, y:y + s, x:x + s], p)) for y, x, s in rmac_regions(5, 10))
        np.testing.assert_allclose(pool(fm, "rgem", p=p), want, rtol=1e-5)
    assert pool(fm, "rgem").shape == (2, 4) and pool(fm, "rgem").dtype == np.float32
    # Through padded inputs too: each row pools only its image's cells, regions laid on those.
    padded = pool_regions(fm, "rgem", [(64, 32), (32, 32)], (32, 64))
    np.testing.assert_allclose(padded[1], pool(fm[1:, :, :5], "rgem")[0], rtol=1e-5)


def test_rmac_regions_of_a_long_map_keep_the_overlap_nearest_forty_percent():
    from retrieval.features import rmac_regions

    # 3 high, 13 wide: b = 10 / (steps - 1) for steps 2..6 gives overlaps 1 - b/3 of -2.33, -0.67, -0.11, 0.17,
    # 0.33; 0.33 is the nearest 40%, at 6 steps, so the long side gets five more regions per level (at 7
    # steps, 0.44 would be nearer still, but R-MAC tries 2 to 6 only).
    assert rmac_regions(3, 13) == ([(0, x, 3) for x in (0, 2, 4, 6, 8, 10)]
                                   + [(y, x, 2) for y in (0, 1) for x in (0, 2, 4, 6, 7, 9, 11)]
                                   + [(y, x, 1) for y in (0, 1, 2) for x in (0, 2, 3, 5, 7, 9, 10, 12)])


def test_pool_regions_hand_computed_when_every_row_is_padded():
    fm = np.arange(2 * 2 * 4 * 1, dtype=np.float32).reshape(2, 2, 4, 1)  # rows 0 1 2 3 / 4 5 6 7, then 8..15
    # Input 64x128 (h x w): image 1 is 64x64, cells 0-1 of both rows; image 2 is 20x32, only cell 8.
    np.testing.assert_allclose(pool_regions(fm, "mac", [(64, 64), (20, 32)], (64, 128)), [[5.0], [8.0]])
    # GeM uses the exponent given, p = 3 when none is (the zero cell is clamped at eps, so adds nothing).
    full = [(128, 64)] * 2
    np.testing.assert_allclose(pool_regions(fm, "gem", full, (64, 128), p=2),
                               [[(140 / 8) ** 0.5], [(1100 / 8) ** 0.5]], rtol=1e-5)
    mixed = [(128, 64), (64, 64)]  # image 2: cells 8, 9, 12, 13
    np.testing.assert_allclose(pool_regions(fm, "gem", mixed, (64, 128), p=2),
                               [[(140 / 8) ** 0.5], [(458 / 4) ** 0.5]], rtol=1e-5)
    np.testing.assert_allclose(pool_regions(fm, "gem", mixed, (64, 128)),
                               [[(784 / 8) ** (1 / 3)], [(5166 / 4) ** (1 / 3)]], rtol=1e-5)


def test_bucket_edges():
    assert Pipeline(max_side=384, bucket="resize").bucket_size(1024, 768) == (384, 288)  # scale 1 by default
    # 768x579 at 384 is 384x289.5: its 290 rows need the next bucket up, not 288 less a pixel of rounding.
    pad = Pipeline(max_side=384, bucket="pad")
    assert pad.target_size(768, 579) == (384, 320) and pad.content_size(768, 579) == (384, 290)
    assert Pipeline(max_side=100, bucket="resize").target_size(50, 50) == (100, 96)  # a square is landscape


def _unit(v):
    return v / np.linalg.norm(v)


def test_embedding_uses_the_gem_exponent_and_pools_only_the_image_of_a_padded_input(tiny):
    from retrieval.networks import forward

    def gem(cells, p):
        return np.mean(np.maximum(cells, 1e-6) ** p, axis=(0, 1)) ** (1 / p)

    img = photo(100, 60, seed=4)
    plain = Pipeline(max_side=64, gem_p=2)
    fm = forward(tiny, prepare_image(img, plain)[None])[0]
    np.testing.assert_allclose(embed_image(tiny, img, plain), _unit(gem(fm, 2)), rtol=1e-5, atol=1e-6)
    # A 4:1 panorama in a 128x64 bucket: 128x32 of image, the upper row of the 2x4 feature map.
    wide = photo(400, 100, seed=5)
    padded = Pipeline(max_side=128, bucket="pad", gem_p=2)
    fm = forward(tiny, prepare_image(wide, padded)[None])[0]
    assert fm.shape[:2] == (2, 4)
    np.testing.assert_allclose(embed_image(tiny, wide, padded), _unit(gem(fm[:1], 2)), rtol=1e-5, atol=1e-6)
    # Each scale pools its own image part: at scale 2 the image is again the upper row only.
    both = embed_image(tiny, wide, Pipeline(max_side=64, bucket="pad", scales=(1, 2)))
    one, two = (embed_image(tiny, wide, Pipeline(max_side=side, bucket="pad")) for side in (64, 128))
    np.testing.assert_allclose(both, _unit(one + two), atol=1e-5)


def test_batch_size_is_how_many_inputs_each_network_call_gets(tiny, monkeypatch):
    import retrieval.networks as networks

    calls = []
    real = networks.forward

    def spy(network, batch):
        calls.append(len(batch))
        return real(network, batch)

    monkeypatch.setattr(networks, "forward", spy)
    images, pipe = [photo(32, 32, seed=s) for s in range(9)], Pipeline(max_side=32)
    extract_features(tiny, images, pipe, batch_size=3)
    assert calls == [3, 3, 3]
    calls.clear()
    extract_features(tiny, images, pipe)
    assert calls == [8, 1]  # 8 by default
    calls.clear()
    list(iter_features(tiny, images, pipe))
    assert calls == [8, 1]


def test_jpegs_are_decoded_at_the_smallest_draft_that_every_use_allows(tiny, tmp_path, monkeypatch):
    import retrieval.features as features

    seen = []
    real_prepare = features.prepare_image

    def spy(image, pipeline, scale=1.0, **kwargs):
        arr = real_prepare(image, pipeline, scale, **kwargs)
        seen.append((image.size, arr.shape[:2]))
        return arr

    monkeypatch.setattr(features, "prepare_image", spy)
    photo(1000, 665).save(tmp_path / "wide.jpg", quality=90)
    photo(665, 1000).save(tmp_path / "tall.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800x200, shown 200x800
    photo(800, 200).save(tmp_path / "turned.jpg", quality=90, exif=exif.tobytes())

    def decoded(source, pipeline, preview_side=None):
        seen.clear()
        [item] = iter_features(tiny, [source], pipeline, preview_side=preview_side)
        assert item.error is None
        return seen, item

    small = Pipeline(max_side=64)
    # The thumbnail's 192 pixels need more than the network's 64: 1/4 scale, 250x167, is the smallest over 192.
    assert decoded(tmp_path / "wide.jpg", small)[0] == [((250, 167), (43, 64))]
    assert decoded((tmp_path / "wide.jpg").read_bytes(), small)[0] == [((250, 167), (43, 64))]
    assert decoded(tmp_path / "tall.jpg", small)[0] == [((167, 250), (64, 43))]
    # The network's 384x255 (or the largest scale's 256x170) needs 1/2 scale.
    assert decoded(tmp_path / "tall.jpg", Pipeline(max_side=384))[0] == [((333, 500), (384, 255))]
    assert decoded(tmp_path / "wide.jpg", Pipeline(max_side=64, scales=(4,)))[0] == [((500, 333), (170, 256))]
    # Drafting in the upright orientation: 50x200 is 1/4 of the 200x800 shown, the input is upright.
    assert decoded(tmp_path / "turned.jpg", small)[0] == [((50, 200), (64, 32))]
    # A 400-pixel preview needs 1/2 scale, and is made from that decoded image.
    seen_, item = decoded(tmp_path / "wide.jpg", small, preview_side=400)
    assert seen_ == [((500, 333), (43, 64))]
    assert Image.open(io.BytesIO(item.preview)).size == (400, 266)


def test_thumbnails_are_optimised_jpegs_of_the_quality_asked():
    from retrieval.features import make_thumbnail

    img = photo(40, 30)  # under the side: stored as it is
    assert make_thumbnail(img) == encode(img, "JPEG", quality=80, optimize=True)
    assert make_thumbnail(img, quality=50) == encode(img, "JPEG", quality=50, optimize=True)


def test_max_combination_is_the_normalised_elementwise_max_of_the_scales(tiny):
    img = photo(128, 96)
    one = embed_image(tiny, img, Pipeline(max_side=128))
    half = embed_image(tiny, img, Pipeline(max_side=64))
    assert not np.allclose(np.maximum(one, half), one) and not np.allclose(np.maximum(one, half), half)
    both = embed_image(tiny, img, Pipeline(max_side=128, scales=(1, 0.5), combine="max"))
    np.testing.assert_allclose(both, _unit(np.maximum(one, half)), atol=1e-5)
    [item] = iter_features(tiny, [img], Pipeline(max_side=128, scales=(0.5, 1), combine="max"))
    np.testing.assert_allclose(item.vector, both, atol=1e-5)


class _CountingSources:
    """A sequence of images that records how many of them iter_features has taken so far."""

    def __init__(self, images):
        self.images, self.taken = images, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]  # IndexError past the end ends the iteration
        self.taken = max(self.taken, i + 1)
        return image


def _taken_at_each_yield(tiny, images, pipe, **kwargs):
    sources = _CountingSources(images)
    taken = [sources.taken for _ in iter_features(tiny, sources, pipe, **kwargs)]
    return taken


@pytest.mark.parametrize("batch_size, workers, bucket, lookahead", [
    (3, 1, None, 6),        # max(2 * batch_size, 4 * workers): 2 * batch_size
    (1, 2, None, 8),        # 4 * workers
    (1, 1, None, 4),
    (1, 1, "resize", 20),   # five times as many with fixed-shape buckets to fill
])
def test_decoding_runs_ahead_by_the_documented_lookahead(tiny, batch_size, workers, bucket, lookahead):
    images = [photo(32, 32, seed=s) for s in range(24)]
    pipe = Pipeline(max_side=32, bucket=bucket)
    taken = _taken_at_each_yield(tiny, images, pipe, batch_size=batch_size, workers=workers)
    assert len(taken) == 24
    # The first batch is full once batch_size decodes are done, each replaced by the next input.
    assert taken[0] == lookahead + batch_size
    assert all(t - done <= lookahead + batch_size for done, t in enumerate(taken))


def test_odd_shapes_are_flushed_once_more_than_the_lookahead_wait(tiny):
    # Twelve shapes, one image each: no bucket ever fills; lookahead is max(2 * 2, 4 * 1) = 4.
    images = [photo(64, 32 + 2 * i, seed=i) for i in range(12)]
    items = []
    sources = _CountingSources(images)
    taken = []
    for item in iter_features(tiny, sources, Pipeline(max_side=64), batch_size=2, workers=1):
        taken.append(sources.taken)
        items.append(item)
    assert sorted(it.position for it in items) == list(range(12))
    # 4 decoded ahead, then 5 waiting (more than the lookahead): the oldest goes, with 9 taken.
    assert taken[:4] == [9, 10, 11, 12]
    assert [it.position for it in items[:4]] == [0, 1, 2, 3]  # the bucket waiting longest first


def test_decoding_uses_as_many_threads_as_workers(tiny, monkeypatch):
    import threading
    import time

    import retrieval.features as features

    real, lock, running, most = features._decode, threading.Lock(), [0], [0]

    def slow(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # long enough for a second thread, were there one, to start another decode
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(features, "_decode", slow)
    images = [photo(32, 32, seed=s) for s in range(6)]
    assert len(list(iter_features(tiny, images, Pipeline(max_side=32), batch_size=2, workers=1))) == 6
    assert most[0] == 1


def test_an_rgb_image_is_used_as_it_is_and_others_are_converted():
    from retrieval.features import _to_rgb

    rgb = photo(4, 3)
    assert _to_rgb(rgb) is rgb  # no copy of every decoded photo
    cmyk = rgb.convert("CMYK")
    assert _to_rgb(cmyk).mode == "RGB" and _to_rgb(cmyk) is not cmyk


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_every_sixteen_bit_mode_is_scaled_from_its_full_range(mode):
    from retrieval.features import _to_rgb

    # 200 of 65535 is near black, not grey 200; 25600 is 99.6 of 255, not clipped to white.
    for value, expected in [(200, 0), (25600, 99), (32896, 128), (65535, 255)]:
        assert _to_rgb(Image.new(mode, (2, 1), value)).getpixel((1, 0)) == (expected,) * 3, (mode, value)


def test_int_and_float_images_pick_their_range_from_their_values():
    from retrieval.features import _to_rgb

    def grey(values, mode):
        image = Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32))
        assert image.mode == mode
        return np.asarray(_to_rgb(image))[0, :, 0].tolist()

    assert grey([0, 255], "I") == [0, 255]  # up to 255: already 8 bits
    assert grey([0, 256], "I") == [0, 0]  # 256 is over it: a 16-bit range, where 256 is near black
    assert grey([0, 25600.0], "F") == [0, 99]  # a float image over 255 is scaled, not clipped
    assert grey([-5.0, 100.0], "F") == [0, 100]  # negatives clip to black instead of wrapping round
    assert grey([131070, 65535], "I") == [255, 255]  # over 16 bits clips to white instead of wrapping


def _two_pixels(mode, clear, kept):
    image = Image.new(mode, (2, 1), clear)
    if mode == "P":
        image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((1, 0), kept)
    return image


@pytest.mark.parametrize("mode, clear, kept, shown", [
    ("P", 0, 1, (200, 10, 10)),  # a transparent palette index
    ("L", 0, 90, (90, 90, 90)),  # a transparent grey level
    ("RGB", (0, 0, 0), (90, 0, 0), (90, 0, 0)),  # a transparent colour
])
def test_a_pngs_trns_transparency_is_shown_on_white(mode, clear, kept, shown):
    png = encode(_two_pixels(mode, clear, kept), transparency=clear)
    assert "transparency" in Image.open(io.BytesIO(png)).info
    loaded = load_image(png)
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 0)) == shown


def test_alpha_channels_are_shown_on_white_and_no_trns_means_opaque():
    from retrieval.features import _to_rgb

    assert _to_rgb(_two_pixels("P", 0, 1)).getpixel((0, 0)) == (0, 0, 0)  # no tRNS: index 0 is black
    for mode, clear in [("RGBA", (9, 9, 9, 0)), ("LA", (9, 0)), ("PA", (0, 0)), ("RGBa", (0, 0, 0, 0))]:
        assert _to_rgb(Image.new(mode, (1, 1), clear)).getpixel((0, 0)) == (255, 255, 255), mode


@pytest.mark.parametrize("orientation, transposes", [(None, False)] + [(o, o >= 5) for o in range(1, 9)])
def test_the_orientations_that_swap_width_and_height(orientation, transposes):
    from retrieval.features import _exif_transposes

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image = Image.open(io.BytesIO(encode(photo(8, 4), "JPEG", exif=exif.tobytes())))
    assert _exif_transposes(image) is transposes
    assert load_image(image).size == ((4, 8) if transposes else (8, 4))


def test_a_broken_exif_block_counts_as_upright():
    from retrieval.features import _exif_transposes

    class Broken:
        def getexif(self):
            raise SyntaxError("not a TIFF file")

    assert _exif_transposes(Broken()) is False


def test_load_image_names_what_failed(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match=r"^not a readable image \(IsADirectoryError: "):
        load_image(tmp_path)
    whole = encode(photo(64, 64), "JPEG")
    with pytest.raises(ImageError) as refused:  # Pillow's "image file is truncated (N bytes not processed)", in words
        load_image(whole[: len(whole) // 2])
    assert str(refused.value) == "the file is cut short: it ends before the image does (an interrupted download or copy?)"

    def bomb(*args, **kwargs):  # Pillow's refusal, were it ever worded without the pixel count
        raise Image.DecompressionBombError("too big")

    monkeypatch.setattr(Image, "open", bomb)
    with pytest.raises(ImageError, match=r"megapixels: the image has more pixels than that$"):
        load_image(whole)


def test_spoc_is_the_mean_over_positions():
    maps = np.arange(2 * 2 * 3 * 2, dtype=np.float32).reshape(2, 2, 3, 2)
    np.testing.assert_array_equal(pool(maps, "spoc"), maps.mean(axis=(1, 2)))
    assert pool(maps, "spoc").shape == (2, 2)


def test_embed_batch_runs_the_forward_it_is_given():
    from retrieval.features import embed_batch

    maps = np.zeros((2, 1, 2, 3), dtype=np.float32)
    maps[0, 0, 0] = [3, 0, 0]
    maps[1, 0, 1] = [0, 0, 4]
    seen = []

    def forward(network, batch):
        seen.append((network, batch.shape))
        return maps

    out = embed_batch("no network", np.zeros((2, 32, 64, 3), np.float32), Pipeline(pooling="mac"), None, forward=forward)
    assert seen == [("no network", (2, 32, 64, 3))]
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1]])


def test_the_preview_is_a_jpeg_of_the_preview_quality():
    from retrieval.features import PREVIEW_QUALITY, _decode, make_thumbnail

    image = photo(300, 200)
    *_, thumb, preview = _decode(image, Pipeline(max_side=64), 32, 128)
    assert thumb == make_thumbnail(image, 32)
    assert preview == make_thumbnail(image, 128, quality=PREVIEW_QUALITY) != make_thumbnail(image, 128)


def test_more_pipeline_refusals_and_edges():
    with pytest.raises(ValueError, match=r"^unknown scale combination 'sum'; choose one of mean, max$"):
        Pipeline(combine="sum")
    with pytest.raises(ValueError, match=r"^bucket is None or one of resize, pad, with max_side; got 'crop'$"):
        Pipeline(bucket="crop")
    with pytest.raises(ValueError, match=r"^gem_p must be positive, got 0$"):
        Pipeline(pooling="rgem", gem_p=0)
    assert Pipeline(gem_p=1).gem_p == 1  # p = 1 is the mean: allowed
    # A one-pixel line keeps one pixel of content in its padded bucket.
    pad = Pipeline(max_side=384, bucket="pad")
    assert pad.content_size(10000, 1) == (384, 1) and pad.content_size(1, 10000) == (1, 384)


def test_only_pillows_size_warning_is_silenced_while_opening(monkeypatch):
    real_open = Image.open

    def noisy_open(source):
        import warnings

        warnings.warn("something else about this file", UserWarning)
        return real_open(source)

    monkeypatch.setattr(Image, "open", noisy_open)
    with pytest.warns(UserWarning, match="something else about this file"):
        assert load_image(encode(photo(8, 4))).size == (8, 4)
