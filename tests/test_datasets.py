import functools
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from retrieval import datasets as ds

from tests.conftest import DATA as SHARED
from tests.conftest import require_shared


@pytest.fixture
def needs_shared():
    require_shared(SHARED / "rparis6k" / "gnd_rparis6k.pkl")


def _save_jpg(path: Path, size=(40, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _make_revisited(root: Path, present: list[str], name="rmini", crops=()):
    """A 6-image, 3-query revisited dataset in the revisitop layout."""
    imlist = ["a", "b", "c", "d", "e", "f"]
    gnd = [
        {"bbx": [2.0, 3.0, 22.0, 17.0], "easy": [0, 1], "hard": [2], "junk": [3]},
        {"bbx": [0, 0, 10, 10], "easy": [], "hard": [4], "junk": [0]},
        {"bbx": [5, 5, 15, 15], "easy": [5], "hard": [], "junk": [1]},
    ]
    data = {"imlist": imlist, "qimlist": ["q0", "q1", "q2"], "gnd": gnd}
    folder = root / name
    folder.mkdir(parents=True)
    with open(folder / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump(data, f)
    for i, image in enumerate(present):
        _save_jpg(folder / "jpg" / f"{image}.jpg", seed=i)
    for image in crops:
        _save_jpg(folder / "query_crops" / f"{image}.jpg", size=(8, 6), seed=99)
    return data


# ------------------------------------------------------------- restricted pickle


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        # Harmless if it ever ran: it only creates the marker file.
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "payload": _Payload(marker)}))
    with pytest.raises(ds.DatasetError, match="refusing to load builtins.eval"):
        ds.load_pickle(path)
    assert not marker.exists()


def test_pickle_with_any_global_is_refused(tmp_path):
    path = tmp_path / "array.pkl"
    path.write_bytes(pickle.dumps({"imlist": np.arange(3)}))
    with pytest.raises(ds.DatasetError, match="refusing"):
        ds.load_pickle(path)


def test_malicious_ground_truth_stops_load_dataset(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "rmini").mkdir()
    (tmp_path / "rmini" / "gnd_rmini.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ds.DatasetError):
        ds.load_dataset("rmini", tmp_path)
    assert not marker.exists()


def test_plain_pickle_round_trips(tmp_path):
    value = {"imlist": ["a"], "gnd": [{"bbx": [1.5, 2, 3, 4], "easy": [0]}], "t": (1, None, True)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(value, protocol=3))
    assert ds.load_pickle(path) == value


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"] * 50})[:20])
    with pytest.raises(ds.DatasetError, match="not a valid"):
        ds.load_pickle(path)


# ------------------------------------------------------------ revisited layout


def test_full_revisited_dataset_loads_unchanged(tmp_path):
    data = _make_revisited(tmp_path, ["a", "b", "c", "d", "e", "f", "q0", "q1", "q2"])
    d = ds.load_dataset("rmini", tmp_path)
    assert d.kind == "revisited" and not d.partial
    assert d.db_ids == data["imlist"] and d.query_ids == data["qimlist"]
    assert (d.total_db, d.total_queries) == (6, 3)
    for mine, theirs in zip(d.gnd, data["gnd"]):
        for key in ("easy", "hard", "junk"):
            assert mine[key].tolist() == theirs[key]
    assert d.query_boxes[0] == (2.0, 3.0, 22.0, 17.0)
    assert d.image_path("c") == tmp_path / "rmini" / "jpg" / "c.jpg"


def test_partial_revisited_dataset_is_restricted_and_reindexed(tmp_path):
    # Present: a, c, d, f (b, e missing); queries q0 and q1 have images, q2 a crop.
    _make_revisited(tmp_path, ["a", "c", "d", "f", "q0", "q1"], crops=["q2"])
    d = ds.load_dataset("rmini", tmp_path)
    assert d.partial
    assert d.db_ids == ["a", "c", "d", "f"]
    # q1's only positive (e) is missing: dropped. q2 (crop only, positive f) stays.
    assert d.query_ids == ["q0", "q2"]
    assert d.gnd[0]["easy"].tolist() == [0]  # a; b is gone
    assert d.gnd[0]["hard"].tolist() == [1]  # c
    assert d.gnd[0]["junk"].tolist() == [2]  # d
    assert d.gnd[1]["easy"].tolist() == [3]  # f
    assert d.gnd[1]["junk"].tolist() == []  # b is gone
    assert d.summary() == "rmini (revisited): 4 of 6 database images, 2 of 3 queries (partial)"


def test_query_without_image_or_crop_is_dropped(tmp_path):
    _make_revisited(tmp_path, ["a", "b", "c", "d", "e", "f", "q0"])
    d = ds.load_dataset("rmini", tmp_path)
    assert d.query_ids == ["q0"] and d.partial


def test_query_image_is_cropped_to_its_box(tmp_path):
    _make_revisited(tmp_path, ["a", "q0"])
    d = ds.load_dataset("rmini", tmp_path)
    with Image.open(tmp_path / "rmini" / "jpg" / "q0.jpg") as full:
        expected = np.asarray(full.convert("RGB"))[3:17, 2:22]
    crop = d.query_image(0)
    assert crop.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(crop), expected)


def test_ready_made_crop_wins_over_box(tmp_path):
    _make_revisited(tmp_path, ["a", "q0"], crops=["q0"])
    d = ds.load_dataset("rmini", tmp_path)
    assert d.query_image(0).size == (8, 6)


def test_box_outside_image_is_refused(tmp_path):
    _make_revisited(tmp_path, ["a", "q0"])
    d = ds.load_dataset("rmini", tmp_path)
    d.query_boxes[0] = (100.0, 100.0, 120.0, 120.0)
    with pytest.raises(ds.DatasetError, match="outside"):
        d.query_image(0)


def test_grayscale_query_comes_back_rgb(tmp_path):
    _make_revisited(tmp_path, ["a"])
    Image.new("L", (30, 30), 128).save(tmp_path / "rmini" / "jpg" / "q0.jpg")
    d = ds.load_dataset("rmini", tmp_path)
    image = d.query_image(0)
    assert image.mode == "RGB" and image.size == (20, 14)


def test_missing_ground_truth_and_images_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ground truth for nothing"):
        ds.load_dataset("nothing", tmp_path)
    _make_revisited(tmp_path, [])
    with pytest.raises(FileNotFoundError, match="none of the 6 database images"):
        ds.load_dataset("rmini", tmp_path)


def test_no_usable_query_is_an_error(tmp_path):
    _make_revisited(tmp_path, ["a", "b"])
    with pytest.raises(ds.DatasetError, match="no query"):
        ds.load_dataset("rmini", tmp_path)


def test_out_of_range_index_is_refused(tmp_path):
    folder = tmp_path / "rbad"
    folder.mkdir()
    data = {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [3], "hard": [], "junk": []}]}
    (folder / "gnd_rbad.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(ds.DatasetError, match="outside the 1 database images"):
        ds.load_dataset("rbad", tmp_path)


# -------------------------------------------------------------- classic layouts


def _write_gt(folder: Path, label, query_line, good, ok, junk):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{label}_query.txt").write_text(query_line + "\n")
    for part, names in (("good", good), ("ok", ok), ("junk", junk)):
        (folder / f"{label}_{part}.txt").write_text("".join(n + "\n" for n in names))


def test_classic_text_files(tmp_path):
    base = tmp_path / "oxford5k"
    for i, image in enumerate(["all_souls_000013", "all_souls_000001", "bodleian_000002", "other_000001"]):
        _save_jpg(base / "jpg" / f"{image}.jpg", seed=i)
    _write_gt(
        base / "gt",
        "all_souls_1",
        "oxc1_all_souls_000013 2.4 3.6 21.5 17.0",
        good=["all_souls_000013", "all_souls_000001"],
        ok=["all_souls_000099"],  # not on disk
        junk=["other_000001"],
    )
    _write_gt(base / "gt", "bodleian_1", "oxc1_bodleian_000002 0 0 10 10", good=["bodleian_000777"], ok=[], junk=[])
    d = ds.load_dataset("oxford5k", tmp_path)
    assert d.kind == "classic"
    # No image list in this layout: the universe is what is on disk plus every name the gt lists.
    assert d.total_db == 6 and d.total_queries == 2
    assert d.db_ids == ["all_souls_000001", "all_souls_000013", "bodleian_000002", "other_000001"]
    # bodleian_1's only positive is missing: dropped.
    assert d.query_ids == ["all_souls_000013"]
    assert sorted(d.db_ids[i] for i in d.gnd[0]["ok"]) == ["all_souls_000001", "all_souls_000013"]
    assert [d.db_ids[i] for i in d.gnd[0]["junk"]] == ["other_000001"]
    assert d.query_boxes[0] == (2.4, 3.6, 21.5, 17.0)
    assert d.query_image(0).size == (20, 13)  # rounded box 2, 4, 22, 17


def test_classic_text_files_missing_list_is_clear(tmp_path):
    base = tmp_path / "paris6k"
    _save_jpg(base / "jpg" / "paris_x_000001.jpg")
    _write_gt(base, "x_1", "paris_x_000001 0 0 5 5", good=["paris_x_000001"], ok=[], junk=[])
    (base / "x_1_junk.txt").unlink()
    with pytest.raises(ds.DatasetError, match="x_1_junk.txt"):
        ds.load_dataset("paris6k", tmp_path)


def test_classic_mat_with_imlist_and_qidx(tmp_path):
    base = tmp_path / "oxford5k"
    names = ["im_a", "im_b", "im_c", "im_d"]
    for i, image in enumerate(names[:3]):
        _save_jpg(base / "jpg" / f"{image}.jpg", seed=i)
    gnd = np.zeros((1, 2), dtype=[("ok", object), ("junk", object), ("bbx", object)])
    gnd[0, 0] = (np.array([[1], [3]]), np.array([[2]]), np.array([[1.0, 2.0, 9.0, 8.0]]))
    gnd[0, 1] = (np.array([[4]]), np.zeros((0, 0)), np.array([[0, 0, 5, 5]]))
    imlist = np.empty((4, 1), dtype=object)
    for i, n in enumerate(names):
        imlist[i, 0] = n
    scipy.io.savemat(base / "gnd_oxford5k.mat", {"imlist": imlist, "qidx": np.array([[1], [2]]), "gnd": gnd})
    d = ds.load_dataset("oxford5k", tmp_path)
    assert d.kind == "classic" and (d.total_db, d.total_queries) == (4, 2)
    assert d.db_ids == ["im_a", "im_b", "im_c"]
    assert d.query_ids == ["im_a"]  # query 2's only positive, im_d, is missing
    assert d.gnd[0]["ok"].tolist() == [0, 2]  # 1-based 1, 3
    assert d.gnd[0]["junk"].tolist() == [1]
    assert d.query_boxes[0] == (1.0, 2.0, 9.0, 8.0)


def test_unreadable_mat_is_a_clear_error(tmp_path):
    (tmp_path / "paris6k").mkdir()
    (tmp_path / "paris6k" / "gnd_paris6k.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ds.DatasetError, match="gnd_paris6k.mat"):
        ds.load_dataset("paris6k", tmp_path)


# --------------------------------------------------------------- the real data


@pytest.mark.usefixtures("needs_shared")
def test_real_rparis6k_mini_benchmark():
    d = ds.load_dataset("rparis6k", SHARED)
    assert (len(d.db_ids), len(d.query_ids)) == (397, 19)
    assert (d.total_db, d.total_queries) == (6322, 70) and d.partial
    full = ds.load_pickle(SHARED / "rparis6k" / "gnd_rparis6k.pkl")
    present = set(d.db_ids)
    for query, gnd, box in zip(d.query_ids, d.gnd, d.query_boxes):
        original = full["gnd"][full["qimlist"].index(query)]
        assert box == tuple(float(v) for v in original["bbx"])
        for key in ("easy", "hard", "junk"):
            expected = [full["imlist"][i] for i in original[key] if full["imlist"][i] in present]
            assert [d.db_ids[i] for i in gnd[key]] == expected
        assert len(gnd["easy"]) + len(gnd["hard"]) > 0


@pytest.mark.usefixtures("needs_shared")
def test_real_crops_match_cropping_the_full_image():
    with_crops = ds.load_dataset("rparis6k", SHARED)
    no_crops = ds.load_dataset("rparis6k", SHARED, crops_dir=SHARED / "none")
    assert len(no_crops.query_ids) == 12  # queries whose full image is present
    i = with_crops.query_ids.index(no_crops.query_ids[0])
    assert with_crops.query_image(i).size == no_crops.query_image(0).size


@pytest.mark.usefixtures("needs_shared")
def test_real_paris6k_mat_on_rparis6k_images():
    with pytest.raises(FileNotFoundError, match="paris6k"):
        ds.load_dataset("paris6k", SHARED)
    d = ds.load_dataset("paris6k", SHARED, images_dir=SHARED / "rparis6k" / "jpg")
    assert d.kind == "classic"
    assert (len(d.db_ids), d.total_db, d.total_queries) == (409, 6392, 55)
    assert len(d.query_ids) == 12
    # In the classic protocol the query image belongs to the database and to its
    # own ok list, which holds only if the 1-based indices were shifted right.
    for query, gnd in zip(d.query_ids, d.gnd):
        assert query in [d.db_ids[i] for i in gnd["ok"]]
    with_crops = ds.load_dataset(
        "paris6k", SHARED, images_dir=SHARED / "rparis6k" / "jpg", crops_dir=SHARED / "rparis6k" / "query_crops"
    )
    assert len(with_crops.query_ids) == 14


# ------------------------------------------------------------------- download


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_fails_clearly_on_closed_port(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/gnd_rparis6k.pkl"
    with pytest.raises(ds.DownloadError, match="could not download") as info:
        ds.download_dataset("rparis6k", tmp_path, timeout=2, sources=[ds.Source(url, "file")])
    assert url in str(info.value)
    assert not any((tmp_path / "rparis6k").iterdir())  # no half-written file left


def test_download_knows_official_locations():
    assert ds.DOWNLOADS["rparis6k"][0].url == "http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl"
    assert all(s.kind in ("file", "images", "gt") for sources in ds.DOWNLOADS.values() for s in sources)
    with pytest.raises(ValueError, match="no download known"):
        ds.download_dataset("holidays", "unused")


def test_download_refuses_non_http(tmp_path):
    source = tmp_path / "gnd.pkl"
    source.write_bytes(b"x")
    with pytest.raises(ds.DownloadError, match="only http"):
        ds.download_dataset("rmini", tmp_path, sources=[ds.Source(source.as_uri(), "file")])


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """Serves a folder over HTTP on 127.0.0.1; yields (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_download_round_trip_and_safe_extraction(tmp_path, http_folder):
    served, base = http_folder
    data = _make_revisited(served, [])  # only writes served/rmini/gnd_rmini.pkl
    jpg = io.BytesIO()
    Image.new("RGB", (30, 30), (10, 20, 30)).save(jpg, format="JPEG")
    with tarfile.open(served / "images.tgz", "w:gz") as tar:
        for image in data["imlist"] + ["q0"]:
            _add_bytes(tar, f"paris/landmark/{image}.jpg", jpg.getvalue())
        _add_bytes(tar, "../../escaped.jpg", jpg.getvalue())
        link = tarfile.TarInfo("paris/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    sources = [
        ds.Source(f"{base}/rmini/gnd_rmini.pkl", "file"),
        ds.Source(f"{base}/images.tgz", "images"),
    ]
    root = tmp_path / "data"
    assert ds.download_dataset("rmini", root, sources=sources) == root / "rmini"
    jpgs = sorted(p.name for p in (root / "rmini" / "jpg").iterdir())
    assert jpgs == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "escaped.jpg", "f.jpg", "q0.jpg"]
    assert not (tmp_path / "escaped.jpg").exists() and not (root / "escaped.jpg").exists()
    assert not (root / "rmini" / "jpg" / "link.jpg").exists()
    d = ds.load_dataset("rmini", root)
    assert (len(d.db_ids), d.query_ids) == (6, ["q0"])
    # Done files are skipped: a second call needs no server at all.
    os.remove(served / "images.tgz")
    ds.download_dataset("rmini", root, sources=sources)


def test_download_reports_http_errors(tmp_path, http_folder):
    _, base = http_folder
    with pytest.raises(ds.DownloadError, match="404"):
        ds.download_dataset("rmini", tmp_path, sources=[ds.Source(f"{base}/missing.tgz", "images")])
    assert not (tmp_path / "rmini" / "jpg").exists()


def test_download_refuses_broken_archive(tmp_path, http_folder):
    served, base = http_folder
    (served / "broken.tgz").write_bytes(b"this is not a tar file" * 20)
    with pytest.raises(ds.DownloadError, match="not a valid tar"):
        ds.download_dataset("rmini", tmp_path, sources=[ds.Source(f"{base}/broken.tgz", "images")])
    assert not (tmp_path / "rmini" / ".broken.tgz.done").exists()
