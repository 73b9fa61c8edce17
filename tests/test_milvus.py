"""retrieval.milvus and precompute.publish_milvus: publishing into a collection, searching it, the faults.

Two kinds of Milvus, both started and stopped here:
- "lite": Milvus Lite (`milvus-lite`, pure Python), in this process through a local `.db` path,
  or as its own server process where a test must stop and restart it;
- "server": a real Milvus server, the standalone Milvus 2.3.5 of the `milvus` package on PyPI
  (requirements-dev.txt), started once for the module (about 40 s) and used by two tests: the
  round trip, and a server stopped and started under a search.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from retrieval.milvus import (
    CollectionMismatch, MilvusError, MilvusRows, check_collection, connect, count_rows,
    evaluation_target, publish_rows, safe_uri, stored_digests,
)
from retrieval.search import SearchUnavailable, Searcher, l2_normalize
from tests.appserver.process import free_port
from tests.conftest import require
from tests.milvusserver import StandaloneServer, running, standalone_available

# Recall@10 of the collection's search (IVF_SQ8, candidates scored exactly) against exact search
# that these tests hold it to; measured 1.0 on the seeded data and the Paris rows.
RECALL_FLOOR = 0.95
META = {"network": "tiny", "weights": "none", "pipeline": {"pooling": "gem"}, "dba": None, "whitening": None}


@pytest.fixture(autouse=True)
def no_milvus_environment(monkeypatch):
    for name in ("MILVUS_URI", "MILVUS_TOKEN", "MILVUS_COLLECTION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A real Milvus server for the module: the `milvus` package's standalone Milvus 2.3.5."""
    require(standalone_available(), "the milvus package (requirements-dev.txt) is not installed")
    with running(StandaloneServer(tmp_path_factory.mktemp("milvus-standalone"))) as server:
        yield server


@pytest.fixture(params=["lite", "server"])
def milvus_uri(request, tmp_path):
    """A Milvus to publish into: Milvus Lite in a local .db, or the real server (a fresh collection name)."""
    if request.param == "lite":
        yield str(tmp_path / "test.db")
    else:
        yield request.getfixturevalue("standalone").uri


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) L2-normalised rows in clusters of about 20, as image descriptors are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), d))
    return l2_normalize(centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, d)))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def test_published_collection_searches_like_exact_search(milvus_uri, request):
    db, queries = clustered(3000, 64, 0), clustered(40, 64, 1)
    ids = [f"img/{i:05d}.jpg" for i in range(len(db))]
    client = connect(milvus_uri)
    name = f"roundtrip_{request.node.callspec.id}_{os.getpid()}"
    report = publish_rows(client, name, db, ids, {**META, "dim": 64}, replace=True)
    assert (report.added, report.changed, report.removed, report.record["count"]) == (3000, 0, 0, 3000)
    assert report.record["index_type"] == "IVF_SQ8" and report.record["index_params"] == {"nlist": 64}
    rows = MilvusRows(client, name, ids, dim=64, search_params=report.record["search_params"])
    scores, found = Searcher(rows, backend="milvus", milvus=rows).search(queries, 10)
    exact_scores, truth = Searcher(db, backend="exact").search(queries, 10)
    assert recall(found, truth) >= RECALL_FLOOR
    hit = found == truth
    assert hit.mean() >= RECALL_FLOOR
    np.testing.assert_allclose(scores[hit], exact_scores[hit], atol=1e-6)  # re-scored exactly, not SQ8's
    np.testing.assert_array_equal(rows.take(found[0]), db[found[0]])  # the float32 rows come back as sent
    client.drop_collection(name)


def test_republishing_adds_rewrites_and_removes_exactly(tmp_path):
    db = clustered(500, 32, 2)
    ids = [f"a{i:04d}" for i in range(500)]
    client = connect(str(tmp_path / "incremental.db"))
    name = "incremental"
    publish_rows(client, name, db, ids, {**META, "dim": 32}, replace=True)
    # 40 deleted, 25 new, 3 changed (as DBA changes the rows next to an added image), the rest as they were.
    kept = list(range(40, 500))
    new_db = np.concatenate([db[kept], clustered(25, 32, 3)])
    new_ids = [ids[i] for i in kept] + [f"b{i:04d}" for i in range(25)]
    new_db[:3] = clustered(3, 32, 4)
    report = publish_rows(client, name, new_db, new_ids, {**META, "dim": 32})
    assert (report.added, report.changed, report.removed, report.kept) == (25, 3, 40, 457)
    stored = stored_digests(client, name)
    assert sorted(stored) == sorted(new_ids) and count_rows(client, name) == len(new_ids)  # nothing twice
    rows = MilvusRows(client, name, new_ids, dim=32)
    np.testing.assert_array_equal(rows.take([0, 1, 2, 470]), new_db[[0, 1, 2, 470]])
    again = publish_rows(client, name, new_db, new_ids, {**META, "dim": 32})
    assert (again.added, again.changed, again.removed, again.kept) == (0, 0, 0, len(new_ids))
    client.drop_collection(name)


def test_a_collection_of_other_descriptors_is_refused(tmp_path):
    client = connect(str(tmp_path / "m.db"))
    db = clustered(100, 16, 5)
    meta = {**META, "dim": 16, "count": 100}
    report = publish_rows(client, "c", db, [str(i) for i in range(100)], meta)
    meta["milvus"] = report.record
    assert check_collection(client, "c", meta)["revision"] == report.record["revision"]
    refusals = {
        "dim": ({**meta, "dim": 32}, "dim 16"),
        "network": ({**meta, "network": "efficientnet-b7"}, "network 'tiny'"),
        "count": ({**meta, "count": 99}, "holds 100 rows, the index 99"),
        "revision": ({**meta, "milvus": {**report.record, "revision": "0" * 32}}, "another version"),
        "missing": ({**meta, "milvus": {}}, None),
    }
    for what, (other, words) in refusals.items():
        if what == "missing":
            with pytest.raises(CollectionMismatch, match="no collection 'd'"):
                check_collection(client, "d", other)
            continue
        with pytest.raises(CollectionMismatch, match=words):
            check_collection(client, "c", other)
    with pytest.raises(CollectionMismatch, match="network"):  # publishing other descriptors into it too
        publish_rows(client, "c", db, [str(i) for i in range(100)], {**meta, "network": "efficientnet-b7"})
    assert count_rows(client, "c") == 100


def test_an_unreachable_milvus_is_named_without_credentials():
    port = free_port()
    with pytest.raises(MilvusError) as refused:
        connect(f"http://user:hunter2@127.0.0.1:{port}", token="tok-s3cret")
    message = str(refused.value)
    assert f"cannot reach Milvus at http://127.0.0.1:{port}" in message and "\n" not in message
    assert "hunter2" not in message and "tok-s3cret" not in message
    assert safe_uri("https://a:b@host:19530/x?token=t") == "https://host:19530/x"


def test_a_stopped_server_fails_each_search_then_recovers(standalone):
    # Milvus Lite stopped under a running app: tests/test_app_milvus.py.
    server = standalone
    db = clustered(300, 16, 6)
    ids = [str(i) for i in range(300)]
    client = connect(server.uri)
    name = f"drop_{os.getpid()}"
    publish_rows(client, name, db, ids, {**META, "dim": 16}, replace=True)
    rows = MilvusRows(client, name, ids, dim=16, where=f"Milvus at {server.uri}", timeout=3)
    before = rows.search(db[:2], 5)
    server.stop()
    for _ in range(2):  # every search fails alone, with the one message
        with pytest.raises(SearchUnavailable, match=f"the search service \\(Milvus at {server.uri}\\) is not answering"):
            rows.search(db[:2], 5)
    server.start()
    after = _retry(lambda: rows.search(db[:2], 5))
    np.testing.assert_array_equal(after[1], before[1])
    client.drop_collection(name)


def _retry(fn, tries: int = 40):
    import time

    for _ in range(tries - 1):
        try:
            return fn()
        except SearchUnavailable:
            time.sleep(0.5)
    return fn()


def test_the_paris_index_published_searches_like_exact_search(lite0_index, tmp_path):
    from retrieval.index import load_index

    index = load_index(lite0_index)
    client = connect(str(tmp_path / "paris.db"))
    report = publish_rows(client, "paris", index.features, index.ids, index.meta)
    rows = MilvusRows(client, "paris", index.ids, dim=index.dim, search_params=report.record["search_params"])
    queries = index.features[::8]
    _, found = Searcher(rows, backend="milvus", milvus=rows).search(queries, 20)
    _, truth = Searcher(index.features, backend="exact").search(queries, 20)
    assert recall(found, truth) >= RECALL_FLOOR


def test_publish_command_records_the_collection_and_never_the_uri_or_token(lite0_index, tmp_path, monkeypatch,
                                                                           capsys):
    from precompute import publish_milvus
    from retrieval.index import load_index, read_meta

    folder = tmp_path / "index"
    shutil.copytree(lite0_index, folder)
    uri = str(tmp_path / "milvus" / "paris.db")
    (tmp_path / "milvus").mkdir()
    monkeypatch.setenv("MILVUS_TOKEN", "tok-never-written")
    assert publish_milvus.main(["--index", str(folder), "--milvus", uri, "--collection", "paris"]) == 0
    out = capsys.readouterr()
    meta = read_meta(folder)
    record = meta["milvus"]
    assert record["collection"] == "paris" and record["count"] == 409 and record["dim"] == 1280
    assert record["index_type"] == "IVF_SQ8" and record["index_params"] == {"nlist": 8}
    text = (folder / "index.json").read_text()
    assert "tok-never-written" not in text + out.out + out.err and uri not in text
    load_index(folder)  # index.json changed, every file's checksum still holds
    # Again: nothing to write; the collection is the recorded one when --collection is left out.
    assert publish_milvus.main(["--index", str(folder), "--milvus", uri]) == 0
    assert "0 added, 0 changed, 0 removed, 409 kept" in capsys.readouterr().out
    assert publish_milvus.main(["--index", str(folder)]) == 2  # no URI: says so


def test_the_evaluation_ranks_through_milvus_as_through_exact_search(tmp_path):
    from retrieval.diffusion import DiffusionSettings
    from retrieval.evaluation import rank_queries

    db, queries = clustered(200, 16, 8), clustered(6, 16, 9)
    # The default's kind of diffusion (truncated, self loops, degree power, blend); the candidates are
    # every row, so the candidates' own graph is the stored graph.
    diffusion = DiffusionSettings(k=5, seeds=3, candidates=200, truncate=True, self_loops=True, degree_power=0.25,
                                  blend=0.5)
    with evaluation_target(None, "scratch") as target:
        rows = target.serve(db)
        assert target.serve(db) is rows  # the same rows are published once
        _, found = rows.search(db[:3], 1)
        assert found[:, 0].tolist() == [0, 1, 2] and target.report.record["count"] == 200
        for settings in (None, diffusion):
            milvus, _ = rank_queries(db, queries, backend="milvus", milvus=target, qe=2, diffusion=settings)
            exact, _ = rank_queries(db, queries, backend="exact", qe=2, diffusion=settings)
            np.testing.assert_array_equal(milvus[:, :10], exact[:, :10])
        client = target.client
        assert json.loads(json.dumps(target.report.record))["collection"] == "scratch"
    with pytest.raises(Exception):
        client.has_collection("scratch")  # closed with its temporary Milvus Lite


def test_evaluate_backend_milvus_ranks_the_paris_crops_as_exact_search(rparis_dir, tiny, tmp_path, monkeypatch):
    from precompute import evaluate

    monkeypatch.setattr(evaluate, "network_from_args", lambda args: tiny)
    common = ["--dataset", "rparis6k", "--data-root", str(rparis_dir.parent), "--network", "efficientnet-lite0",
              "--max-side", "64", "--cache-dir", str(tmp_path / "cache")]  # the default DBA, αQE and diffusion
    reports = {}
    for backend in ("exact", "milvus"):  # milvus: no --milvus, so Milvus Lite in a temporary folder
        out = tmp_path / f"{backend}.json"
        assert evaluate.main([*common, "--backend", backend, "--json", str(out)]) == 0
        reports[backend] = json.loads(out.read_text())
    exact, milvus = reports["exact"], reports["milvus"]
    # 397 rows, every one a diffusion candidate: the candidates' own graph is the stored one.
    assert [q["top10"] for q in milvus["per_query"]] == [q["top10"] for q in exact["per_query"]]
    assert milvus["map"] == pytest.approx(exact["map"], abs=1e-6)
    record = milvus["pipeline"]["milvus"]
    assert record["collection"] == "landmark_search_evaluation" and record["count"] == 397
    assert milvus["pipeline"]["backend"] == "milvus" and "milvus" not in exact["pipeline"]
    assert milvus["pipeline"]["diffusion"]["truncate"] and milvus["pipeline"]["qe"]["k"] == 5
    assert ".db" not in json.dumps(record)  # where the scratch Milvus Lite lived is not recorded
