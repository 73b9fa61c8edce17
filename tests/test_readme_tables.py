"""README tables are generated from the results files, and a stale one fails here."""

import json

import pytest

from benchmarks import readme_tables as rt


def test_readme_and_docs_tables_match_their_results_files():
    files = rt.documents()
    assert {p.name for p in files} >= {"README.md", "app.md", "evaluation.md", "scale.md", "runtimes.md"}
    tables = 0
    for path in files:
        text = path.read_text()
        tables += text.count("<!-- table ")
        _, changed = rt.regenerate(text)
        assert changed == [], f"{path.name}: tables out of step with their results files: {changed}; run python -m benchmarks.readme_tables"
    assert tables >= 12  # every generated table is checked, wherever it now lives


def test_relative_links_of_the_readme_and_docs_lead_somewhere():
    import re

    for path in rt.documents():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_render_and_stale_detection(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"tables": {"t": {"columns": ["a", "b"], "rows": [["x", 1.5]]}}}))
    fresh = "<!-- table r.json#t -->\n| a | b |\n|---|---:|\n| x | 1.5 |\n<!-- /table -->\n"
    assert rt.regenerate(fresh, root=tmp_path) == (fresh, [])
    stale = fresh.replace("1.5", "1.4")
    new, changed = rt.regenerate(stale, root=tmp_path)
    assert changed == ["r.json#t"] and new == fresh
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    assert rt.main(["--readme", str(readme), "--check"]) == 1
    assert rt.main(["--readme", str(readme)]) == 0 and readme.read_text() == fresh


def test_missing_table_is_named(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"tables": {}}))
    with pytest.raises(ValueError, match="no table 'x'"):
        rt.regenerate("<!-- table r.json#x -->\n<!-- /table -->\n", root=tmp_path)
    with pytest.raises(ValueError, match="missing"):
        rt.regenerate("<!-- table nope.json -->\n<!-- /table -->\n", root=tmp_path)


def test_the_distractor_table_is_the_one_its_source_results_make():
    """results/distractors.json is written from the evaluation results it names: a source rerun
    without rewriting the table (as once happened) fails here."""
    from benchmarks import distractor_table

    combined = json.loads((rt.ROOT / "results" / "distractors.json").read_text())
    reports = [json.loads((rt.ROOT / source).read_text()) for source in combined["sources"]]
    assert len(reports) == 7
    assert distractor_table.table(reports) == combined["tables"]["distractors"]
