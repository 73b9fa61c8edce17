import json

import numpy as np
import pytest

from retrieval.features import Pipeline
from retrieval.index import IndexFormatError, file_sha256, load_index, read_meta, recover_index_folder, save_index
from retrieval.search import l2_normalize
from retrieval.whitening import apply_whitening, learn_whitening

META = {"network": "tiny", "weights": "random-seed-0", "pipeline": Pipeline().to_meta()}


def make(tmp_path, n=5, d=8, **kwargs):
    feats = l2_normalize(np.random.default_rng(0).standard_normal((n, d)))
    ids = [f"img/{i:03d}" for i in range(n)]
    thumbs = [bytes([i]) * (i + 1) for i in range(n)]
    out = save_index(tmp_path / "idx", feats, ids, META, thumbnails=thumbs, **kwargs)
    return out, feats, ids, thumbs


def test_round_trip_float32_and_float16(tmp_path):
    out, feats, ids, thumbs = make(tmp_path, dtype="float32")
    idx = load_index(out, network="tiny")
    np.testing.assert_array_equal(idx.features, feats)
    assert idx.ids.tolist() == ids and len(idx) == 5 and idx.dim == 8
    assert [idx.thumbnail(i) for i in ids] == thumbs
    assert idx.row_of("img/003") == 3 and "img/003" in idx and "nope" not in idx
    assert idx.pipeline == Pipeline()
    np.load(out / "feature_id.npy", allow_pickle=False)  # fixed-width unicode, no pickle
    out16, feats, _, _ = make(tmp_path / "h", dtype="float16")
    idx16 = load_index(out16)
    assert idx16.features.dtype == np.float32
    np.testing.assert_allclose(idx16.features, feats, atol=1e-3)
    assert (out16 / "feature_list.npy").stat().st_size < (out / "feature_list.npy").stat().st_size


def test_whitening_round_trip_projects_queries(tmp_path):
    raw = l2_normalize(np.random.default_rng(1).standard_normal((30, 16)))
    w = learn_whitening(raw)
    out = save_index(tmp_path / "w", apply_whitening(raw, w), range(30), META,
                     thumbnails=[b"x"] * 30, whitening=w, dtype="float32")
    idx = load_index(out)
    assert idx.meta["whitening"]["dim_out"] == w.dim_out == idx.dim
    np.testing.assert_allclose(idx.project(raw[:3]), idx.features[:3], atol=1e-5)


def test_unknown_id(tmp_path):
    out, *_ = make(tmp_path)
    with pytest.raises(KeyError, match="'missing' is not in this index"):
        load_index(out).row_of("missing")


def test_network_mismatch_refused(tmp_path):
    out, *_ = make(tmp_path)
    with pytest.raises(IndexFormatError, match="built with network 'tiny'.*'efficientnet-b7'"):
        load_index(out, network="efficientnet-b7")


def edit_meta(out, **changes):
    meta = json.loads((out / "index.json").read_text())
    meta.update(changes)
    (out / "index.json").write_text(json.dumps(meta))


def test_unknown_format_version_refused(tmp_path):
    out, *_ = make(tmp_path)
    edit_meta(out, format_version=99)
    with pytest.raises(IndexFormatError, match="unknown index format version 99"):
        load_index(out)


def test_count_mismatch_refused(tmp_path):
    out, *_ = make(tmp_path)
    edit_meta(out, count=6)
    with pytest.raises(IndexFormatError, match=r"shape \(5, 8\).*says \(6, 8\)"):
        load_index(out)


def test_corrupt_and_truncated_files_refused(tmp_path):
    out, *_ = make(tmp_path)
    good = (out / "feature_list.npy").read_bytes()
    data = bytearray(good)
    data[-1] ^= 0xFF
    (out / "feature_list.npy").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="does not match its sha256"):
        load_index(out)
    (out / "feature_list.npy").write_bytes(good)
    (out / "thumbnails.bin").write_bytes(b"")
    with pytest.raises(IndexFormatError, match="thumbnails.bin has 0 bytes"):
        load_index(out)
    (out / "feature_id.npy").unlink()
    with pytest.raises(IndexFormatError, match="feature_id.npy is missing"):
        load_index(out)


def test_not_an_index(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        read_meta(tmp_path / "nothing")
    with pytest.raises(IndexFormatError, match="index.json is missing"):
        load_index(tmp_path)


def test_bad_inputs_refused_at_save(tmp_path):
    f = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="must match"):
        save_index(tmp_path / "a", f, ["a", "b"], META, thumbnails=[b""] * 3)
    with pytest.raises(ValueError, match="unique"):
        save_index(tmp_path / "a", f, ["a", "a", "b"], META, thumbnails=[b""] * 3)
    with pytest.raises(ValueError, match="needs 'pipeline'"):
        save_index(tmp_path / "a", f, "abc", {"network": "x", "weights": "y"}, thumbnails=[b""] * 3)
    assert not (tmp_path / "a").exists()


def test_replacing_an_index_is_atomic_and_keeps_the_cache(tmp_path):
    out, *_ = make(tmp_path, n=5)
    (out / ".cache").mkdir()
    (out / ".cache" / "state.json").write_text("{}")
    make(tmp_path, n=7)
    assert len(load_index(out)) == 7
    assert (out / ".cache" / "state.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folders left


def test_recover_after_crash_between_renames(tmp_path):
    out, *_ = make(tmp_path, n=4)
    out.rename(tmp_path / ".idx.new-crash")
    recover_index_folder(out)
    assert len(load_index(out)) == 4


def test_previews_round_trip_and_are_checked(tmp_path):
    previews = [bytes([100 + i]) * (10 * i + 3) for i in range(5)]
    out, _, ids, thumbs = make(tmp_path, previews=previews)
    idx = load_index(out)
    assert idx.has_previews and [idx.preview(i) for i in ids] == previews
    assert json.loads((out / "index.json").read_text())["files"]["previews.bin"]["bytes"] == sum(map(len, previews))
    data = bytearray((out / "previews.bin").read_bytes())
    data[7] ^= 0xFF
    (out / "previews.bin").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="previews.bin does not match its sha256"):
        load_index(out)
    (out / "previews.bin").unlink()
    with pytest.raises(IndexFormatError, match="previews.bin is missing"):
        load_index(out)


def test_an_index_without_previews_serves_its_thumbnails(tmp_path):
    out, _, ids, thumbs = make(tmp_path)
    idx = load_index(out)
    assert not idx.has_previews and [idx.preview(i) for i in ids] == thumbs
    with pytest.raises(ValueError, match="5 rows and 2 previews"):
        make(tmp_path / "bad", previews=[b"a", b"b"])


def rewrite(out, name, array):
    """Replaces one array file and re-records its size and sha256, so only the content check can object."""
    from retrieval.index import file_sha256

    np.save(out / name, array)
    meta = json.loads((out / "index.json").read_text())
    meta["files"][name] = {"sha256": file_sha256(out / name), "bytes": (out / name).stat().st_size}
    (out / "index.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rows_holding_nan_or_infinity_are_refused(tmp_path, bad):
    out, feats, *_ = make(tmp_path, dtype="float32")
    feats = feats.copy()
    feats[2, 3] = bad
    rewrite(out, "feature_list.npy", feats)
    with pytest.raises(IndexFormatError, match="feature_list.npy holds NaN or infinite values"):
        load_index(out)


def test_repeated_ids_are_refused(tmp_path):
    out, _, ids, _ = make(tmp_path)
    rewrite(out, "feature_id.npy", np.array(ids[:4] + [ids[0]]))
    with pytest.raises(IndexFormatError, match="feature_id.npy has duplicate ids"):
        load_index(out)


def test_ids_and_offsets_that_do_not_fit_are_refused(tmp_path):
    out, _, ids, _ = make(tmp_path)
    rewrite(out, "feature_id.npy", np.arange(5))
    with pytest.raises(IndexFormatError, match=r"holds \(5,\) int64, expected 5 unicode ids"):
        load_index(out)
    rewrite(out, "feature_id.npy", np.array(ids))
    offsets = np.load(out / "thumbnails_offsets.npy")
    for bad in (offsets[:-1], offsets + 1, offsets[::-1].copy(), np.r_[offsets[:-1], offsets[-1] + 1]):
        rewrite(out, "thumbnails_offsets.npy", bad)
        with pytest.raises(IndexFormatError, match="thumbnails_offsets.npy does not describe thumbnails.bin for 5 images"):
            load_index(out)
    swapped = offsets.copy()
    swapped[2], swapped[3] = swapped[3], swapped[2]  # still 0 .. len, but one thumbnail of -1 bytes
    rewrite(out, "thumbnails_offsets.npy", swapped)
    with pytest.raises(IndexFormatError, match="does not describe"):
        load_index(out)


def test_dtype_and_pipeline_in_index_json_are_checked(tmp_path):
    out, *_ = make(tmp_path, dtype="float32")
    edit_meta(out, dtype="float16")
    with pytest.raises(IndexFormatError, match="feature_list.npy is float32, index.json says float16"):
        load_index(out)
    edit_meta(out, dtype="float32", pipeline={**META["pipeline"], "pooling": "median"})
    with pytest.raises(IndexFormatError, match="the pipeline in index.json is not valid"):
        load_index(out)


def test_files_and_weights_recorded_in_index_json_are_checked(tmp_path):
    out, *_ = make(tmp_path)
    with pytest.raises(IndexFormatError, match="built with weights 'random-seed-0', not 'imagenet'"):
        load_index(out, weights="imagenet")
    assert len(load_index(out, network="tiny", weights="random-seed-0")) == 5
    meta = json.loads((out / "index.json").read_text())
    del meta["files"]["thumbnails.bin"]
    (out / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="index.json in .* has no record of thumbnails.bin"):
        load_index(out)
    edit_meta(out, files={})
    del_key = json.loads((out / "index.json").read_text())
    del del_key["dim"]
    (out / "index.json").write_text(json.dumps(del_key))
    with pytest.raises(IndexFormatError, match="lacks dim"):
        load_index(out)
    (out / "index.json").write_text("[1, 2]")
    with pytest.raises(IndexFormatError, match="must hold a JSON object"):
        load_index(out)
    (out / "index.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="is not valid JSON"):
        load_index(out)


def test_an_altered_file_of_the_same_size_is_caught_only_by_its_sha256(tmp_path):
    out, *_ = make(tmp_path)
    data = bytearray((out / "thumbnails.bin").read_bytes())
    data[0] ^= 0xFF
    (out / "thumbnails.bin").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="thumbnails.bin does not match its sha256"):
        load_index(out)
    assert load_index(out, verify=False).thumbnail("img/000") == bytes(data[:1])


def whitened(tmp_path):
    raw = l2_normalize(np.random.default_rng(1).standard_normal((30, 16)))
    w = learn_whitening(raw)
    out = save_index(tmp_path / "w", apply_whitening(raw, w), range(30), META,
                     thumbnails=[b"x"] * 30, whitening=w, dtype="float32")
    return out, raw, w


@pytest.mark.parametrize("name", ["whitening_mean.npy", "whitening_projection.npy"])
def test_missing_or_corrupt_whitening_files_are_refused(tmp_path, name):
    out, _, w = whitened(tmp_path)
    good = (out / name).read_bytes()
    garbage = b"\x93NUMPY garbage".ljust(len(good), b"\0")
    (out / name).write_bytes(garbage)  # same size: only the sha256 (or, unverified, the parse) objects
    with pytest.raises(IndexFormatError, match=f"{name} does not match its sha256"):
        load_index(out)
    with pytest.raises(IndexFormatError, match="a whitening file cannot be read"):
        load_index(out, verify=False)
    (out / name).unlink()
    with pytest.raises(IndexFormatError, match=f"is incomplete: {name} is missing"):
        load_index(out)
    rewrite(out, name, (w.mean if name == "whitening_mean.npy" else w.projection)[:3])
    with pytest.raises(IndexFormatError, match="whitening arrays .* do not fit dim"):
        load_index(out)
    bad = (w.mean if name == "whitening_mean.npy" else w.projection).copy()
    bad.flat[0] = np.nan
    rewrite(out, name, bad)
    with pytest.raises(IndexFormatError, match="whitening arrays hold NaN"):
        load_index(out)


def test_whitening_is_stored_exactly(tmp_path):
    out, raw, w = whitened(tmp_path)
    idx = load_index(out)
    np.testing.assert_array_equal(idx.whitening.mean, w.mean)
    np.testing.assert_array_equal(idx.whitening.projection, w.projection)
    assert idx.whitening.shrinkage == w.shrinkage == idx.meta["whitening"]["shrinkage"]
    assert idx.project(raw[:2]).shape == (2, w.dim_out)
    assert idx.project(raw[0]).dtype == np.float32


def test_recover_from_a_crash_after_the_old_index_moved_away(tmp_path):
    # The swap renames idx -> .idx.old-PID, then .idx.new-XXX -> idx; a crash in between leaves both.
    out, *_ = make(tmp_path, n=4)
    make(tmp_path / "next", n=6)
    out.rename(tmp_path / ".idx.old-123")
    (tmp_path / "next" / "idx").rename(tmp_path / ".idx.new-abc")
    recover_index_folder(out)
    assert len(load_index(out)) == 6  # the complete new index wins
    assert not (tmp_path / ".idx.old-123").exists()  # its process is gone: removed


def test_recover_refuses_a_half_written_new_index_and_restores_the_old_one(tmp_path):
    out, *_ = make(tmp_path, n=4)
    out.rename(tmp_path / ".idx.old-123")
    half = tmp_path / ".idx.new-abc"
    half.mkdir()
    (half / "feature_list.npy").write_bytes(b"partial")  # interrupted before index.json was written
    recover_index_folder(out)
    assert len(load_index(out)) == 4
    assert not half.exists()  # a killed save's half-written folder is removed


def test_recover_removes_what_a_killed_save_left_beside_a_present_index(tmp_path):
    import subprocess
    import sys

    out, *_ = make(tmp_path, n=4)
    old_style = tmp_path / ".idx.new-k2j4x0"  # named before pids were
    old_style.mkdir()
    (old_style / "feature_list.npy").write_bytes(b"partial")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        gone, running = tmp_path / f".idx.new-{dead.pid}-ab12", tmp_path / f".idx.new-{alive.pid}-cd34"
        for folder in (gone, running):
            folder.mkdir()
            (folder / "feature_list.npy").write_bytes(b"partial")
        recover_index_folder(out)
        assert not old_style.exists() and not gone.exists()
        assert running.is_dir()  # another build writing into the same folder right now
        assert len(load_index(out)) == 4
    finally:
        alive.kill()
        alive.wait()


def test_recover_leaves_a_present_index_alone(tmp_path):
    out, *_ = make(tmp_path, n=4)
    make(tmp_path / "next", n=6)
    (tmp_path / "next" / "idx").rename(tmp_path / ".idx.new-abc")
    recover_index_folder(out)
    assert len(load_index(out)) == 4
    recover_index_folder(tmp_path / "never-built")
    assert not (tmp_path / "never-built").exists()


def test_replacing_an_index_clears_the_old_folder_and_refuses_a_file(tmp_path):
    out, *_ = make(tmp_path, n=4)
    make(tmp_path, n=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    blocker = tmp_path / "f" / "idx"
    blocker.parent.mkdir()
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not an index folder"):
        save_index(blocker, np.eye(2, dtype=np.float32), ["a", "b"], META, thumbnails=[b"", b""])
    assert sorted(p.name for p in blocker.parent.iterdir()) == ["idx"]


def test_save_records_what_load_checks(tmp_path):
    out, feats, ids, thumbs = make(tmp_path, dtype="float16")
    meta = read_meta(out)
    assert (meta["format_version"], meta["dim"], meta["dtype"], meta["count"]) == (1, 8, "float16", 5)
    assert meta["whitening"] is None and meta["network"] == "tiny" and "numpy" in meta["versions"]
    assert sorted(meta["files"]) == ["feature_id.npy", "feature_list.npy", "thumbnails.bin", "thumbnails_offsets.npy"]
    assert np.load(out / "feature_list.npy").dtype == np.float16
    assert np.load(out / "feature_id.npy").dtype == np.dtype("<U7")
    assert (out / "thumbnails.bin").read_bytes() == b"".join(thumbs)
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_index(tmp_path / "b", feats, ids, META, thumbnails=thumbs, dtype="float64")
    w = learn_whitening(l2_normalize(np.random.default_rng(1).standard_normal((30, 16))))
    with pytest.raises(ValueError, match="features do not have the whitening's output dimension"):
        save_index(tmp_path / "b", feats, ids, META, thumbnails=thumbs, whitening=w)
    with pytest.raises(ValueError, match="not valid|pooling"):
        save_index(tmp_path / "b", feats, ids, {**META, "pipeline": {"pooling": "median"}}, thumbnails=thumbs)


@pytest.mark.parametrize("name", ["feature_list.npy", "feature_id.npy", "thumbnails_offsets.npy",
                                  "whitening_mean.npy", "whitening_projection.npy"])
def test_pickled_arrays_are_never_loaded(tmp_path, name):
    # An index's .npy files hold plain arrays; an object array would need pickle, i.e. running code.
    out, *_ = whitened(tmp_path)
    rewrite(out, name, np.array([{"evil": 1}] * 3, dtype=object))
    cannot = "a whitening file cannot be read" if name.startswith("whitening") else "an array file cannot be read"
    with pytest.raises(IndexFormatError, match=cannot + r" \(Object arrays cannot be loaded when allow_pickle=False\)"):
        load_index(out)


def test_an_unreadable_array_file_names_itself(tmp_path):
    out, *_ = make(tmp_path)
    size = (out / "feature_list.npy").stat().st_size
    (out / "feature_list.npy").write_bytes(b"garbage".ljust(size, b"\0"))
    with pytest.raises(IndexFormatError, match=r"idx: an array file cannot be read \(.+\)$"):
        load_index(out, verify=False)


def test_offsets_must_have_one_entry_per_thumbnail_plus_one(tmp_path):
    out, *_ = make(tmp_path)
    offsets = np.load(out / "thumbnails_offsets.npy")
    rewrite(out, "thumbnails_offsets.npy", np.r_[offsets[:2], offsets[1:]])  # from 0 to the end, one too many
    with pytest.raises(IndexFormatError, match="does not describe thumbnails.bin"):
        load_index(out)


def test_empty_thumbnails_and_one_letter_ids_are_fine(tmp_path):
    feats = l2_normalize(np.random.default_rng(0).standard_normal((3, 4)))
    out = save_index(tmp_path / "a" / "b" / "idx", feats, ["x", "y", "z"], META, thumbnails=[b"", b"jpg", b""])
    idx = load_index(out)
    assert [idx.thumbnail(i) for i in "xyz"] == [b"", b"jpg", b""]
    assert np.load(out / "feature_id.npy").dtype == np.dtype("<U1")
    assert idx.path == out
    empty = load_index(save_index(tmp_path / "empty", np.zeros((0, 4)), [], META, thumbnails=[]))
    assert len(empty) == 0 and empty.ids.dtype == np.dtype("<U1")


def test_an_unwhitened_index_projects_queries_unchanged(tmp_path):
    out, feats, *_ = make(tmp_path, dtype="float32")
    idx = load_index(out)
    assert idx.whitening is None
    projected = idx.project(feats[:2].astype(np.float64))
    assert projected.dtype == np.float32
    np.testing.assert_array_equal(projected, feats[:2])


def test_whitening_without_a_recorded_shrinkage_and_a_1d_projection(tmp_path):
    out, raw, w = whitened(tmp_path)
    meta = json.loads((out / "index.json").read_text())
    del meta["whitening"]["shrinkage"]
    (out / "index.json").write_text(json.dumps(meta))
    assert load_index(out).whitening.shrinkage == 0.0
    rewrite(out, "whitening_projection.npy", w.projection[0])
    with pytest.raises(IndexFormatError, match=r"whitening arrays \(16,\), \(\d+,\) do not fit dim"):
        load_index(out)


def test_whitening_is_saved_as_float32(tmp_path):
    from retrieval.whitening import Whitening

    raw = l2_normalize(np.random.default_rng(1).standard_normal((30, 16)))
    w = learn_whitening(raw)
    wide = Whitening(w.mean.astype(np.float64), w.projection.astype(np.float64), w.shrinkage)
    out = save_index(tmp_path / "w", apply_whitening(raw, w), range(30), META, thumbnails=[b"x"] * 30, whitening=wide)
    assert np.load(out / "whitening_mean.npy").dtype == np.float32
    assert np.load(out / "whitening_projection.npy").dtype == np.float32


def test_index_json_is_sorted_indented_and_dated_in_utc(tmp_path):
    import platform
    from datetime import datetime, timedelta
    from importlib.metadata import version

    out, *_ = make(tmp_path)
    text = (out / "index.json").read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"
    created = datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == timedelta(0) and created.microsecond == 0
    versions = meta["versions"]
    assert versions["python"] == platform.python_version() and versions["numpy"] == np.__version__
    for dist in ("keras", "scikit-learn", "pillow", "tensorflow-cpu"):
        assert versions[dist] == version(dist)


def test_messages_of_refused_indexes_say_why(tmp_path):
    out, *_ = make(tmp_path)
    with pytest.raises(IndexFormatError, match=r"was built with network 'tiny', but queries would be embedded with "
                       r"'b7': descriptors of different networks cannot be compared\. Use the index's network or "
                       r"rebuild the index\.$"):
        load_index(out, network="b7")
    (out / "thumbnails.bin").write_bytes(b"x")
    with pytest.raises(IndexFormatError, match=r"thumbnails.bin has 1 bytes but index.json says 15: the file is "
                       r"truncated or from another build$"):
        load_index(out)
    edit_meta(out, format_version=2)
    with pytest.raises(IndexFormatError, match=r"unknown index format version 2; this code reads version 1\. "
                       r"Rebuild the index with this version of precompute\.build_index\.$"):
        load_index(out)
    meta = json.loads((out / "index.json").read_text())
    for key in ("network", "count", "format_version"):
        meta.pop(key)
    meta["format_version"] = 1
    (out / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=r"index.json lacks network, count$"):
        load_index(out)


def test_messages_of_refused_saves_say_why(tmp_path):
    f = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="^image ids must be unique$"):
        save_index(tmp_path / "a", f, ["a", "a", "b"], META, thumbnails=[b""] * 3)
    with pytest.raises(ValueError, match="^features hold NaN or infinite values$"):
        save_index(tmp_path / "a", np.full((3, 3), np.nan), "abc", META, thumbnails=[b""] * 3)
    w = learn_whitening(l2_normalize(np.random.default_rng(1).standard_normal((30, 16))))
    with pytest.raises(ValueError, match="^features do not have the whitening's output dimension$"):
        save_index(tmp_path / "a", f, "abc", META, thumbnails=[b""] * 3, whitening=w)


def test_a_failed_save_leaves_no_temporary_folder_and_names_it_for_recovery(tmp_path, monkeypatch):
    import retrieval.index as index_module

    seen = []

    def crash(new, out_dir, keep):
        seen.append(new)
        assert (new / "index.json").is_file()
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "_swap_in", crash)
    with pytest.raises(OSError, match="disk full"):
        save_index(tmp_path / "idx", np.eye(2, dtype=np.float32), ["a", "b"], META, thumbnails=[b"", b""])
    (new,) = seen
    assert new.parent == tmp_path and new.name.startswith(".idx.new-")  # what recover_index_folder looks for
    assert list(tmp_path.iterdir()) == []


def undeletable(path, ignore_errors=False, **kwargs):
    """shutil.rmtree on a folder it may not delete (a busy share, permissions): raises unless told not to."""
    if not ignore_errors:
        raise PermissionError(f"cannot delete {path}")


def test_an_old_index_that_cannot_be_deleted_does_not_fail_the_save(tmp_path, monkeypatch):
    import retrieval.index as index_module

    out, *_ = make(tmp_path, n=4)
    monkeypatch.setattr(index_module.shutil, "rmtree", undeletable)
    make(tmp_path, n=6)
    assert len(load_index(out)) == 6


def test_a_failed_save_reports_its_own_error_even_when_cleaning_up_fails(tmp_path, monkeypatch):
    import retrieval.index as index_module

    def crash(new, out_dir, keep):
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "_swap_in", crash)
    monkeypatch.setattr(index_module.shutil, "rmtree", undeletable)
    with pytest.raises(OSError, match="disk full"):
        save_index(tmp_path / "idx", np.eye(2, dtype=np.float32), ["a", "b"], META, thumbnails=[b"", b""])


def graph_index(tmp_path):
    from retrieval.diffusion import build_graph

    feats = l2_normalize(np.random.default_rng(2).standard_normal((20, 8)))
    graph = build_graph(feats, k=4, gamma=3.0)
    out = save_index(tmp_path / "g", feats, range(20), META, thumbnails=[b"x"] * 20, graph=graph, dtype="float32")
    return out, graph


def test_diffusion_graph_round_trip(tmp_path):
    out, graph = graph_index(tmp_path)
    idx = load_index(out)
    assert idx.meta["graph"] == {"k": 4, "gamma": 3.0, "mutual": True, "knn": "exact", "count": 20, "edges": graph.nnz}
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(idx.graph, name), getattr(graph, name))
    assert load_index(make(tmp_path / "plain")[0]).graph is None


def test_tampered_diffusion_graph_refused(tmp_path):
    out, graph = graph_index(tmp_path)
    weights = graph.weights.copy()
    weights[0] *= 2  # same size, other content
    np.save(out / "graph_weights.npy", weights)
    with pytest.raises(IndexFormatError, match="graph_weights.npy does not match its sha256"):
        load_index(out)
    (out / "graph_indices.npy").unlink()
    with pytest.raises(IndexFormatError, match="graph_indices.npy is missing"):
        load_index(out)


def test_diffusion_graph_that_passes_the_checksum_but_not_the_checks_refused(tmp_path):
    out, graph = graph_index(tmp_path)
    weights = graph.weights.copy()
    weights[0] *= 2  # the checksum updated too, as a careless rebuild would: the asymmetry is caught
    np.save(out / "graph_weights.npy", weights)
    edit_meta(out, files={**read_meta(out)["files"], "graph_weights.npy": {
        "sha256": file_sha256(out / "graph_weights.npy"),
        "bytes": (out / "graph_weights.npy").stat().st_size}})
    with pytest.raises(IndexFormatError, match="diffusion graph is not valid .*not symmetric"):
        load_index(out)


# Large indexes (memory-mapped rows, thumbnails read by offset), the ANN file, the stored graph,
# previews' offsets and the inputs save_index converts.

def record(out, name):
    """Re-records the size and sha256 of a file changed in place, so that only its content can be objected to."""
    meta = json.loads((out / "index.json").read_text())
    meta["files"][name] = {"sha256": file_sha256(out / name), "bytes": (out / name).stat().st_size}
    (out / "index.json").write_text(json.dumps(meta))


def varied(tmp_path, n=20, d=8, dtype="float16", **kwargs):
    """An index whose thumbnails all differ in length and content, one of them empty."""
    feats = l2_normalize(np.random.default_rng(4).standard_normal((n, d)))
    ids = [f"img/{i:03d}" for i in range(n)]
    thumbs = [bytes(range(i, 2 * i)) for i in range(n)]  # row 0: b""
    out = save_index(tmp_path / "idx", feats, ids, META, thumbnails=thumbs, dtype=dtype, **kwargs)
    return out, feats, ids, thumbs


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_large_index_is_memory_mapped_and_reads_its_thumbnails_from_disk(tmp_path, monkeypatch, dtype):
    import retrieval.index as index_module

    out, feats, ids, thumbs = varied(tmp_path, dtype=dtype)
    monkeypatch.setattr(index_module, "IN_MEMORY_ELEMENTS", 100)  # 20 x 8 = 160 elements: mapped
    idx = load_index(out)
    assert isinstance(idx.features, np.memmap) and idx.features.dtype == np.dtype(dtype)
    assert not idx.features.flags.writeable  # mapped read-only
    np.testing.assert_array_equal(idx.features, feats.astype(dtype))
    assert idx.ids.tolist() == ids and idx.dim == 8
    assert [idx.thumbnail(i) for i in ids] == thumbs
    assert idx.thumbnail(ids[-1]) == bytes(range(19, 38))


def test_an_index_of_exactly_in_memory_elements_is_loaded_into_memory(tmp_path, monkeypatch):
    import retrieval.index as index_module

    out, feats, ids, thumbs = varied(tmp_path)
    monkeypatch.setattr(index_module, "IN_MEMORY_ELEMENTS", 20 * 8)
    idx = load_index(out)
    assert type(idx.features) is np.ndarray and idx.features.dtype == np.float32
    assert [idx.thumbnail(i) for i in ids] == thumbs
    monkeypatch.setattr(index_module, "IN_MEMORY_ELEMENTS", 20 * 8 - 1)
    assert isinstance(load_index(out).features, np.memmap)


@pytest.mark.parametrize("row", [0, 9, 21])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_nan_or_infinity_in_any_block_of_a_mapped_index_is_refused(tmp_path, monkeypatch, row, bad):
    import retrieval.index as index_module

    out, feats, *_ = varied(tmp_path, n=22, dtype="float32")
    monkeypatch.setattr(index_module, "IN_MEMORY_ELEMENTS", 100)
    monkeypatch.setattr(index_module, "_BLOCK", 4)  # 22 rows: blocks at 0, 4, ..., 20, the last of 2 rows
    assert isinstance(load_index(out).features, np.memmap)
    feats = feats.copy()
    feats[row, 5] = bad  # the first row, a middle block, the last row of the short last block
    rewrite(out, "feature_list.npy", feats)
    with pytest.raises(IndexFormatError, match=r"idx: feature_list.npy holds NaN or infinite values$"):
        load_index(out)


def test_an_in_memory_index_keeps_serving_its_own_thumbnails_after_a_rebuild(tmp_path):
    out, _, ids, thumbs = varied(tmp_path)
    idx = load_index(out)
    save_index(out, np.eye(20, 8, dtype=np.float32), ids, META, thumbnails=[b"new" * 20] * 20)
    assert [idx.thumbnail(i) for i in ids] == thumbs  # held in memory, not re-read from the new folder


def tiny_ann(rows, **kwargs):
    from retrieval.ann import build_ann

    return build_ann(np.asarray(rows, dtype=np.float32), factory="Flat", **{"nprobe": 3, "rerank": 7, **kwargs})


def ann_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # FAISS writes where it is told; nothing may land in the working folder
    feats = l2_normalize(np.random.default_rng(5).standard_normal((5, 8)))
    ann = tiny_ann(feats)
    out = save_index(tmp_path / "idx", feats, [f"i{j}" for j in range(5)], META, thumbnails=None, ann=ann)
    return out, feats, ann


def test_ann_structure_round_trip(tmp_path, monkeypatch):
    out, feats, ann = ann_index(tmp_path, monkeypatch)
    meta = read_meta(out)
    assert meta["ann"] == ann.to_meta() and meta["ann"]["factory"] == "Flat"
    assert meta["files"]["ann.faiss"]["bytes"] == (out / "ann.faiss").stat().st_size
    idx = load_index(out)
    assert (idx.ann.factory, idx.ann.nprobe, idx.ann.rerank, len(idx.ann), idx.ann.dim) == ("Flat", 3, 7, 5, 8)
    assert idx.ann.to_meta() == ann.to_meta()
    np.testing.assert_array_equal(idx.ann.index.reconstruct_n(0, 5), feats)
    assert load_index(make(tmp_path / "plain")[0]).ann is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "plain"]


def test_missing_or_altered_ann_file_is_refused(tmp_path, monkeypatch):
    out, *_ = ann_index(tmp_path, monkeypatch)
    data = bytearray((out / "ann.faiss").read_bytes())
    data[-1] ^= 0xFF  # a stored row's last byte: FAISS would read it without complaint
    (out / "ann.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"idx/ann.faiss does not match its sha256 in index.json"):
        load_index(out)
    (out / "ann.faiss").unlink()
    with pytest.raises(IndexFormatError, match=r"idx is incomplete: ann.faiss is missing$"):
        load_index(out)


def test_an_unreadable_ann_file_or_ann_settings_are_refused(tmp_path, monkeypatch):
    out, *_ = ann_index(tmp_path, monkeypatch)
    good = (out / "ann.faiss").read_bytes()
    (out / "ann.faiss").write_bytes(b"garbage".ljust(len(good), b"\0"))
    record(out, "ann.faiss")
    with pytest.raises(IndexFormatError, match=r"idx: ann.faiss cannot be used \(FAISS cannot read .*ann.faiss: "
                       r".*not recognized\)$"):
        load_index(out)
    (out / "ann.faiss").write_bytes(good)
    record(out, "ann.faiss")
    meta = read_meta(out)
    del meta["ann"]["nprobe"]
    edit_meta(out, ann=meta["ann"])
    with pytest.raises(IndexFormatError, match=r"idx: ann.faiss cannot be used \('nprobe'\)$"):
        load_index(out)


@pytest.mark.parametrize("rows, message", [(4, "holds 4 rows of dimension 8, index.json says 5 of 8"),
                                           (5, "holds 5 rows of dimension 4, index.json says 5 of 8")])
def test_an_ann_file_of_other_rows_is_refused(tmp_path, monkeypatch, rows, message):
    from retrieval.ann import save_ann

    out, feats, _ = ann_index(tmp_path, monkeypatch)
    other = feats[:rows] if rows == 4 else feats[:, :4]  # fewer rows, or rows of another dimension
    save_ann(tiny_ann(other), out / "ann.faiss")
    record(out, "ann.faiss")
    with pytest.raises(IndexFormatError, match=rf"idx: ann.faiss {message}$"):
        load_index(out)


def test_save_refuses_an_ann_of_other_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = l2_normalize(np.random.default_rng(5).standard_normal((5, 8)))
    fewer, narrower = tiny_ann(feats[:4]), tiny_ann(feats[:, :4])
    for ann, shape in ((fewer, "4 rows of dimension 8"), (narrower, "5 rows of dimension 4")):
        with pytest.raises(ValueError, match=rf"^the ANN index holds {shape}, not \(5, 8\)$"):
            save_index(tmp_path / "idx", feats, "abcde", META, thumbnails=None, ann=ann)
    assert list(tmp_path.iterdir()) == []


def test_rows_given_as_lists_or_as_one_vector_are_saved_as_float_rows(tmp_path):
    rows = [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]
    idx = load_index(save_index(tmp_path / "a", rows, ["x", "y"], META, thumbnails=None, dtype="float32"))
    np.testing.assert_array_equal(idx.features, np.array(rows, dtype=np.float32))
    vector = np.array([0.0, 0.6, 0.8])  # one row given as a (d,) vector
    idx = load_index(save_index(tmp_path / "b", vector, ["z"], META, thumbnails=None, dtype="float32"))
    assert idx.features.shape == (1, 3) and idx.features[0].tolist() == vector.astype(np.float32).tolist()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_rows_that_are_not_a_matrix_of_finite_numbers_are_refused_at_save(tmp_path):
    with pytest.raises(ValueError, match=r"^features must be \(n, d\) rows, got shape \(2, 3, 4\)$"):
        save_index(tmp_path / "a", np.zeros((2, 3, 4)), "ab", META, thumbnails=None)
    with pytest.raises(ValueError, match=r"^features holds NaN or infinite values$"):
        save_index(tmp_path / "a", [[1.0, float("nan")]], "a", META, thumbnails=None)
    # finite as float64, infinite once stored: refused rather than written as an index load_index refuses
    with pytest.raises(ValueError, match=r"^features hold NaN or infinite values$"):
        save_index(tmp_path / "a", np.array([[1e300, 0.0], [0.0, 1.0]]), "ab", META, thumbnails=None, dtype="float32")
    assert list(tmp_path.iterdir()) == []


def test_an_index_without_thumbnails_gives_every_image_an_empty_one(tmp_path):
    feats = l2_normalize(np.random.default_rng(0).standard_normal((3, 4)))
    out = save_index(tmp_path / "a", feats, "xyz", META, thumbnails=None)
    idx = load_index(out)
    assert [idx.thumbnail(i) for i in "xyz"] == [b"", b"", b""] and (out / "thumbnails.bin").read_bytes() == b""
    assert read_meta(out)["thumbnails"] is False
    assert read_meta(save_index(tmp_path / "b", feats, "xyz", META, thumbnails=[b"", b"j", b""]))["thumbnails"] is True


def test_offsets_files_are_int64(tmp_path):
    out, *_ = make(tmp_path, previews=[b"p" * i for i in range(5)])
    for name in ("thumbnails_offsets.npy", "previews_offsets.npy"):
        offsets = np.load(out / name)
        assert offsets.dtype == np.int64, name
    assert np.load(out / "previews_offsets.npy").tolist() == [0, 0, 1, 3, 6, 10]


def previews_index(tmp_path):
    previews = [bytes([100 + i]) * (10 * i + 3) for i in range(5)]  # offsets 0, 3, 16, 39, 72, 115
    out, *_ = make(tmp_path, previews=previews)
    return out, np.load(out / "previews_offsets.npy")


@pytest.mark.parametrize("change", ["one too many", "not from 0", "past the end", "short of the end", "decreasing"])
def test_preview_offsets_that_do_not_fit_are_refused(tmp_path, change):
    out, offsets = previews_index(tmp_path)
    bad = offsets.copy()
    if change == "one too many":
        bad = np.r_[offsets[:2], offsets[1:]]  # still 0 .. the end, in order
    elif change == "not from 0":
        bad[0] = 1
    elif change == "past the end":
        bad[-1] += 1
    elif change == "short of the end":
        bad[-1] -= 1
    else:
        bad[2], bad[3] = bad[3], bad[2]
    rewrite(out, "previews_offsets.npy", bad)
    with pytest.raises(IndexFormatError,
                       match=r"idx: previews_offsets.npy does not describe previews.bin for 5 images$"):
        load_index(out)


def test_empty_previews_are_fine(tmp_path):
    previews = [b"", b"ab", b"", b"", b"c"]
    out, _, ids, _ = make(tmp_path, previews=previews)
    idx = load_index(out)
    assert idx.has_previews and [idx.preview(i) for i in ids] == previews


def test_pickled_preview_offsets_are_never_loaded(tmp_path):
    out, _ = previews_index(tmp_path)
    rewrite(out, "previews_offsets.npy", np.array([{"evil": 1}] * 6, dtype=object))
    with pytest.raises(IndexFormatError, match=r"the previews cannot be read \(Object arrays cannot be loaded when "
                                               r"allow_pickle=False"):
        load_index(out)
    (out / "previews_offsets.npy").write_bytes(b"not a npy file")
    record(out, "previews_offsets.npy")
    with pytest.raises(IndexFormatError, match=r"the previews cannot be read"):
        load_index(out)


@pytest.mark.parametrize("mapped", [False, True])
def test_a_loaded_index_reads_its_own_files_after_the_folder_is_replaced(tmp_path, monkeypatch, mapped):
    # The app may serve a folder that build_index replaces: a loaded index answers from the files it
    # was loaded from (old thumbnails and previews at the old offsets), never the new ones.
    if mapped:
        import retrieval.index as index_module

        monkeypatch.setattr(index_module, "IN_MEMORY_ELEMENTS", 10)
    previews = [bytes([100 + i]) * (10 * i + 3) for i in range(5)]
    out, feats, ids, thumbs = make(tmp_path, previews=previews)
    idx = load_index(out)
    assert isinstance(idx.features, np.memmap) == mapped
    save_index(out, feats[::-1], ids, META, thumbnails=[b"new"] * 5, previews=[b"newer" * 9] * 5)
    assert [idx.thumbnail(i) for i in ids] == thumbs
    assert [idx.preview(i) for i in ids] == previews
    from retrieval.rows import read_block, take_rows

    stored = feats.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(take_rows(idx.features, [0, 4]).astype(np.float32), stored[[0, 4]])
    np.testing.assert_allclose(read_block(idx.features, 0, 5).astype(np.float32), stored)
    fresh = load_index(out)
    assert fresh.thumbnail(ids[2]) == b"new" and fresh.preview(ids[2]) == b"newer" * 9
    np.testing.assert_allclose(take_rows(fresh.features, [0]).astype(np.float32), stored[[4]])


def test_an_index_copied_or_pickled_still_reads_its_files(tmp_path, monkeypatch):
    import copy
    import gc
    import pickle

    import retrieval.index as index_module

    monkeypatch.setattr(index_module, "IN_MEMORY_ELEMENTS", 10)
    previews = [bytes([100 + i]) * (i + 2) for i in range(5)]
    out, _, ids, thumbs = make(tmp_path, previews=previews)
    idx = load_index(out)
    twin, clone = copy.deepcopy(idx), pickle.loads(pickle.dumps(idx._preview_file))
    del idx
    gc.collect()  # the original's files are not closed under the copy
    assert [twin.thumbnail(i) for i in ids] == thumbs and [twin.preview(i) for i in ids] == previews
    assert clone.read(0, 2) == previews[0]


def test_rows_too_large_for_float16_are_refused_at_save(tmp_path):
    # float32 rows above 65504 become infinite in float16: refused, rather than saved as an index
    # that load_index then refuses.
    rows = np.ones((3, 4), np.float32)
    rows[1, 2] = 70000.0
    with pytest.raises(ValueError, match=r"^features hold values too large for float16"):
        save_index(tmp_path / "idx", rows, ["a", "b", "c"], META, thumbnails=None, dtype="float16")
    assert not (tmp_path / "idx").exists()
    assert load_index(save_index(tmp_path / "idx", rows, ["a", "b", "c"], META, thumbnails=None, dtype="float32")).features[1, 2] == 70000


def test_loaded_whitening_is_float32(tmp_path):
    out, raw, w = whitened(tmp_path)
    idx = load_index(out)
    assert idx.whitening.mean.dtype == np.float32 and idx.whitening.projection.dtype == np.float32


@pytest.mark.parametrize("mutual, knn", [(True, "exact"), (False, "ann")])
def test_diffusion_graph_settings_round_trip(tmp_path, mutual, knn):
    import dataclasses

    from retrieval.diffusion import build_graph

    feats = l2_normalize(np.random.default_rng(2).standard_normal((20, 8)))
    graph = dataclasses.replace(build_graph(feats, k=3, gamma=2.5, mutual=mutual), knn=knn)
    out = save_index(tmp_path / "g", feats, range(20), META, thumbnails=None, graph=graph)
    loaded = load_index(out).graph
    assert (loaded.k, loaded.gamma, loaded.mutual, loaded.knn) == (3, 2.5, mutual, knn)
    assert type(loaded.k) is int and type(loaded.gamma) is float and type(loaded.mutual) is bool
    assert loaded.to_meta() == graph.to_meta()
    assert loaded.indptr.dtype == np.int64 and loaded.indices.dtype == np.int32 and loaded.weights.dtype == np.float32
    np.testing.assert_array_equal(loaded.affinity().toarray(), graph.affinity().toarray())


def test_a_graph_of_other_images_is_refused(tmp_path):
    from retrieval.diffusion import build_graph

    out, graph = graph_index(tmp_path)
    with pytest.raises(ValueError, match=r"^the graph has 20 nodes for 5 rows$"):
        save_index(tmp_path / "five", np.eye(5, dtype=np.float32), "abcde", META, thumbnails=None, graph=graph)
    assert not (tmp_path / "five").exists()
    smaller = build_graph(l2_normalize(np.random.default_rng(3).standard_normal((19, 8))), k=4)
    for name, array in zip(("graph_indptr.npy", "graph_indices.npy", "graph_weights.npy"),
                           (smaller.indptr, smaller.indices, smaller.weights)):
        rewrite(out, name, array)
    with pytest.raises(IndexFormatError, match=r"g: the diffusion graph has 19 nodes, index.json says 20 images$"):
        load_index(out)


def test_a_pickled_graph_file_is_never_loaded(tmp_path):
    out, graph = graph_index(tmp_path)
    rewrite(out, "graph_indptr.npy", np.array([{"evil": 1}] * 21, dtype=object))
    with pytest.raises(IndexFormatError, match=r"the diffusion graph is not valid "
                       r"\(Object arrays cannot be loaded when allow_pickle=False\)$"):
        load_index(out)


def test_an_index_loads_without_its_rows_for_a_milvus_backend(tmp_path):
    from retrieval.index import update_meta

    out, feats, ids, thumbs = make(tmp_path, n=6, d=8)
    (out / "feature_list.npy").unlink()  # the app machine of a Milvus collection does not hold them
    with pytest.raises(IndexFormatError, match="feature_list.npy is missing"):
        load_index(out)
    index = load_index(out, features=False)
    assert index.features is None and index.dim == 8 and len(index) == 6
    assert [index.thumbnail(i) for i in ids] == thumbs and index.row_of(ids[3]) == 3
    meta = update_meta(out, milvus={"collection": "c", "count": 6})
    assert read_meta(out) == meta and meta["milvus"] == {"collection": "c", "count": 6}
    assert load_index(out, features=False).meta["milvus"]["collection"] == "c"  # every checksum still holds
