import io
import os

import numpy as np
import pytest
from PIL import Image

from precompute import build_index as build_cmd
from retrieval.build import BuildError, build_index
from retrieval.features import Pipeline, embed_image
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
    import retrieval.previews

    root = tmp_path / "photos"
    for i in range(3):
        save_photo(root / f"p{i}.jpg", i, size=(900, 600))
    made = []
    real = retrieval.previews.make_preview
    monkeypatch.setattr(retrieval.previews, "make_preview", lambda path, side: made.append(path) or real(path, side))
    build_index(root, tmp_path / "idx", tiny, PIPE, preview_side=300)
    idx = load_index(tmp_path / "idx")
    assert idx.meta["preview_side"] == 300
    assert [Image.open(io.BytesIO(idx.preview(i))).size for i in idx.ids] == [(300, 200)] * 3
    assert len(made) == 3
    save_photo(root / "p3.jpg", 3, size=(900, 600))
    build_index(root, tmp_path / "idx", tiny, PIPE, preview_side=300)
    assert len(made) == 4 and load_index(tmp_path / "idx").has_previews  # only the new file's preview was made
    # Over max_previews (or with preview_side=None), the index keeps thumbnails alone.
    build_index(root, tmp_path / "idx", tiny, PIPE, preview_side=300, max_previews=3)
    idx = load_index(tmp_path / "idx")
    assert not idx.has_previews and idx.meta["preview_side"] is None
