"""The mutation report (tests.mutation) over hand-made results: no mutmut run needed."""

from __future__ import annotations

import json

import pytest

from tests import mutation


def result(killed, survived, equivalent, *, no_tests=0, survivors=(), untested=None, not_tried=0):
    effective = killed + survived
    return {"source": "retrieval/x.py", "tests": ["tests/test_x.py"], "mutants": killed + survived + equivalent,
            "killed": killed, "survived": survived, "equivalent": equivalent, "not_tried": not_tried,
            "score": round(killed / effective, 4) if effective else None, "no_tests": no_tests,
            "untested_functions": untested or {}, "survivors": list(survivors)}


def test_report_counts_untested_mutants_as_survivors_and_lists_them_per_function(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "RESULTS", tmp_path / "mutation.json")
    monkeypatch.setattr(mutation, "SURVIVORS_DOC", tmp_path / "survivors.md")
    monkeypatch.setattr(mutation, "_mutmut_version", lambda: "3.8.1")
    survivor = {"name": "webapp.queries.x_run_query__mutmut_3", "status": "survived", "diff": "- a < b\n+ a <= b",
                "equivalent": False, "note": ""}
    modules = {
        "queries": {**result(6, 4, 1, no_tests=3, survivors=[survivor], untested={"decode_query": 2, "check_k": 1}),
                "ran": "2026-12-02"},
        "features": result(0, 0, 0, not_tried=7),  # a run stopped before any mutant was tried: no score
    }
    data = mutation.write_results(modules, seconds={"queries": 1.0})
    rows = {row[0]: row for row in data["tables"]["mutation"]["rows"]}
    assert rows["`queries`"] == ["`queries`", 6, 4, 3, 1, 0, "60.0%", "80% overall", "2026-12-02"]
    assert rows["`features`"][5:] == [7, "no result", "80% overall", "before 2026-12"]
    assert rows["`search`"][-3] == "not run"
    assert rows["**all core modules**"] == ["**all core modules**", 6, 4, 3, 1, 7, "**60.0%**", "80%", ""]
    assert data["overall"] == {"killed": 6, "survived": 4, "equivalent": 1, "score": 0.6}
    assert json.loads((tmp_path / "mutation.json").read_text()) == data
    doc = (tmp_path / "survivors.md").read_text()
    assert "- `decode_query`: 2 mutants that no test of `queries` reaches (no tests)." in doc
    assert "- `webapp.queries.x_run_query__mutmut_3` (survived): `- a < b` / `+ a <= b`. Not reviewed yet." in doc
    assert "## `features` (retrieval/x.py): 0 killed, 0 survived, 0 equivalent\n\nNo survivors." in doc


def test_stale_notes_are_the_noted_mutants_now_killed_or_gone(monkeypatch):
    from tests import mutation_notes

    monkeypatch.setattr(mutation_notes, "EQUIVALENT", {"retrieval.rows.x_a__mutmut_1": "same",
                                                       "retrieval.rows.x_a__mutmut_2": "same",
                                                       "retrieval.search.x_b__mutmut_1": "other module"})
    monkeypatch.setattr(mutation_notes, "NOTES", {"retrieval.rows.x_a__mutmut_3": "why", "retrieval.rows.x_c__mutmut_9": "gone"})
    statuses = {"retrieval.rows.x_a__mutmut_1": "survived", "retrieval.rows.x_a__mutmut_2": "killed",
                "retrieval.rows.x_a__mutmut_3": "timeout"}
    assert mutation.stale_notes("rows", statuses) == ["retrieval.rows.x_a__mutmut_2", "retrieval.rows.x_a__mutmut_3",
                                                      "retrieval.rows.x_c__mutmut_9"]


def test_a_mutant_name_gives_its_function_or_method():
    assert mutation._function_of("app.x_search__mutmut_3") == "search"
    assert mutation._function_of("retrieval.search.xǁSearcherǁsearch__mutmut_35") == "search"
    assert mutation._function_of("retrieval.rows.x__read_exactly__mutmut_12") == "_read_exactly"


def test_a_note_written_for_another_change_under_the_same_name_is_not_applied(monkeypatch):
    from tests import mutation_notes

    name = "retrieval.rows.x_a__mutmut_1"
    monkeypatch.setattr(mutation_notes, "EQUIVALENT", {name: "same", "retrieval.rows.x_a__mutmut_2": "same too"})
    monkeypatch.setattr(mutation_notes, "NOTES", {})
    monkeypatch.setattr(mutation, "read_statuses", lambda module: {name: "survived", "retrieval.rows.x_a__mutmut_2": "survived",
                                                                   "retrieval.rows.x_a__mutmut_3": "killed"})
    diffs = {name: "- n = 1\n+ n = 2", "retrieval.rows.x_a__mutmut_2": "- a\n+ b"}
    monkeypatch.setattr(mutation, "mutant_diffs", lambda module, mutants: {m: diffs[m] for m in mutants})
    first = mutation.module_result("rows", None)
    assert (first["killed"], first["survived"], first["equivalent"], first["score"]) == (1, 0, 2, 1.0)
    assert [s["note_diff"] for s in first["survivors"]] == [diffs[name], "- a\n+ b"]
    # The function is edited: the same name is now another mutant, and its old note no longer holds.
    diffs[name] = "- if x:\n+ if not x:"
    second = mutation.module_result("rows", first)
    assert (second["killed"], second["survived"], second["equivalent"], second["score"]) == (1, 1, 1, 0.5)
    moved = second["survivors"][0]
    assert moved["stale_note"] and not moved["equivalent"] and moved["note_diff"] == "- n = 1\n+ n = 2"
    assert "another change" in moved["note"]
    # Until the note is reviewed, later runs keep the diff it was written for.
    assert mutation.module_result("rows", second)["survivors"][0]["stale_note"]
    # A rewritten note counts as reviewed: it applies to the mutant the name means now.
    monkeypatch.setattr(mutation_notes, "EQUIVALENT", {name: "reviewed: same", "retrieval.rows.x_a__mutmut_2": "same too"})
    third = mutation.module_result("rows", second)
    assert third["equivalent"] == 2 and third["survivors"][0]["note_diff"] == "- if x:\n+ if not x:"


def test_resume_tries_the_mutants_without_a_result_then_retests_the_survivors_that_kept_theirs(monkeypatch, tmp_path):
    before = {"m1": "killed", "m2": "survived", "m3": "not checked", "m4": "survived", "m5": "no tests"}
    # mutmut's first pass: m3 reached (survives), m4's function was edited, so it was rerun and is killed now.
    after = {"m1": "killed", "m2": "survived", "m3": "survived", "m4": "killed", "m5": "no tests", "m6": "survived"}
    runs, states = [], iter([before, after, after])
    monkeypatch.setattr(mutation, "WORK", tmp_path)
    monkeypatch.setattr(mutation, "STATE", tmp_path / "no-state.json")
    monkeypatch.setattr(mutation, "read_statuses", lambda name: next(states))
    monkeypatch.setattr(mutation, "prepare", lambda name, resume: tmp_path)
    monkeypatch.setattr(mutation, "_mutmut", lambda name, work, mutants, deadline, children: runs.append(mutants) or True)
    assert mutation.run_module("rows", resume=True, minutes=1, children=2)
    assert runs == [[], ["m2", "m5"]]  # m3 and m6 were just tried; m1 and m4 are killed


def test_a_note_keeps_the_change_it_was_written_for_through_a_run_that_did_not_reach_it(monkeypatch):
    from tests import mutation_notes

    name = "retrieval.rows.x_a__mutmut_1"
    monkeypatch.setattr(mutation_notes, "EQUIVALENT", {name: "same"})
    monkeypatch.setattr(mutation_notes, "NOTES", {})
    status, diffs = {name: "survived"}, {name: "- n = 1\n+ n = 2"}
    monkeypatch.setattr(mutation, "read_statuses", lambda module: dict(status))
    monkeypatch.setattr(mutation, "mutant_diffs", lambda module, mutants: {m: diffs[m] for m in mutants})
    first = mutation.module_result("rows", None)
    for between in ("not checked", "no tests"):  # a stopped run, or a test file that no longer calls it
        status[name], diffs[name] = between, "- if x:\n+ if not x:"
        middle = mutation.module_result("rows", first)
        status[name] = "survived"
        last = mutation.module_result("rows", middle)
        assert last["survivors"][0]["stale_note"] and last["equivalent"] == 0, between
        diffs[name] = "- n = 1\n+ n = 2"


def test_retest_runs_the_survivors_again_with_the_new_tests_and_leaves_the_mutated_code(monkeypatch, tmp_path):
    statuses = {"m1": "killed", "m2": "survived", "m3": "not checked", "m4": "timeout", "m5": "no tests",
                "m6": "suspicious"}
    work = tmp_path / "rows"
    (work / "retrieval").mkdir(parents=True)
    (work / "retrieval" / "rows.py").write_text("# the code as it was mutated\n")
    runs = []
    monkeypatch.setattr(mutation, "WORK", tmp_path)
    monkeypatch.setattr(mutation, "read_statuses", lambda name: statuses)
    monkeypatch.setattr(mutation, "_mutmut", lambda name, work, mutants, deadline, children: runs.append(mutants) or True)
    assert mutation.retest_module("rows", minutes=1, children=2)
    assert runs == [["m2", "m5", "m6"]]  # neither the detected nor the ones never tried
    assert (work / "retrieval" / "rows.py").read_text() == "# the code as it was mutated\n"
    assert (work / "tests" / "test_mutation_report.py").is_file() and (work / "README.md").is_file()
    monkeypatch.setattr(mutation, "read_statuses", lambda name: {})
    assert not mutation.retest_module("rows", minutes=1, children=2)  # nothing run yet: nothing to retest
    with pytest.raises(SystemExit):
        mutation.main(["--modules", "rows", "--retest", "--resume"])


def test_a_fresh_work_folder_starts_from_the_saved_verdicts_of_the_functions_unchanged(monkeypatch, tmp_path):
    monkeypatch.setattr(mutation, "WORK", tmp_path / "work")
    monkeypatch.setattr(mutation, "STATE", tmp_path / "results" / "mutation-state.json")
    meta = tmp_path / "work" / "rows" / "mutants" / "retrieval" / "rows.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"retrieval.rows.x_a__mutmut_1": 1, "retrieval.rows.x_a__mutmut_2": 0, "retrieval.rows.x_a__mutmut_3": None,
             "retrieval.rows.xǁRǁget__mutmut_1": 33}
    meta.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": {"x_a": "h1", "xǁRǁget": "h2"},
                                "type_check_error_by_key": {}, "durations_by_key": {"retrieval.rows.x_a__mutmut_1": 0.5},
                                "estimated_durations_by_key": {}}))
    state = mutation.module_state("rows")  # (mutmut is not needed: CI does not install it)
    assert state == {"source": "retrieval/rows.py", "functions": {"x_a": {"hash": "h1", "codes": [1, 0, None]},
                                                                   "xǁRǁget": {"hash": "h2", "codes": [33]}}}
    mutation.write_states({"rows": state})
    saved = json.loads(mutation.STATE.read_text())
    assert saved == {"rows": state}
    # A new machine: no work folder. Seeding writes what mutmut reads, the untried mutant still untried.
    meta.unlink()
    assert mutation.seed_from_state("rows", saved["rows"]) == 3
    assert json.loads(meta.read_text())["exit_code_by_key"] == codes
    assert json.loads(meta.read_text())["hash_by_function_name"] == {"x_a": "h1", "xǁRǁget": "h2"}
    # A folder with a run of its own keeps it; a state saved for another file is not used.
    meta.write_text(meta.read_text().replace('"retrieval.rows.x_a__mutmut_2": 0', '"retrieval.rows.x_a__mutmut_2": 1'))
    assert mutation.seed_from_state("rows", saved["rows"]) == 0
    assert json.loads(meta.read_text())["exit_code_by_key"]["retrieval.rows.x_a__mutmut_2"] == 1
    meta.unlink()
    assert mutation.seed_from_state("rows", {**saved["rows"], "source": "retrieval/other.py"}) == 0
    assert not meta.exists()


def test_retest_on_a_fresh_clone_starts_from_the_saved_state(monkeypatch, tmp_path):
    monkeypatch.setattr(mutation, "WORK", tmp_path / "work")
    monkeypatch.setattr(mutation, "STATE", tmp_path / "results" / "mutation-state.json")
    mutation.write_states({"rows": {"source": "retrieval/rows.py", "functions": {
        "x_a": {"hash": "h1", "codes": [1, 0, None]}}}})
    prepared, runs = [], []
    monkeypatch.setattr(mutation, "prepare", lambda name, resume: prepared.append(resume) or (tmp_path / "work" / name))
    monkeypatch.setattr(mutation, "_mutmut", lambda name, work, mutants, deadline, children: runs.append(mutants) or True)
    # read_statuses as mutmut's exit codes say (1 killed, 0 survived, None not checked), without mutmut
    names = {1: "killed", 0: "survived", None: "not checked"}
    monkeypatch.setattr(mutation, "read_statuses", lambda name: {
        k: names[c] for k, c in json.loads(mutation._meta(name).read_text())["exit_code_by_key"].items()}
        if mutation._meta(name).is_file() else {})
    assert mutation.retest_module("rows", minutes=1, children=2)
    assert prepared == [True] and runs == [["retrieval.rows.x_a__mutmut_2"]]  # the survivor, not the untried one
    # With no saved state either, there is nothing to retest.
    mutation._meta("rows").unlink()
    mutation.STATE.unlink()
    runs.clear()
    assert not mutation.retest_module("rows", minutes=1, children=2) and runs == []
