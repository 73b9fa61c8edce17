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
