"""The evaluate command on the real mini RParis with the tiny network: an oracle, the cache, the outputs."""

import json

import numpy as np
import pytest
from PIL import Image

import retrieval.networks
from precompute import evaluate as cmd
from retrieval import evaluation
from precompute.options import DEFAULT_DBA, DEFAULT_QE, rerank_from_args
from retrieval.datasets import load_dataset
from retrieval.evaluate import evaluate_ranks
from retrieval.features import Pipeline, embed_image, extract_features
from retrieval.rerank import alpha_query_expansion, database_augmentation
from retrieval.whitening import apply_whitening, learn_whitening

PIPE = Pipeline(max_side=64)


@pytest.fixture(scope="module")
def dataset(rparis_dir):
    return load_dataset("rparis6k", rparis_dir.parent)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate-cache")


@pytest.fixture(scope="module")
def oracle_features(dataset, tiny):
    """Descriptors computed here, independently of the command: db in batches, queries one by one."""
    db = extract_features(tiny, [dataset.image_path(i) for i in dataset.db_ids], PIPE, batch_size=4)
    queries = np.stack([embed_image(tiny, dataset.query_image(i), PIPE) for i in range(len(dataset.query_ids))])
    return db, queries


def oracle_ranks(db, queries):
    return np.argsort(-(queries @ db.T), axis=1, kind="stable")


def assert_matches(report, ranks, dataset):
    metrics = evaluate_ranks(ranks, dataset.gnd, dataset.kind)
    for p, m in metrics.items():
        assert report["map"][p] == pytest.approx(m["map"], abs=1e-6)
        assert report["report_map"][p] == pytest.approx(m["report_map"], abs=1e-6)
        assert report["mp_at_k"][p]["5"] == pytest.approx(m["mp_at"][5], abs=1e-6)
        assert report["queries"][p] == m["n_queries"]
    assert [q["top10"] for q in report["per_query"]] == [[dataset.db_ids[r] for r in row[:10]] for row in ranks]


def test_results_equal_evaluate_ranks_on_independent_ranks(dataset, tiny, cache, oracle_features):
    db, queries = oracle_features
    ev = evaluation.run_evaluation(dataset, tiny, PIPE, backend="exact", cache_dir=cache)
    assert_matches(ev.report, oracle_ranks(db, queries), dataset)
    assert ev.report["queries"] == {"easy": 17, "medium": 19, "hard": 19}
    assert ev.report["database_size"] == 397


def test_kdtree_gives_the_same_numbers_as_exact(dataset, tiny, cache):
    exact = evaluation.run_evaluation(dataset, tiny, PIPE, backend="exact", cache_dir=cache).report
    kd = evaluation.run_evaluation(dataset, tiny, PIPE, backend="kdtree", cache_dir=cache).report
    for p in exact["map"]:
        assert kd["map"][p] == pytest.approx(exact["map"][p], abs=1e-4)


def test_whitening_dba_and_qe_follow_the_recipe(dataset, tiny, cache, oracle_features):
    db, queries = oracle_features
    w = learn_whitening(db, shrinkage=0.8)
    wdb = database_augmentation(apply_whitening(db, w), k=2)
    wq = apply_whitening(queries, w)
    first = oracle_ranks(wdb, wq)
    ranks = oracle_ranks(wdb, alpha_query_expansion(wq, wdb, first, k=3))
    ev = evaluation.run_evaluation(dataset, tiny, PIPE, backend="exact", whiten=True, whiten_shrinkage=0.8,
                            qe=3, dba=2, cache_dir=cache)
    assert_matches(ev.report, ranks, dataset)
    meta = ev.report["pipeline"]
    assert meta["whitening"]["shrinkage"] == 0.8 and "unsupervised" in meta["whitening"]["learned_on"]
    assert meta["qe"] == {"k": 3, "alpha": 3.0} and meta["dba"] == {"k": 2, "alpha": 3.0}


def test_cache_skips_the_network_until_the_pipeline_changes(dataset, tiny, tmp_path, monkeypatch):
    calls = []
    real_forward = retrieval.networks.forward

    def counting_forward(network, batch):
        calls.append(len(batch))
        return real_forward(network, batch)

    monkeypatch.setattr(retrieval.networks, "forward", counting_forward)
    first = evaluation.run_evaluation(dataset, tiny, PIPE, cache_dir=tmp_path)
    assert sum(calls) == 397 + 19 + 1  # database, queries one by one, one warm-up query
    assert len(list(tmp_path.glob("rparis6k-tiny-8-seed0-*.npz"))) == 1
    calls.clear()
    second = evaluation.run_evaluation(dataset, tiny, PIPE, cache_dir=tmp_path, whiten=True, qe=2, backend="exact")
    assert calls == []
    assert second.report["seconds_per_query"]["embed"] == first.report["seconds_per_query"]["embed"]
    assert second.report["seconds_per_query"]["embed_from_cache"] is True
    evaluation.run_evaluation(dataset, tiny, Pipeline(max_side=96), cache_dir=tmp_path)
    assert sum(calls) == 397 + 19 + 1
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob(".*"))


def test_a_damaged_or_foreign_cache_file_is_recomputed(dataset, tiny, tmp_path):
    key = evaluation.cache_key(dataset, tiny, PIPE)
    path = evaluation.cache_path(tmp_path, key)
    path.write_bytes(b"not an npz")
    found = evaluation.dataset_descriptors(dataset, tiny, PIPE, cache_dir=tmp_path)
    assert found.cached is False and found.db.shape == (397, 8)
    again = evaluation.dataset_descriptors(dataset, tiny, PIPE, cache_dir=tmp_path)
    assert again.cached is True
    np.testing.assert_array_equal(again.db, found.db)


def test_main_writes_json_and_plot(dataset, tiny, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cmd, "network_from_args", lambda args: tiny)
    out_json, out_png = tmp_path / "r" / "eval.json", tmp_path / "eval.png"
    rc = cmd.main([
        "--dataset", "rparis6k", "--data-root", str(dataset.root), "--network", "efficientnet-lite0",
        "--max-side", "64", "--cache-dir", str(cache), "--dba", "1", "--qe", "0",
        "--json", str(out_json), "--plot", str(out_png),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "evaluated on what is present: 397 of 6322 database images, 19 of 70 queries" in printed
    assert "| medium | 19 | 397 |" in printed
    report = json.loads(out_json.read_text())
    assert {"dataset", "database_size", "queries", "map", "mp_at_k", "pipeline", "seconds_per_query",
            "per_query"} <= set(report)
    assert report["dataset"] == "rparis6k" and set(report["map"]) == {"easy", "medium", "hard"}
    assert all(0 <= v <= 1 for v in report["map"].values())
    assert all(0 <= v <= 1 for m in report["mp_at_k"].values() for v in m.values())
    from retrieval.defaults import DEFAULT

    want = Pipeline(max_side=64, bucket=DEFAULT.descriptor.bucket)  # the command's default buckets
    assert report["pipeline"]["pipeline"] == want.to_meta() and report["pipeline"]["backend"] == "kdtree"
    assert report["pipeline"]["dba"] == {"k": 1, "alpha": 3.0} and report["pipeline"]["qe"] is None
    t = report["seconds_per_query"]
    assert t["embed"] > 0 and t["search"] > 0 and t["total"] >= t["search"]
    assert len(report["per_query"]) == 19
    aps = [q["ap"]["medium"] for q in report["per_query"]]
    assert np.mean(aps) == pytest.approx(report["map"]["medium"], abs=1e-5)
    assert all(len(q["top10"]) == 10 and set(q["top10"]) <= set(dataset.db_ids) for q in report["per_query"])
    with Image.open(out_png) as png:
        assert png.format == "PNG" and png.width >= 800 and png.height >= 600


def test_report_preset_is_the_reports_pipeline(dataset, tiny, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(cmd, "network_from_args", lambda args: tiny)
    out = tmp_path / "report.json"
    rc = cmd.main(["--dataset", "rparis6k", "--data-root", str(dataset.root), "--preset", "report",
                   "--cache-dir", str(cache), "--json", str(out)])
    assert rc == 0
    meta = json.loads(out.read_text())["pipeline"]
    pipe = meta["pipeline"]
    assert (pipe["pooling"], pipe["squash"], pipe["max_side"]) == ("flatten", 224, None)
    assert meta["qe"] is None and meta["dba"] is None and meta["backend"] == "kdtree"


def test_default_reranking_is_the_measured_best():
    args = cmd.parse_args(["--dataset", "rparis6k", "--data-root", "."])
    assert rerank_from_args(args) == (DEFAULT_QE, DEFAULT_DBA) == (5, 3)
    args = cmd.parse_args(["--dataset", "rparis6k", "--data-root", ".", "--preset", "report"])
    assert rerank_from_args(args) == (0, 0)
    args = cmd.parse_args(["--dataset", "rparis6k", "--data-root", ".", "--preset", "report", "--qe", "2"])
    assert rerank_from_args(args) == (2, 0)


def test_bad_inputs_are_refused(dataset, tmp_path, capsys):
    assert cmd.main(["--dataset", "nope", "--data-root", str(tmp_path)]) == 2
    assert "no ground truth for nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmd.parse_args(["--dataset", "rparis6k", "--data-root", ".", "--qe", "-1"])
    assert cmd.main(["--dataset", "rparis6k", "--data-root", str(dataset.root), "--squash", "64",
                     "--max-side", "64"]) == 2
    assert "not both" in capsys.readouterr().err
