"""The Ray engine against the default engine, on a local Ray with 2 CPUs shared by every test here."""

import functools
import os

import numpy as np
import pytest
import ray
from PIL import Image

from precompute import build_index as build_cmd
from retrieval.build import build_index
from retrieval.build_ray import build_index_ray
from retrieval.features import Pipeline
from retrieval.index import load_index
from retrieval.networks import tiny_network

PIPE = Pipeline(max_side=64, bucket="pad")
MAKE_TINY = functools.partial(tiny_network, seed=0, channels=8)
SIZES = [(96, 64), (64, 96), (80, 80), (120, 60), (90, 70), (50, 100)]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # One start for the module: starting Ray costs seconds.
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def save_photo(path, seed, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 photos in 6 shapes, two of them in a subfolder, and three bad files."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    for i in range(12):
        save_photo(root / f"{'sub/' if i % 5 == 0 else ''}p{i:02d}.jpg", i, SIZES[i % len(SIZES)])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    good = (root / "p01.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture(scope="module")
def both(photos, tmp_path_factory, tiny):
    """The default engine's index and the Ray engine's, with their reports and log lines."""
    out = tmp_path_factory.mktemp("indexes")
    logs = {"local": [], "ray": []}
    local = build_index(photos, out / "local", tiny, PIPE, batch_size=4, dtype="float32", dba=2, qe=3,
                        log=logs["local"].append)
    on_ray = build_index_ray(photos, out / "ray", MAKE_TINY, PIPE, batch_size=4, dtype="float32", dba=2, qe=3,
                             log=logs["ray"].append)
    return {"local": (local, load_index(out / "local")), "ray": (on_ray, load_index(out / "ray")), "logs": logs}


def test_ray_index_equals_the_default_engines(both):
    (_, local), (report, on_ray) = both["local"], both["ray"]
    assert on_ray.ids.tolist() == local.ids.tolist() and len(local) == 12
    cos = np.sum(on_ray.features * local.features, axis=1)
    assert cos.min() >= 0.999
    np.testing.assert_allclose(on_ray.features, local.features, atol=1e-5)
    assert on_ray.meta["pipeline"] == local.meta["pipeline"] == PIPE.to_meta()
    assert on_ray.meta["dba"] == local.meta["dba"] and on_ray.meta["query_expansion"] == local.meta["query_expansion"]
    assert all(on_ray.thumbnail(i) == local.thumbnail(i) for i in local.ids)
    assert (report.count, report.embedded, report.reused) == (12, 12, 0)


def test_bad_files_skipped_with_the_same_messages(both):
    (local, _), (on_ray, _) = both["local"], both["ray"]
    assert sorted(on_ray.skipped) == sorted(local.skipped)
    assert sorted(r for r, _ in on_ray.skipped) == ["text.jpg", "trunc.jpg", "zero.jpg"]
    assert sorted(both["logs"]["ray"]) == sorted(both["logs"]["local"])


def test_stopped_job_resumes_from_its_shards(photos, both, tmp_path):
    out = tmp_path / "idx"
    first_log = []

    def stop(done, total):
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index_ray(photos, out, MAKE_TINY, PIPE, batch_size=4, shard_size=4, progress=stop,
                        log=first_log.append)
    assert not (out / "index.json").exists()  # no half index
    cached = 7 - len(first_log)  # the results seen before the stop, less the bad files among them
    shards = list((out / ".cache").glob("shard-*.npz"))
    assert sum(len(np.load(p)["relpaths"]) for p in shards) == cached >= 4
    report = build_index_ray(photos, out, MAKE_TINY, PIPE, batch_size=4, dtype="float32", dba=2, qe=3)
    # Every image embedded exactly once over the two runs: the rerun embeds only what no shard holds.
    assert (report.reused, report.embedded, report.count) == (cached, 12 - cached, 12)
    index, (_, want) = load_index(out), both["local"]
    assert index.ids.tolist() == want.ids.tolist()
    np.testing.assert_allclose(index.features, want.features, atol=1e-5)
    again = build_index_ray(photos, out, MAKE_TINY, PIPE, dtype="float32")
    assert (again.embedded, again.reused) == (0, 12)


class DiesOnce:
    """A network factory whose network kills its process at its first forward, once per marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __call__(self):
        network = MAKE_TINY()
        run = network._run  # what forward() calls, whichever runtime runs the network

        def dying(batch):
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)  # as a worker killed by the OOM killer or a lost node
            return run(batch)

        object.__setattr__(network, "_run", dying)
        return network


def test_a_dead_worker_is_retried_and_the_job_completes(photos, both, tmp_path):
    marker = tmp_path / "died"
    report = build_index_ray(photos, tmp_path / "idx", DiesOnce(marker), PIPE, batch_size=4, dtype="float32")
    assert marker.exists()  # an actor did die mid-job
    assert (report.count, report.embedded) == (12, 12)
    raw = build_index(photos, tmp_path / "plain", MAKE_TINY(), PIPE, dtype="float32")
    assert raw.count == 12
    np.testing.assert_allclose(load_index(tmp_path / "idx").features, load_index(tmp_path / "plain").features,
                               atol=1e-5)


def test_command_hands_the_ray_engine_its_options(monkeypatch, tmp_path, capsys):
    import retrieval.build_ray as build_ray
    from retrieval.build import BuildReport

    calls = {}

    def fake(images, out, make_network, pipeline, **kw):
        calls.update(images=images, make_network=make_network, pipeline=pipeline, **kw)
        return BuildReport(count=3, embedded=2, reused=1, skipped=[("x.jpg", "bad")])

    monkeypatch.setattr(build_ray, "build_index_ray", fake)
    rc = build_cmd.main(["--images", str(tmp_path), "--out", str(tmp_path / "o"), "--network", "efficientnet-lite0",
                         "--engine", "ray", "--address", "auto", "--actors", "3", "--batch-size", "32",
                         "--bucket", "pad", "--dba", "0", "--runtime", "onnxruntime", "--runtime-cache",
                         str(tmp_path / "nets")])
    assert rc == 0
    assert (calls["address"], calls["actors"], calls["batch_size"], calls["dba"]) == ("auto", 3, 32, 0)
    assert calls["pipeline"].bucket == "pad" and calls["make_network"].args == ("efficientnet-lite0",)
    # The actors build the network with the runtime, precision and cache the command was given.
    assert calls["make_network"].keywords == {"weights": "imagenet", "runtime": "onnxruntime", "precision": "float32",
                                              "cache_dir": tmp_path / "nets"}
    assert (calls["preview_side"], calls["max_previews"]) == (512, build_cmd.PREVIEW_MAX_IMAGES)
    assert "3 images (2 embedded, 1 reused, 0 removed, 1 skipped)" in capsys.readouterr().out


def test_ray_stays_out_of_the_library_until_the_engine_is_chosen():
    import subprocess
    import sys

    code = ("import sys, retrieval.build, retrieval.build_ray, retrieval.engine, precompute.build_index; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"


def test_ray_and_local_builds_of_real_photos_agree_row_by_row(lite0, rparis_dir, tmp_path):
    """30 Paris photos (1024 px JPEGs, which the decoder drafts) with Lite0's real weights and the default
    recipe: the test that would have caught the Ray engine's 118 rows below cosine 0.999."""
    from retrieval.defaults import DEFAULT
    from retrieval.networks import build_network

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((rparis_dir / "jpg").glob("*.jpg"))[::14][:30]:
        (photos / path.name).symlink_to(path)
    recipe = dict(dba=DEFAULT.dba, qe=DEFAULT.qe, alpha=DEFAULT.alpha, diffusion=DEFAULT.diffusion, dtype="float32")
    build_index(photos, tmp_path / "local", lite0, DEFAULT.descriptor, **recipe)
    make = functools.partial(build_network, "efficientnet-lite0", weights="imagenet", runtime=lite0.runtime)
    build_index_ray(photos, tmp_path / "ray", make, DEFAULT.descriptor, batch_size=8, **recipe)
    local, on_ray = load_index(tmp_path / "local"), load_index(tmp_path / "ray")
    assert len(local) == 30 and list(local.ids) == list(on_ray.ids)
    cosines = np.einsum("ij,ij->i", local.features, on_ray.features)
    assert cosines.min() >= 0.9999, (local.ids[cosines.argmin()], cosines.min())
    np.testing.assert_allclose(local.self_similarity, on_ray.self_similarity, atol=1e-4)
    assert local.meta["preview_side"] == on_ray.meta["preview_side"] == 512
    for image_id in local.ids[:3]:
        assert local.preview(str(image_id)) == on_ray.preview(str(image_id))


def test_from_sort_from_files_the_rows_are_sorted_by_shape_and_the_index_is_the_same(photos, both, tmp_path,
                                                                                   monkeypatch):
    import retrieval.build_ray as build_ray

    monkeypatch.setattr(build_ray, "SORT_FROM", 1)
    sorted_calls = []
    real_sort = ray.data.Dataset.sort
    monkeypatch.setattr(ray.data.Dataset, "sort", lambda self, key, **kw: sorted_calls.append(key) or real_sort(self, key, **kw))
    build_index_ray(photos, tmp_path / "sorted", MAKE_TINY, PIPE, batch_size=4, dtype="float32", dba=2, qe=3)
    assert sorted_calls == ["shape"]
    local = both["local"][1]
    on_ray = load_index(tmp_path / "sorted")
    assert list(on_ray.ids) == list(local.ids)
    np.testing.assert_allclose(on_ray.features, local.features, atol=1e-5)
