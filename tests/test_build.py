import dataclasses
import json
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from precompute import build_index as build_cmd
from retrieval import build as build_module
from retrieval.build import BuildError, assemble_index, build_index, plan_build, record_results
import retrieval.defaults as defaults
from retrieval.defaults import DEFAULT
from retrieval.diffusion import DiffusionSettings, build_graph
from retrieval.features import Pipeline, embed_image, iter_features
from retrieval.index import load_index

PIPE = Pipeline(max_side=64)


def save_photo(path, seed, size=(96, 64), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        save_photo(root / f"{'sub/' if i % 2 else ''}p{i}.jpg", i)
    return root


def test_build_then_exact_descriptors_and_thumbnails(tiny, folder, tmp_path):
    report = build_index(folder, tmp_path / "idx", tiny, PIPE, batch_size=4, dtype="float32")
    idx = load_index(tmp_path / "idx", network=tiny.name)
    assert report.count == report.embedded == 6 and report.reused == 0
    assert idx.ids.tolist() == ["p0", "p2", "p4", "sub/p1", "sub/p3", "sub/p5"]
    want = embed_image(tiny, folder / "sub/p3.jpg", PIPE)
    np.testing.assert_allclose(idx.features[idx.row_of("sub/p3")], want, atol=1e-5)
    assert Image.open(io.BytesIO(idx.thumbnail("p0"))).size == (96, 64)
    assert idx.meta["pipeline"] == PIPE.to_meta() and idx.meta["count"] == 6


def test_rerun_embeds_only_new_or_changed_and_drops_deleted(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    before = load_index(out)
    (folder / "p0.jpg").unlink()
    save_photo(folder / "p2.jpg", 99)  # changed content
    os.utime(folder / "p2.jpg", ns=(1, 1))
    save_photo(folder / "new/p9.png", 9, fmt="PNG")
    report = build_index(folder, out, tiny, PIPE)
    after = load_index(out)
    assert (report.embedded, report.reused, report.removed) == (2, 4, 1)
    assert "p0" not in after and "new/p9" in after
    np.testing.assert_array_equal(after.features[after.row_of("sub/p5")], before.features[before.row_of("sub/p5")])
    assert not np.allclose(after.features[after.row_of("p2")], before.features[before.row_of("p2")])
    for kept in ("p4", "sub/p1", "sub/p3", "sub/p5"):  # the reused images keep their thumbnails, from the cache
        assert after.thumbnail(kept) == before.thumbnail(kept) != b""
    assert len(list((out / ".cache").glob("shard-*.npz"))) == 1  # compacted
    again = build_index(folder, out, tiny, PIPE)
    assert (again.embedded, again.reused) == (0, 6)


def test_interrupted_run_resumes_without_losing_finished_work(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    calls = []

    def crash(done, total):
        calls.append(done)
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(folder, out, tiny, PIPE, batch_size=2, progress=crash)
    assert not (out / "index.json").exists()  # no half index
    report = build_index(folder, out, tiny, PIPE, batch_size=2)
    assert report.reused == 4 and report.embedded == 2 and report.count == 6


def test_changed_settings_start_afresh(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    msgs = []
    report = build_index(folder, out, tiny, Pipeline(max_side=64, pooling="mac"), log=msgs.append)
    assert report.embedded == 6 and any("other settings" in m for m in msgs)
    assert load_index(out).meta["pipeline"]["pooling"] == "mac"


def test_bad_files_skipped_with_one_line_each(tiny, tmp_path):
    root = tmp_path / "mixed"
    save_photo(root / "ok.jpg", 1)
    save_photo(root / "tiny1x1.png", 2, size=(1, 1))
    save_photo(root / "long.png", 3, size=(20000, 10))
    save_photo(root / "gray.png", 4)
    Image.open(root / "gray.png").convert("L").save(root / "gray.png")
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    good = (root / "ok.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (root / "bomb.png").write_bytes(_png_bomb())
    msgs = []
    report = build_index(root, tmp_path / "idx", tiny, PIPE, log=msgs.append)
    assert sorted(r for r, _ in report.skipped) == ["bomb.png", "text.jpg", "trunc.jpg", "zero.jpg"]
    assert len(msgs) == 4 and all(m.startswith("skipped ") for m in msgs)
    assert sorted(load_index(tmp_path / "idx").ids.tolist()) == ["gray", "long", "ok", "tiny1x1"]


def _png_bomb():
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, format="PNG")
    return buf.getvalue()


def test_nothing_indexable_leaves_old_index_untouched(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    for p in folder.rglob("*.jpg"):
        p.write_bytes(b"garbage")
    with pytest.raises(BuildError, match="no image"):
        build_index(folder, out, tiny, PIPE)
    assert len(load_index(out)) == 6


def test_whitened_build_stores_whitening(tiny, folder, tmp_path):
    build_index(folder, tmp_path / "idx", tiny, PIPE, whiten=True)
    idx = load_index(tmp_path / "idx")
    assert idx.whitening is not None and idx.dim == idx.meta["whitening"]["dim_out"] == 5


def test_dba_and_query_expansion_recorded(tiny, folder, tmp_path):
    from retrieval.rerank import database_augmentation

    build_index(folder, tmp_path / "plain", tiny, PIPE, dtype="float32")
    build_index(folder, tmp_path / "dba", tiny, PIPE, dtype="float32", dba=2, qe=4)
    plain, aug = load_index(tmp_path / "plain"), load_index(tmp_path / "dba")
    np.testing.assert_allclose(aug.features, database_augmentation(plain.features, k=2), atol=1e-6)
    assert aug.meta["dba"] == {"k": 2, "alpha": 3.0} and aug.meta["query_expansion"] == {"k": 4, "alpha": 3.0}
    assert plain.meta["dba"] is None and plain.meta["query_expansion"] is None
    build_index(folder, tmp_path / "small", tiny, PIPE, dba=50)  # more neighbours than images
    assert load_index(tmp_path / "small").meta["dba"]["k"] == 5


def test_command_reports_bad_options(capsys, tmp_path):
    assert build_cmd.main(["--images", str(tmp_path), "--out", str(tmp_path / "o"), "--network", "vgg"]) == 2
    assert "unknown network 'vgg'" in capsys.readouterr().err
    assert build_cmd.main(["--images", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                           "--network", "efficientnet-lite0", "--max-side", "64", "--squash", "64"]) == 2


@pytest.mark.parametrize("fit", ["resize", "pad"])
def test_bucketed_build_descriptor_equals_the_query_descriptor(tiny, tmp_path, fit):
    from retrieval.engine import SearchEngine

    pipe = Pipeline(max_side=96, bucket=fit)
    root = tmp_path / "photos"
    for i, size in enumerate([(400, 250), (250, 400), (300, 300), (500, 180), (320, 240), (330, 240)]):
        save_photo(root / f"p{i}.jpg", i, size)
    build_index(root, tmp_path / "idx", tiny, pipe, batch_size=4, dtype="float32")
    idx = load_index(tmp_path / "idx")
    assert idx.pipeline == pipe and idx.meta["pipeline"]["bucket"] == fit
    engine = SearchEngine(idx, tiny)  # queries take the index's pipeline, buckets included
    for i in range(6):
        np.testing.assert_allclose(engine.embed(root / f"p{i}.jpg"), idx.features[idx.row_of(f"p{i}")], atol=1e-5)


def test_previews_are_stored_at_their_side_and_made_once_per_file(tiny, tmp_path, monkeypatch):
    import retrieval.features
    import retrieval.previews

    root = tmp_path / "photos"
    for i in range(3):
        save_photo(root / f"p{i}.jpg", i, size=(900, 600))
    decoded, made = [], []
    real_load, real_preview = retrieval.features.load_image, retrieval.previews.make_preview
    monkeypatch.setattr(retrieval.features, "load_image", lambda path, **kw: decoded.append(path) or real_load(path, **kw))
    monkeypatch.setattr(retrieval.previews, "make_preview", lambda path, side: made.append(path) or real_preview(path, side))
    build_index(root, tmp_path / "idx", tiny, PIPE, preview_side=300)
    idx = load_index(tmp_path / "idx")
    assert idx.meta["preview_side"] == 300
    assert [Image.open(io.BytesIO(idx.preview(i))).size for i in idx.ids] == [(300, 200)] * 3
    # One decode per photo: its preview comes out of the pass that embeds it.
    assert len(decoded) == 3 and made == []
    save_photo(root / "p3.jpg", 3, size=(900, 600))
    build_index(root, tmp_path / "idx", tiny, PIPE, preview_side=300)
    assert len(decoded) == 4 and made == [] and load_index(tmp_path / "idx").has_previews  # only the new file
    # Over max_previews (or with preview_side=None), the index keeps thumbnails alone.
    build_index(root, tmp_path / "idx", tiny, PIPE, preview_side=300, max_previews=3)
    idx = load_index(tmp_path / "idx")
    assert not idx.has_previews and idx.meta["preview_side"] is None
    # Previews asked for later, of photos already embedded: made from the files, nothing embedded again.
    build_index(root, tmp_path / "idx2", tiny, PIPE, preview_side=None)
    decoded.clear()
    report = build_index(root, tmp_path / "idx2", tiny, PIPE, preview_side=300)
    assert report.embedded == 0 and len(made) == 4 and decoded == []
    assert [Image.open(io.BytesIO(load_index(tmp_path / "idx2").preview(i))).size for i in idx.ids] == [(300, 200)] * 4


def test_a_file_rewritten_to_the_same_size_is_embedded_again(tiny, tmp_path):
    # BMP files of one size have one length, so only the modification time tells the edit.
    root = tmp_path / "photos"
    for i in range(3):
        save_photo(root / f"p{i}.bmp", i, fmt="BMP")
    out = tmp_path / "idx"
    build_index(root, out, tiny, PIPE, dtype="float32")
    before = load_index(out).features.copy()
    size = (root / "p1.bmp").stat().st_size
    stamp = (root / "p1.bmp").stat().st_mtime_ns
    save_photo(root / "p1.bmp", 42, fmt="BMP")
    os.utime(root / "p1.bmp", ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    assert (root / "p1.bmp").stat().st_size == size
    report = build_index(root, out, tiny, PIPE, dtype="float32")
    after = load_index(out)
    assert (report.embedded, report.reused) == (1, 2)
    np.testing.assert_allclose(after.features[1], embed_image(tiny, root / "p1.bmp", PIPE), atol=1e-5)
    assert not np.allclose(after.features[1], before[1])
    np.testing.assert_array_equal(after.features[[0, 2]], before[[0, 2]])
    # Touched to a time a nanosecond later, with the same content: embedded again too.
    os.utime(root / "p2.bmp", ns=(stamp + 2_000_000_001, stamp + 2_000_000_001))
    assert build_index(root, out, tiny, PIPE, dtype="float32").embedded == 1


def test_two_files_with_one_id_skip_the_second_with_a_message(tiny, tmp_path):
    root = tmp_path / "photos"
    save_photo(root / "a.jpg", 1)
    save_photo(root / "a.png", 2, fmt="PNG")
    save_photo(root / "b.jpg", 3)
    msgs = []
    report = build_index(root, tmp_path / "idx", tiny, PIPE, dtype="float32", log=msgs.append)
    idx = load_index(tmp_path / "idx")
    assert idx.ids.tolist() == ["a", "b"] and report.count == 2
    np.testing.assert_allclose(idx.features[0], embed_image(tiny, root / "a.jpg", PIPE), atol=1e-5)
    assert report.skipped == [("a.png", "same id as a.jpg")]
    assert msgs == ["skipped a.png: its id 'a' is taken by a.jpg"]


def test_a_changed_thumbnail_side_embeds_everything_again(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE, thumbnail_side=32)
    assert max(Image.open(io.BytesIO(load_index(out).thumbnail("p0"))).size) == 32
    msgs = []
    report = build_index(folder, out, tiny, PIPE, thumbnail_side=48, log=msgs.append)
    idx = load_index(out)
    assert report.embedded == 6 and report.reused == 0 and any("other settings" in m for m in msgs)
    assert max(Image.open(io.BytesIO(idx.thumbnail("p0"))).size) == 48 and idx.meta["thumbnail_side"] == 48
    assert build_index(folder, out, tiny, PIPE, thumbnail_side=48).reused == 6


def test_progress_report_and_periodic_flushes(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    calls = []
    report = build_index(folder, out, tiny, PIPE, shard_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]
    assert (report.count, report.embedded, report.reused, report.removed, report.skipped) == (6, 6, 0, 0, [])
    assert report.seconds > 0
    assert len(list((out / ".cache").glob("shard-*.npz"))) == 1  # three shards of 2, compacted into one
    # flush_seconds=0: every finished image is written at once, so an interruption loses none.
    def crash(done, total):
        if done == 3:
            raise KeyboardInterrupt

    for p in folder.rglob("*.jpg"):
        os.utime(p, ns=(1, 1))
    with pytest.raises(KeyboardInterrupt):
        build_index(folder, out, tiny, PIPE, batch_size=1, workers=1, flush_seconds=0, progress=crash)
    assert build_index(folder, out, tiny, PIPE).embedded == 3


def test_a_corrupt_cache_shard_is_embedded_again(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    (shard,) = (out / ".cache").glob("shard-*.npz")
    shard.write_bytes(b"not a zip")
    (out / ".cache" / "state.json").write_text("{not json")
    msgs = []
    report = build_index(folder, out, tiny, PIPE, log=msgs.append)
    assert report.embedded == 6 and any("other settings" in m for m in msgs)
    build_index(folder, out, tiny, PIPE)
    (shard,) = (out / ".cache").glob("shard-*.npz")
    shard.write_bytes(b"not a zip")
    msgs = []
    assert build_index(folder, out, tiny, PIPE, log=msgs.append).embedded == 6
    assert any(m.startswith(f"ignoring unreadable cache file {shard.name}") for m in msgs)


def test_the_build_records_what_made_it(tiny, folder, tmp_path):
    build_index(folder, tmp_path / "idx", tiny, PIPE, dtype="float32", alpha=2.0, dba=1, qe=2,
                extra_meta={"source": "photos"})
    meta = load_index(tmp_path / "idx").meta
    assert (meta["network"], meta["weights"], meta["source"]) == (tiny.name, tiny.weights, "photos")
    assert meta["dba"] == {"k": 1, "alpha": 2.0} and meta["query_expansion"] == {"k": 2, "alpha": 2.0}
    assert meta["dtype"] == "float32" and meta["thumbnail_side"] == 192
    state = json.loads((tmp_path / "idx" / ".cache" / "state.json").read_text())
    assert state == {"cache_version": 1, "network": tiny.name, "weights": tiny.weights,
                     "pipeline": PIPE.to_meta(), "thumbnail_side": 192}


def test_whitening_needs_two_images_and_dba_one_neighbour(tiny, tmp_path):
    root = tmp_path / "one"
    save_photo(root / "p.jpg", 1)
    with pytest.raises(BuildError, match="whitening needs at least two images"):
        build_index(root, tmp_path / "idx", tiny, PIPE, whiten=True)
    build_index(root, tmp_path / "idx", tiny, PIPE, dba=3, diffusion=DiffusionSettings())
    meta = load_index(tmp_path / "idx").meta
    assert meta["dba"] is None and meta["diffusion"] is None and meta["graph"] is None  # no graph of one image
    empty = re.escape(str(tmp_path / "empty"))
    with pytest.raises(BuildError, match=rf"^no image under {empty} could be indexed \(0 skipped\)$"):
        (tmp_path / "empty").mkdir()
        build_index(tmp_path / "empty", tmp_path / "e", tiny, PIPE)


def test_cache_shards_are_written_every_shard_size_images_or_flush_seconds(tiny, folder, tmp_path, monkeypatch):
    # What an interrupted (killed) build keeps: every finished shard. Counted by the shards written.
    sizes = []
    write = build_module._Cache.write_shard

    def recording(self, entries):
        sizes.append(len(entries))
        write(self, entries)

    monkeypatch.setattr(build_module._Cache, "write_shard", recording)
    build_index(folder, tmp_path / "a", tiny, PIPE, shard_size=2, flush_seconds=1000)
    assert sizes == [2, 2, 2, 6]  # then compacted into one shard of all six
    sizes.clear()
    build_index(folder, tmp_path / "b", tiny, PIPE, shard_size=100, flush_seconds=0)
    assert sizes == [1, 1, 1, 1, 1, 1, 6]
    sizes.clear()
    build_index(folder, tmp_path / "c", tiny, PIPE, shard_size=100, flush_seconds=1000)
    assert sizes == [6]  # one shard at the end, nothing to compact


def test_a_rebuild_with_nothing_changed_leaves_the_cache_alone(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    (shard,) = (out / ".cache").glob("shard-*.npz")
    stamp = shard.stat().st_mtime_ns
    build_index(folder, out, tiny, PIPE)
    assert [p.name for p in (out / ".cache").glob("shard-*.npz")] == [shard.name]
    assert shard.stat().st_mtime_ns == stamp


def test_ids_keep_every_dot_but_the_extension(tiny, tmp_path):
    from retrieval.build import image_id

    assert image_id("photo.v2.jpg") == "photo.v2" and image_id("sub/a.b/c.png") == "sub/a.b/c"
    root = tmp_path / "photos"
    save_photo(root / "notre.dame.2.jpg", 1)
    build_index(root, tmp_path / "idx", tiny, PIPE)
    assert load_index(tmp_path / "idx").ids.tolist() == ["notre.dame.2"]


def test_one_neighbour_dba_one_result_qe_alpha_and_shrinkage(tiny, folder, tmp_path):
    from retrieval.rerank import database_augmentation
    from retrieval.whitening import apply_whitening, learn_whitening

    build_index(folder, tmp_path / "plain", tiny, PIPE, dtype="float32")
    plain = load_index(tmp_path / "plain").features
    build_index(folder, tmp_path / "dba", tiny, PIPE, dtype="float32", dba=2, qe=1, alpha=1.0)
    aug = load_index(tmp_path / "dba")
    np.testing.assert_allclose(aug.features, database_augmentation(plain, k=2, alpha=1.0), atol=1e-6)
    assert aug.meta["dba"] == {"k": 2, "alpha": 1.0} and aug.meta["query_expansion"] == {"k": 1, "alpha": 1.0}
    build_index(folder, tmp_path / "one", tiny, PIPE, dtype="float32", dba=1)
    np.testing.assert_allclose(load_index(tmp_path / "one").features, database_augmentation(plain, k=1), atol=1e-6)
    build_index(folder, tmp_path / "w", tiny, PIPE, dtype="float32", whiten=True)
    assert load_index(tmp_path / "w").meta["whitening"]["shrinkage"] == 0.5
    build_index(folder, tmp_path / "w50", tiny, PIPE, dtype="float32", whiten=True, whiten_shrinkage=50.0)
    w50 = load_index(tmp_path / "w50")
    assert w50.meta["whitening"]["shrinkage"] == 50.0
    np.testing.assert_allclose(w50.features, apply_whitening(plain, learn_whitening(plain, shrinkage=50.0)), atol=1e-5)


def test_two_images_can_be_whitened_and_the_report_counts_add_up(tiny, tmp_path):
    import time

    root = tmp_path / "two"
    save_photo(root / "a.jpg", 1)
    save_photo(root / "b.jpg", 2)
    (root / "bad.jpg").write_text("not an image")
    started = time.perf_counter()
    report = build_index(root, tmp_path / "idx", tiny, PIPE, whiten=True)
    took = time.perf_counter() - started
    assert load_index(tmp_path / "idx").whitening is not None
    assert (report.count, report.embedded, len(report.skipped)) == (2, 2, 1)
    assert 0 < report.seconds <= took
    build_index(root, tmp_path / "idx", tiny, PIPE, diffusion=DiffusionSettings(k=5))
    meta = load_index(tmp_path / "idx").meta  # two images make a graph, of one neighbour each
    assert meta["diffusion"]["k"] == 5 and (meta["graph"]["count"], meta["graph"]["k"]) == (2, 1)
    with pytest.raises(BuildError, match="^whitening needs at least two images$"):
        (root / "b.jpg").unlink()
        build_index(root, tmp_path / "idx2", tiny, PIPE, whiten=True)


def test_the_cache_folder_holds_the_settings_and_one_numbered_shard(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    assert sorted(p.name for p in (out / ".cache").iterdir()) == ["previews.npz", "shard-000001.npz", "state.json"]
    save_photo(folder / "p9.jpg", 9)
    build_index(folder, out, tiny, PIPE)  # a second shard for the new photo, then both compacted into a third
    assert sorted(p.name for p in (out / ".cache").iterdir()) == ["previews.npz", "shard-000003.npz", "state.json"]
    with np.load(out / ".cache" / "shard-000003.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["mtimes", "offsets", "relpaths", "sizes", "thumbs", "vectors"]
        assert z["relpaths"].tolist() == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
        assert z["vectors"].dtype == np.float32 and z["sizes"].dtype == z["mtimes"].dtype == np.int64
        stat = (folder / "p9.jpg").stat()
        j = z["relpaths"].tolist().index("p9.jpg")
        assert (z["sizes"][j], z["mtimes"][j]) == (stat.st_size, stat.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "photos"]  # nothing half-written left


def test_everything_deleted_and_a_changed_network_start_afresh(tiny, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    from retrieval.networks import tiny_network

    msgs = []
    other = tiny_network(seed=1, channels=8)
    report = build_index(folder, out, other, PIPE, log=msgs.append)
    assert report.embedded == 6 and report.reused == 0
    assert msgs == ["the cached descriptors were made with other settings; embedding everything again"]
    assert json.loads((out / ".cache" / "state.json").read_text())["network"] == other.name


def test_previews_up_to_max_previews_and_what_the_embedding_pass_is_given(tiny, folder, tmp_path, monkeypatch):
    # The embedding pass gets the build's batch size and decoding threads and, up to max_previews
    # images (the limit included), the preview side; over it no previews at all, which the pass
    # would only hold in memory. The previews' own decoding threads are the build's too.
    import retrieval.previews

    passes, preview_threads, made = [], [], []
    real_iter, real_previews = build_module.iter_features, build_module.build_previews
    real_make = retrieval.previews.make_preview
    monkeypatch.setattr(build_module, "iter_features", lambda *a, **kw: passes.append(kw) or real_iter(*a, **kw))
    monkeypatch.setattr(build_module, "build_previews",
                        lambda *a, **kw: preview_threads.append(kw.get("workers")) or real_previews(*a, **kw))
    monkeypatch.setattr(retrieval.previews, "make_preview",
                        lambda path, side: made.append(path) or real_make(path, side))
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE, batch_size=3, workers=1, preview_side=48, max_previews=6)
    idx = load_index(out)
    assert [(kw["batch_size"], kw["workers"], kw["preview_side"]) for kw in passes] == [(3, 1, 48)]
    assert preview_threads == [1] and made == []  # every preview came out of the embedding pass
    assert idx.meta["preview_side"] == 48
    assert [Image.open(io.BytesIO(idx.preview(i))).size for i in idx.ids] == [(48, 32)] * 6
    build_index(folder, out, tiny, PIPE, preview_side=48, max_previews=5)
    idx = load_index(out)
    assert passes[-1]["preview_side"] is None and len(preview_threads) == 1
    assert not idx.has_previews and idx.meta["preview_side"] is None
    # A photo rewritten under the build (same size and time, so its descriptor is reused): its
    # preview, asked for now, cannot be made, and the index stays as it was.
    photo = folder / "p0.jpg"
    stat = photo.stat()
    photo.write_bytes(b"\0" * stat.st_size)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(BuildError, match=r"^a preview could not be made \(.+\); the files changed during the build\?$"):
        build_index(folder, out, tiny, PIPE, preview_side=40)
    assert not load_index(out).has_previews


def test_the_ann_structure_is_built_when_asked_or_from_ann_rows_images(tiny, folder, tmp_path, monkeypatch):
    import faiss

    from retrieval.ann import build_ann

    out = tmp_path / "idx"
    monkeypatch.setattr(defaults, "DEFAULT", dataclasses.replace(DEFAULT, ann_rows=7))  # read by approximate()
    build_index(folder, out, tiny, PIPE)
    assert load_index(out).meta["ann"] is None  # 6 images, under ann_rows
    build_index(folder, out, tiny, PIPE, ann=True)
    assert load_index(out).meta["ann"]["count"] == 6
    monkeypatch.setattr(defaults, "DEFAULT", dataclasses.replace(DEFAULT, ann_rows=6))
    build_index(folder, out, tiny, PIPE, ann=False)
    assert load_index(out).meta["ann"] is None
    msgs = []
    build_index(folder, out, tiny, PIPE, log=msgs.append)  # from ann_rows images up, so at exactly 6
    idx = load_index(out)
    assert msgs == ["building the ANN structure over 6 images", "ann IVF1,SQ8: training on 6 of 6 rows",
                    "ann IVF1,SQ8: adding 6 rows"]
    assert idx.meta["ann"]["count"] == 6 and len(idx.ann) == 6
    # Built from the rows as stored (float16): the same structure as one built from the loaded index.
    again = build_ann(idx.features)
    assert np.array_equal(faiss.serialize_index(idx.ann.index), faiss.serialize_index(again.index))


def test_the_diffusion_graph_is_built_from_the_rows_as_stored(tiny, folder, tmp_path):
    settings = DiffusionSettings(k=3, seeds=2, alpha=0.9, gamma=2.0)
    build_index(folder, tmp_path / "idx", tiny, PIPE, diffusion=settings)
    idx = load_index(tmp_path / "idx")
    assert idx.meta["diffusion"] == settings.to_meta()
    assert (idx.meta["graph"]["k"], idx.meta["graph"]["gamma"], idx.meta["graph"]["count"]) == (3, 2.0, 6)
    # From the float16 rows as stored: a graph built again from the loaded index is this one exactly.
    want = build_graph(idx.features, k=3, gamma=2.0)
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(idx.graph, name), getattr(want, name))


def test_assemble_index_defaults_are_build_index_defaults(tiny, folder, tmp_path):
    # The Ray engine passes assemble_index only the options it was given (build_index_ray's
    # **assemble), so what it was not given must come out as build_index's defaults.
    out = tmp_path / "idx"
    build_index(folder, out, tiny, PIPE)
    want = load_index(out).meta
    report = assemble_index(plan_build(folder, out, tiny, PIPE), tiny, PIPE)  # and no start time either
    meta = load_index(out).meta
    for key in ("dtype", "whitening", "dba", "query_expansion", "diffusion", "graph", "ann", "preview_side"):
        assert meta[key] == want[key], key
    assert (meta["dtype"], meta["whitening"], meta["dba"], meta["query_expansion"]) == ("float16", None, None, None)
    assert (report.count, report.reused) == (6, 6) and 0 < report.seconds < 60
    assemble_index(plan_build(folder, out, tiny, PIPE), tiny, PIPE, whiten=True, dba=1, qe=2)
    meta = load_index(out).meta
    assert meta["whitening"]["shrinkage"] == 0.5
    assert meta["dba"] == {"k": 1, "alpha": 3.0} and meta["query_expansion"] == {"k": 2, "alpha": 3.0}


def test_results_recorded_in_two_passes_add_up(tiny, tmp_path):
    # An engine may feed one plan's results in several passes: the report counts them all.
    root = tmp_path / "photos"
    for name in ("a", "c", "d"):
        save_photo(root / f"{name}.jpg", ord(name))
    (root / "b.jpg").write_text("not an image")
    plan = plan_build(root, tmp_path / "idx", tiny, PIPE)
    assert plan.todo == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    for part in (plan.todo[:2], plan.todo[2:]):
        stream = iter_features(tiny, [plan.files[rel] for rel in part], PIPE, thumbnail_side=64)
        record_results(plan, ((part[item.position], item) for item in stream))
    report = assemble_index(plan, tiny, PIPE, thumbnail_side=64)
    assert (report.count, report.embedded, [rel for rel, _ in report.skipped]) == (3, 3, ["b.jpg"])
    assert load_index(tmp_path / "idx").ids.tolist() == ["a", "c", "d"]


def test_the_report_times_the_whole_build_not_only_its_last_step(tiny, folder, tmp_path):
    # The embedding pass is part of the build's time: here it takes at least 6 x 50 ms.
    import time

    report = build_index(folder, tmp_path / "idx", tiny, PIPE, progress=lambda done, total: time.sleep(0.05))
    assert report.embedded == 6 and report.seconds >= 0.3


def test_the_commands_read_the_recipe_whole():
    from precompute.build_index import parse_args
    from precompute.evaluate import parse_args as evaluate_args
    from precompute.options import recipe_from_args
    from retrieval.defaults import REPORT

    base = ["--images", "photos", "--out", "index"]
    assert recipe_from_args(parse_args(base)) == DEFAULT
    assert recipe_from_args(parse_args([*base, "--preset", "report"])) == REPORT
    assert recipe_from_args(evaluate_args(["--dataset", "rparis6k", "--data-root", "data"])) == DEFAULT
    chosen = recipe_from_args(parse_args([*base, "--qe", "0", "--dba", "2", "--no-diffusion", "--alpha", "2"]))
    assert (chosen.qe, chosen.dba, chosen.alpha, chosen.diffusion) == (0, 2, 2.0, None)
    assert chosen.build_options() == {"dba": 2, "qe": 0, "alpha": 2.0, "diffusion": None}
