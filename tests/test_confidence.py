"""The "no confident match" answer: the rule, its threshold's scope, the Paris crops and photos of nothing in the collection."""

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.confidence import best_similarities, out_of_domain_images, png_bytes, separating_threshold
from retrieval.confidence import THRESHOLDS, judge, threshold_for
from retrieval.defaults import DEFAULT

pytest_plugins = ["tests.appserver.fixtures"]
ROOT = Path(__file__).resolve().parents[1]
LITE0 = {"network": "efficientnet-lite0", "pipeline": DEFAULT.descriptor.to_meta(), "dba": {"k": 3, "alpha": 3.0}}


def test_the_threshold_holds_only_for_the_space_it_was_measured_in():
    assert threshold_for(LITE0) == 0.68
    assert threshold_for({**LITE0, "network": "efficientnet-b7"}) is None
    assert threshold_for({**LITE0, "dba": None}) is None  # rows without DBA lie elsewhere
    assert threshold_for({**LITE0, "pipeline": {**LITE0["pipeline"], "gem_p": 4.6}}) is None
    assert threshold_for({**LITE0, "whitening": {"dim": 256}}) is None
    assert threshold_for({"network": "efficientnet-lite0", "dba": {"k": 3}}) is None  # no pipeline recorded


def test_the_verdict_is_the_best_similarity_against_the_threshold():
    assert judge(0.68, 0.68).confident is True and judge(0.6799, 0.68).confident is False
    assert judge(0.9, None).confident is None
    assert judge(0.5, 0.68).to_dict() == {"confident": False, "evidence": {
        "similarity": 0.5, "threshold": 0.68, "rule": "best similarity >= threshold"}}
    assert judge(0.12345678, None).to_dict() == {"confident": None, "evidence": {
        "similarity": 0.123457, "threshold": None,
        "rule": "no threshold measured for this index's network, pipeline and DBA"}}


def test_the_separating_threshold_is_the_midpoint_of_the_gap_or_the_best_balance():
    assert separating_threshold([0.8, 0.9], [0.2, 0.6]) == {
        "threshold": 0.7, "gap": 0.2, "in_domain_confident": 1.0, "out_of_domain_not_confident": 1.0}
    # Overlapping: 0.5 calls 2 of 3 inside confident and 2 of 2 outside not: the best mean of the rates.
    assert separating_threshold([0.4, 0.5, 0.9], [0.3, 0.45]) == {
        "threshold": 0.5, "gap": -0.05, "in_domain_confident": 0.6667, "out_of_domain_not_confident": 1.0}
    tops = best_similarities([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], [[1.0, 0.0]])
    assert tops.tolist() == [[1.0, 0.6000000238418579]]


def test_the_code_threshold_is_the_one_the_calibration_measured():
    report = json.loads((ROOT / "results" / "confidence.json").read_text())
    (network, pipeline, dba, value), = THRESHOLDS
    assert report["network"] == network and report["dba"] == dba and report["pipeline"] == pipeline.to_meta()
    assert report["rule"]["threshold"] == value
    assert round(report["evidence"]["best similarity"]["threshold"], 2) == value


def test_the_paris_crops_the_calibration_calls_confident_stay_confident(lite0_index, lite0, rparis_dir):
    from retrieval.datasets import load_dataset
    from retrieval.engine import SearchEngine
    from retrieval.index import load_index

    report = json.loads((ROOT / "results" / "confidence.json").read_text())
    confident = {q["id"] for q in report["in_domain"] if q["best"] >= report["rule"]["threshold"]}
    assert len(confident) == 19
    index = load_index(lite0_index)
    engine = SearchEngine(index, lite0)
    dataset = load_dataset("rparis6k", rparis_dir.parent)
    # The test index also holds the query photos themselves; the calibration searched the 397
    # database photos only, so the verdict is checked on those rows too, not only on the easier whole.
    database = np.array([index.row_of(image_id) for image_id in dataset.db_ids])
    rows = np.asarray(index.features[database], np.float32)
    for i, qid in enumerate(dataset.query_ids):
        if qid in confident:
            crop = dataset.query_image(i)
            result = engine.search(crop, 5)
            assert result.confident is True, (qid, result.confidence)
            assert float(np.max(rows @ engine.embed(crop))) >= report["rule"]["threshold"], qid


OUT_OF_DOMAIN = out_of_domain_images()


@pytest.mark.parametrize("name, image", OUT_OF_DOMAIN, ids=[name for name, _ in OUT_OF_DOMAIN])
def test_photos_of_nothing_in_the_collection_get_no_confident_match_through_the_api(app_url, name, image):
    response = httpx.post(app_url + "api/search?k=5", files={"image": ("q.png", png_bytes(image), "image/png")},
                          timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["confidence"]["confident"] is False, (name, body["confidence"])
    assert body["confidence"]["evidence"]["similarity"] < body["confidence"]["evidence"]["threshold"]
    # The most similar photos still come back, each with its similarity.
    assert len(body["results"]) == 5 and all(-1 <= r["similarity"] <= 1 for r in body["results"])
