"""retrieval.hub over real HTTP with huggingface_hub's real client.

Pushes go to tests/hubserver/upload_server.py, which commits into git repositories; pulls come
from olah (a Hub mirror) serving those same repositories, through a proxy that counts the
requests and can break a download. Nothing here mocks huggingface_hub.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import faiss
import numpy as np
import pytest
import yaml

from retrieval.ann import build_ann
from retrieval.features import Pipeline
from retrieval.hub import HubError, dataset_card, pull_index, pull_index_dir, push_index
from retrieval.index import IndexFormatError, load_index, save_index
from retrieval.search import l2_normalize
from retrieval.whitening import apply_whitening, learn_whitening
from tests.hubserver.fixtures import *  # noqa: F401,F403  (hub_mirrors, upload_server, olah_server, hub_proxy, hf_cache, repo_name)
from tests.hubserver.process import free_port, start

ROOT = Path(__file__).resolve().parents[1]
SOURCE = {"name": "rparis6k-mini", "url": "https://example.org/rparis6k"}
EVALUATION = {"dataset": "rparis6k-mini", "protocol": "medium", "map": 0.4321,
              "command": "python -m precompute.evaluate --index idx --dataset rparis6k"}


@pytest.fixture(autouse=True)
def online_unless_asked(monkeypatch):
    """Every test starts online, whatever HF_HUB_OFFLINE the caller exported; offline tests set it themselves."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def make_index(folder, *, seed=0, n=24, d=8, whiten=False, network="tiny", ann=False, previews=False,
               **extra) -> Path:
    """A small index written by save_index, with a build cache beside it that must never be pushed."""
    rng = np.random.default_rng(seed)
    raw = l2_normalize(rng.standard_normal((n, d)))
    whitening = learn_whitening(raw) if whiten else None
    features = apply_whitening(raw, whitening) if whiten else raw
    ids = [f"paris/img_{seed}_{i:03d}" for i in range(n)]
    thumbnails = [rng.bytes(40 + i) for i in range(n)]
    meta = {"network": network, "weights": f"random-seed-{seed}", "pipeline": Pipeline().to_meta(), **extra}
    structure = build_ann(features, factory="IVF2,SQ8") if ann else None
    out = save_index(folder, features, ids, meta, thumbnails=thumbnails, whitening=whitening, dtype="float32",
                     ann=structure, previews=[rng.bytes(90 + i) for i in range(n)] if previews else None)
    (out / ".cache").mkdir(exist_ok=True)
    (out / ".cache" / "shard-000.npz").write_bytes(b"build cache, not part of the index")
    return out


def assert_same_index(pulled, built_dir):
    built = load_index(built_dir)
    np.testing.assert_array_equal(pulled.features, built.features)
    assert pulled.ids.tolist() == built.ids.tolist()
    assert pulled.meta == built.meta
    assert [pulled.thumbnail(i) for i in pulled.ids] == [built.thumbnail(i) for i in built.ids]
    assert (pulled.ann is None) == (built.ann is None)
    if built.ann is not None:
        assert faiss.serialize_index(pulled.ann.index).tobytes() == faiss.serialize_index(built.ann.index).tobytes()
    if built.whitening is None:
        assert pulled.whitening is None
    else:
        np.testing.assert_array_equal(pulled.whitening.projection, built.whitening.projection)
        np.testing.assert_array_equal(pulled.whitening.mean, built.whitening.mean)


def git_show(mirrors, repo_id, revision, path=None) -> str:
    """What is committed in the test Hub's git repository (ls-tree, or a file's text)."""
    git_dir = mirrors / "datasets" / repo_id
    args = ["show", f"{revision}:{path}"] if path else ["ls-tree", "--name-only", revision]
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True,
                          check=True).stdout


def file_downloads(requests) -> list[str]:
    return [r for r in requests if "/resolve/" in r]


def front_matter(readme: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", readme, flags=re.S)
    assert match, readme[:200]
    return yaml.safe_load(match.group(1))


def test_push_then_pull_gives_the_same_index(tmp_path, upload_server, hub_proxy, hf_cache, hub_mirrors, repo_name):
    built = make_index(tmp_path / "idx", whiten=True, source=SOURCE, evaluation=EVALUATION)
    commit = push_index(built, repo_name, endpoint=upload_server.url)
    assert re.fullmatch(r"[0-9a-f]{40}", commit)

    committed = git_show(hub_mirrors, repo_name, commit).split()
    assert sorted(committed) == sorted([".gitattributes", "README.md", "index.json", "feature_list.npy",
                                        "feature_id.npy", "thumbnails.bin", "thumbnails_offsets.npy",
                                        "whitening_mean.npy", "whitening_projection.npy"])
    # One commit on top of the repo's initial one.
    log = subprocess.run(["git", "--git-dir", str(hub_mirrors / "datasets" / repo_name), "rev-list", "main"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert log[0] == commit and len(log) == 2

    proxy = hub_proxy()
    pulled = pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache, network="tiny")
    assert_same_index(pulled, built)
    assert sorted(p.name for p in pulled.path.iterdir()) == sorted(n for n in committed
                                                                   if n not in (".gitattributes", "README.md"))


def test_an_index_with_an_ann_structure_round_trips(tmp_path, upload_server, hub_proxy, hf_cache, hub_mirrors,
                                                   repo_name):
    built = make_index(tmp_path / "idx", ann=True, n=64)
    commit = push_index(built, repo_name, endpoint=upload_server.url)
    assert "ann.faiss" in git_show(hub_mirrors, repo_name, commit).split()
    pulled = pull_index(repo_name, endpoint=hub_proxy().url, cache_dir=hf_cache, network="tiny")
    assert_same_index(pulled, built)
    assert pulled.meta["ann"]["factory"] == "IVF2,SQ8"


def test_previews_are_pushed_and_pulled_with_the_index(tmp_path, upload_server, hub_proxy, hf_cache, hub_mirrors,
                                                      repo_name):
    built = make_index(tmp_path / "idx", previews=True)
    commit = push_index(built, repo_name, endpoint=upload_server.url)
    assert {"previews.bin", "previews_offsets.npy"} <= set(git_show(hub_mirrors, repo_name, commit).split())
    pulled = pull_index(repo_name, endpoint=hub_proxy().url, cache_dir=hf_cache, network="tiny")
    assert pulled.has_previews
    assert [pulled.preview(i) for i in pulled.ids] == [load_index(built).preview(i) for i in pulled.ids]


def test_dataset_card_states_what_the_index_is(tmp_path, upload_server, hub_mirrors, repo_name):
    built = make_index(tmp_path / "idx", source=SOURCE, evaluation=EVALUATION)
    commit = push_index(built, repo_name, endpoint=upload_server.url, card="Landmarks of Paris.")
    readme = git_show(hub_mirrors, repo_name, commit, "README.md")
    details = front_matter(readme)["retrieval_index"]
    assert (details["network"], details["pooling"], details["images"], details["dim"]) == ("tiny", "gem", 24, 8)
    assert details["source"] == SOURCE
    assert details["evaluation"] == [EVALUATION]
    assert front_matter(readme)["viewer"] is False
    assert "Landmarks of Paris." in readme
    assert "| Measured mAP | 43.21 % on rparis6k-mini medium |" in readme
    assert EVALUATION["command"] in readme


def test_dataset_card_without_source_or_evaluation():
    meta = {"network": "efficientnet-b7", "weights": "imagenet", "pipeline": Pipeline().to_meta(),
            "dim": 2560, "dtype": "float16", "count": 4993, "whitening": None, "format_version": 1}
    readme = dataset_card(meta, "user/paris")
    details = front_matter(readme)["retrieval_index"]
    assert "source" not in details and "evaluation" not in details
    assert details["images"] == 4993 and details["dim"] == 2560
    assert front_matter(readme)["size_categories"] == ["1K<n<10K"]
    assert "| Source collection | not recorded |" in readme
    assert "| Measured mAP | not measured |" in readme


def test_pinned_revision_keeps_its_files_after_a_newer_push(tmp_path, upload_server, hub_proxy, hf_cache,
                                                            hub_mirrors, repo_name):
    first = make_index(tmp_path / "first", seed=1, whiten=True)
    second = make_index(tmp_path / "second", seed=2)
    first_commit = push_index(first, repo_name, endpoint=upload_server.url)
    second_commit = push_index(second, repo_name, endpoint=upload_server.url, tag="v2")
    assert first_commit != second_commit
    # The newer index has no whitening: its push removed the older arrays from the repo.
    assert "whitening_mean.npy" not in git_show(hub_mirrors, repo_name, "main")

    proxy = hub_proxy()
    assert_same_index(pull_index(repo_name, revision=first_commit, endpoint=proxy.url, cache_dir=hf_cache), first)
    assert_same_index(pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache), second)
    assert_same_index(pull_index(repo_name, revision="v2", endpoint=proxy.url, cache_dir=hf_cache), second)


def test_second_pull_downloads_nothing_and_works_offline(tmp_path, upload_server, hub_proxy, hf_cache,
                                                         monkeypatch, repo_name):
    built = make_index(tmp_path / "idx")
    commit = push_index(built, repo_name, endpoint=upload_server.url)
    proxy = hub_proxy()

    pull_index(repo_name, revision=commit, endpoint=proxy.url, cache_dir=hf_cache)
    first = proxy.requests()
    assert len(file_downloads(first)) >= 5  # the five index files came over HTTP

    assert_same_index(pull_index(repo_name, revision=commit, endpoint=proxy.url, cache_dir=hf_cache), built)
    assert proxy.requests() == first  # a pinned commit: not one request

    pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache)
    pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache)
    branch_requests = proxy.requests()[len(first):]
    # A branch may move, so each pull asks where it points, and downloads nothing.
    assert branch_requests == [f"GET /api/datasets/{repo_name}/revision/main"] * 2

    proxy.stop()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert_same_index(pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache), built)
    assert_same_index(pull_index(repo_name, revision=commit, endpoint=proxy.url, cache_dir=hf_cache), built)


def test_cached_index_survives_the_hub_going_down(tmp_path, upload_server, hub_proxy, hf_cache, repo_name):
    built = make_index(tmp_path / "idx")
    push_index(built, repo_name, endpoint=upload_server.url)
    proxy = hub_proxy()
    pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache)
    proxy.stop()
    assert_same_index(pull_index(repo_name, endpoint=proxy.url, cache_dir=hf_cache), built)


def test_missing_repo(hub_proxy, hf_cache):
    with pytest.raises(HubError, match=r"repository 'tester/does-not-exist' was not found"):
        pull_index("tester/does-not-exist", endpoint=hub_proxy().url, cache_dir=hf_cache)


@pytest.mark.parametrize("revision", ["no-such-branch", "0123456789abcdef0123456789abcdef01234567"])
def test_missing_revision(revision, tmp_path, upload_server, hub_proxy, hf_cache, repo_name):
    push_index(make_index(tmp_path / "idx"), repo_name, endpoint=upload_server.url)
    with pytest.raises(HubError, match=f"revision '{revision}' does not exist in dataset '{repo_name}'"):
        pull_index(repo_name, revision=revision, endpoint=hub_proxy().url, cache_dir=hf_cache)


def test_server_down(hf_cache):
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127\.0\.0\.1:\d+ .*not in"):
        pull_index("tester/anything", endpoint=down, cache_dir=hf_cache)
    with pytest.raises(HubError, match=r"push of .* failed .*ConnectError"):
        push_index(make_index(hf_cache.parent / "idx"), "tester/anything", endpoint=down)


def test_offline_without_a_cached_copy(hf_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        pull_index("tester/anything", endpoint="http://127.0.0.1:9", cache_dir=hf_cache)


def test_interrupted_download_is_never_served(tmp_path, upload_server, hub_proxy, hf_cache, monkeypatch,
                                              repo_name):
    built = make_index(tmp_path / "idx")
    push_index(built, repo_name, endpoint=upload_server.url)
    cut = hub_proxy(truncate="feature_list.npy")
    with pytest.raises(HubError, match="download of .* was interrupted"):
        pull_index(repo_name, endpoint=cut.url, cache_dir=hf_cache)
    assert any(r.endswith("/feature_list.npy") for r in file_downloads(cut.requests()))

    # What did arrive stays in the cache, but the incomplete index is refused, also offline...
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="cached copy of .* is incomplete"):
        pull_index(repo_name, endpoint=cut.url, cache_dir=hf_cache)
    # ...and the next pull with a working connection completes it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    healthy = hub_proxy()
    assert_same_index(pull_index(repo_name, endpoint=healthy.url, cache_dir=hf_cache), built)
    assert [r.rsplit("/", 1)[-1] for r in file_downloads(healthy.requests()) if r.startswith("GET")] == [
        "feature_list.npy"]


def test_content_that_does_not_match_is_refused(tmp_path, upload_server, hub_proxy, hf_cache, repo_name):
    built = make_index(tmp_path / "idx")
    push_index(built, repo_name, endpoint=upload_server.url)
    corrupting = hub_proxy(corrupt="feature_list.npy")
    with pytest.raises(HubError, match=r"damaged even after a fresh download: .*feature_list\.npy does not match "
                                       r"its sha256"):
        pull_index(repo_name, endpoint=corrupting.url, cache_dir=hf_cache)
    # The damaged copy was dropped from the cache, so a good connection fetches a good one.
    assert_same_index(pull_index(repo_name, endpoint=hub_proxy().url, cache_dir=hf_cache), built)


def test_a_cached_file_damaged_on_disk_is_downloaded_again(tmp_path, upload_server, hub_proxy, hf_cache,
                                                           repo_name):
    built = make_index(tmp_path / "idx")
    commit = push_index(built, repo_name, endpoint=upload_server.url)
    proxy = hub_proxy()
    pulled_dir = pull_index_dir(repo_name, revision=commit, endpoint=proxy.url, cache_dir=hf_cache)
    blob = (pulled_dir / "thumbnails.bin").resolve()
    data = bytearray(blob.read_bytes())
    data[5] ^= 0xFF
    blob.write_bytes(bytes(data))
    before = len(proxy.requests())
    assert_same_index(pull_index(repo_name, revision=commit, endpoint=proxy.url, cache_dir=hf_cache), built)
    assert any(r.endswith("/thumbnails.bin") for r in file_downloads(proxy.requests()[before:]))


def test_index_of_another_network_is_refused(tmp_path, upload_server, hub_proxy, hf_cache, repo_name):
    push_index(make_index(tmp_path / "idx", network="efficientnet-lite0"), repo_name, endpoint=upload_server.url)
    with pytest.raises(HubError, match=r"built with network 'efficientnet-lite0', but this app embeds queries "
                                       r"with 'efficientnet-b7'"):
        pull_index(repo_name, network="efficientnet-b7", endpoint=hub_proxy().url, cache_dir=hf_cache)


def test_push_refuses_a_folder_that_is_not_an_index(tmp_path, upload_server, repo_name):
    built = make_index(tmp_path / "idx")
    (built / "feature_id.npy").unlink()
    before = len(upload_server.requests())
    with pytest.raises(IndexFormatError, match="feature_id.npy is missing"):
        push_index(built, repo_name, endpoint=upload_server.url)
    assert len(upload_server.requests()) == before  # nothing was sent


def test_push_takes_the_token_from_hf_token(tmp_path, hub_mirrors, hf_cache, monkeypatch, repo_name):
    workdir = tmp_path / "guarded"
    port_file = workdir / "port"
    guarded = start([sys.executable, str(ROOT / "tests" / "hubserver" / "upload_server.py"), "--mirrors",
                     str(hub_mirrors), "--port-file", str(port_file), "--token", "hf_secret"],
                    workdir, port_file=port_file)
    try:
        built = make_index(tmp_path / "idx")
        with pytest.raises(HubError, match=r"not allowed to write .*HTTP 401.*set HF_TOKEN"):
            push_index(built, repo_name, endpoint=guarded.url)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        commit = push_index(built, repo_name, endpoint=guarded.url)
        assert json.loads(git_show(hub_mirrors, repo_name, commit, "index.json")) == load_index(built).meta
    finally:
        guarded.stop()


def test_push_index_command(tmp_path, upload_server, hub_proxy, hf_cache, repo_name):
    built = make_index(tmp_path / "idx")
    # Whatever HF_* the caller exported (HF_HUB_OFFLINE=1, a token, another cache) stays out.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update({"HF_ENDPOINT": upload_server.url, "HF_HOME": str(hf_cache.parent), "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    done = subprocess.run([sys.executable, "-m", "precompute.push_index", str(built), repo_name, "--tag", "v1",
                           "--message", "first index"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    commit = re.search(r"commit ([0-9a-f]{40})", done.stdout).group(1)
    assert_same_index(pull_index(repo_name, revision="v1", endpoint=hub_proxy().url, cache_dir=hf_cache), built)
    assert pull_index(repo_name, revision=commit, endpoint=hub_proxy().url, cache_dir=hf_cache).meta == \
        load_index(built).meta

    failed = subprocess.run([sys.executable, "-m", "precompute.push_index", str(tmp_path / "missing"), repo_name],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "is not an index folder" in failed.stderr
