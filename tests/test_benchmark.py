import json
import math

import pytest

from benchmarks import benchmark
from benchmarks.benchmark import compute_targets, estimate_seconds, memory_skip, run_part, search_need_bytes

GB = 1e9


def test_memory_skip_names_the_need_and_the_limit():
    want = "skipped: needs 31 GB (24 GB machine)"
    assert memory_skip(31 * GB, total_bytes=24 * GB, available_bytes=20 * GB) == want
    assert memory_skip(18 * GB, total_bytes=24 * GB, available_bytes=20 * GB) == (
        "skipped: needs 18.0 GB, 20.0 GB available now")
    assert memory_skip(10 * GB, total_bytes=24 * GB, available_bytes=20 * GB) is None


def test_search_need_counts_the_kdtree_float64_copy():
    # 1M x 2560: float32 rows (10.24 GB) + float64 tree (20.48 GB) + the finiteness check (2.56 GB) + 0.3 GB.
    assert search_need_bytes(1_000_000, 2560, "kdtree", "float32") == pytest.approx(33.58 * GB)
    # float16 rows (5.12 GB) + one float32 block of 65,536 rows + 0.3 GB.
    want = 5.12 * GB + 65536 * 2560 * 4 + 0.3 * GB
    assert search_need_bytes(1_000_000, 2560, "exact", "float16") == pytest.approx(want)


def test_estimate_scales_linearly_from_the_last_cell():
    assert estimate_seconds({"n": 10_000, "wall_s": 3.0}, 100_000) == pytest.approx(30.0)
    assert estimate_seconds({"skipped": "skipped: over time budget"}, 100_000) == 0.0
    assert estimate_seconds(None, 5) == 0.0


def test_run_part_reports_a_failure_instead_of_raising():
    result = run_part("search", {"d": 8}, timeout_s=120)
    assert result["skipped"].startswith("failed: KeyError")


def _results():
    query = {"median_ms": 500.0, "p95_ms": 600.0}
    return {
        "search": [
            {"n": 5063, "d": 125440, "backend": "kdtree", "storage": "float32", "report": True, "query": query},
            {"n": 5063, "d": 2560, "backend": "exact", "storage": "float32", "report": False,
             "query": {"median_ms": 2.0, "p95_ms": 3.0}, "query_1thread": {"median_ms": 4.0, "p95_ms": 5.0}},
            {"n": 5063, "d": 2560, "backend": "kdtree", "storage": "float32", "report": False,
             "query": {"median_ms": 25.0, "p95_ms": 30.0}},
            {"n": 1000, "d": 2560, "backend": "exact", "storage": "float32", "report": False,
             "query": {"median_ms": 1.0, "p95_ms": 1.0}},
            {"n": 5063, "d": 2560, "backend": "kdtree", "storage": "float16", "report": False, "skipped": "as float32"},
        ],
        "latency": [
            {"network": "efficientnet-lite0", "pipeline": "report", "max_side": None, "total": {"median_ms": 300.0}},
            {"network": "efficientnet-lite0", "pipeline": "default", "max_side": 384, "total": {"median_ms": 50.0}},
            {"network": "efficientnet-b7", "pipeline": "report", "skipped": "skipped: needs 31 GB (24 GB machine)"},
            {"network": "efficientnet-b7", "pipeline": "default", "max_side": 384, "total": {"median_ms": 900.0}},
        ],
        "index_size": {"n": 5063, "dim": 2560, "dtype": "float16", "report_dim": 125440,
                       "report_bytes": 2_540_000_000, "ours_bytes": 26_400_000},
        "build": [{"network": "efficientnet-lite0", "build_images_per_s": 30.0, "forward_images_per_s": 40.0}],
    }


def test_targets_are_hand_computed_ratios():
    by_goal = {}
    for t in compute_targets(_results()):
        by_goal.setdefault(t["goal"], []).append(t)
    search = by_goal[100.0]
    # Only N=5063, never a skipped row; the exact row twice (default and one BLAS thread).
    assert [(t["ratio"], t["pass"]) for t in search] == [(250.0, True), (125.0, True), (20.0, False)]
    assert "ours exact float32" in search[0]["target"] and "1 BLAS thread" in search[1]["target"]
    assert search[2]["shortfall"] == pytest.approx(5.0)
    (e2e,) = by_goal[5.0]  # B7 has no report figure, so no end-to-end target for it
    assert "efficientnet-lite0" in e2e["target"] and e2e["ratio"] == pytest.approx(6.0) and e2e["pass"]
    (size,) = by_goal[40.0]
    assert size["ratio"] == pytest.approx(2_540_000_000 / 26_400_000) and size["pass"]
    (build,) = by_goal[0.85]
    assert build["ratio"] == pytest.approx(0.75) and not build["pass"]
    assert build["shortfall"] == pytest.approx(0.85 / 0.75)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_timing(s):
    assert s["n"] >= 1 and _positive(s["median_ms"]) and s["p95_ms"] >= s["median_ms"]


def test_quick_benchmark_reports_every_section_with_sane_numbers(tmp_path, capsys, rparis_dir):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert benchmark.main(["--quick", "--json", str(out_json), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    results = json.loads(out_json.read_text())
    for title in ("## 1. Query latency", "## 2. Search alone", "## 3. Index build", "## 4. Index size",
                  "## 5. Peak memory", "## Targets"):
        assert title in text
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A quick run says, above the verdicts, that its sizes are not the targets'.
    assert results["smoke"] is True
    assert text.index("Smoke run (--quick)") < text.index("## Targets") < text.index("Smoke run: measured")

    assert {r["pipeline"] for r in results["latency"]} == {"report", "default"}
    for r in results["latency"]:
        for key in ("total", "embed", "search"):
            _check_timing(r[key])
        assert r["total"]["median_ms"] >= r["search"]["median_ms"] and _positive(r["peak_rss_bytes"])
    measured = [r for r in results["search"] if "skipped" not in r]
    assert any(r["report"] for r in measured) and any(r["backend"] == "exact" for r in measured)
    for r in results["search"]:
        if "skipped" in r:
            assert r["skipped"]  # a reason, never a silent gap
            continue
        _check_timing(r["query"])
        if r["backend"] == "exact":
            _check_timing(r["query_1thread"])
        assert r["build_s"] >= 0 and _positive(r["search_ram_bytes"]) and _positive(r["peak_rss_bytes"])
    (build,) = results["build"]
    assert build["images"] > 0 and _positive(build["forward_images_per_s"]) and _positive(build["build_images_per_s"])
    assert build["ratio"] == pytest.approx(build["build_images_per_s"] / build["forward_mix_images_per_s"])
    assert build["ratio_common_shape"] == pytest.approx(build["build_images_per_s"] / build["forward_images_per_s"])
    assert 1 <= build["mean_batch"] <= build["batch_size"]
    size = results["index_size"]
    assert size["ours_bytes"] == size["file_bytes"]["feature_list.npy"] + size["file_bytes"]["feature_id.npy"]
    assert size["file_bytes"]["feature_list.npy"] == pytest.approx(size["n"] * size["dim"] * 2, abs=200)
    for r in results["coldstart"]:
        parts = [r[k] for k in ("import_s", "load_index_s", "network_s", "tree_s", "warm_up_s")]
        assert all(_positive(p) for p in parts) and r["total_s"] >= sum(parts) * 0.999 and r["rows"] == 6000

    assert len(results["targets"]) >= 4
    for t in results["targets"]:
        want = t["ours"] / t["baseline"] if t["higher_is_better"] else t["baseline"] / t["ours"]
        assert t["ratio"] == pytest.approx(want) and t["pass"] == (t["ratio"] >= t["goal"])
        assert ("PASS" if t["pass"] else "MISS") in text
