"""Mutation testing of the core modules with mutmut 3: how many deliberate small bugs the tests catch.

    python -m tests.mutation                        # every module, fresh (long: run modules in chunks)
    python -m tests.mutation --modules search,rerank
    python -m tests.mutation --modules build --resume --minutes 9   # continue a stopped run, then retest survivors
                                                                          # (from results/mutation-state.json on a new machine)
    python -m tests.mutation --modules runtimes --retest   # survivors again, against today's tests
    python -m tests.mutation --report                # only rewrite the results from the last runs

Not part of CI: it takes tens of minutes. Install the tool first:
`pip install -r requirements-mutation.txt`.

Each module is mutated on its own, in a work folder `.mutation/<module>/` holding a copy of the
code, and each of its mutants is run against the tests meant for that module (`MODULES`), never
the whole suite. mutmut puts one mutation at a time into a function (a flipped comparison, a
changed constant, a dropped argument...) and runs the tests that call that function; a mutant
that fails a test is *killed*, one that passes them all *survived*. Survivors that cannot change
any outcome (equivalent mutants) are listed with the reason in `tests/mutation_notes.py`.

Writes `results/mutation.json` (per module: killed, survived, equivalent, score, and each survivor
with its diff and note; the README table `mutation`) and `docs/mutation-survivors.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
RESULTS = ROOT / "results" / "mutation.json"
SURVIVORS_DOC = ROOT / "docs" / "mutation-survivors.md"
# Every mutant's last verdict, per module and function, with the hash mutmut gave the function: a
# fresh work folder (another machine, a new clone, .mutation/ deleted) starts from it with --resume,
# so a run stopped at its time limit goes on where it stopped instead of from the start.
STATE = ROOT / "results" / "mutation-state.json"
# What a mutated copy needs to import and test: the library, the app, the commands the tests call and
# the README (tests check that it states what the code enforces).
COPIED = ("retrieval", "precompute", "benchmarks", "webapp", "app.py", "pyproject.toml", "README.md")

# module -> (file mutated, tests meant for it, process isolation). "forkserver" for tests that run
# TensorFlow: a worker forked from a process that already ran TensorFlow can hang.
MODULES = {
    "search": ("retrieval/search.py", ["tests/test_search.py", "tests/test_properties.py"], "forkserver"),
    "rerank": ("retrieval/rerank.py", ["tests/test_rerank.py", "tests/test_properties.py"], "fork"),
    "evaluate": ("retrieval/evaluate.py", ["tests/test_evaluate.py", "tests/test_properties.py"], "fork"),
    "index": ("retrieval/index.py", ["tests/test_index.py", "tests/test_whitening.py"], "fork"),
    "engine": ("retrieval/engine.py", ["tests/test_engine.py"], "forkserver"),
    "build": ("retrieval/build.py", ["tests/test_build.py"], "forkserver"),
    "verify": ("retrieval/verify.py", ["tests/test_verify.py"], "fork"),
    "features": ("retrieval/features.py", ["tests/test_features.py"], "forkserver"),
    "query": ("retrieval/query.py", ["tests/test_query.py", "tests/test_engine.py"], "forkserver"),
    "evaluation": ("retrieval/evaluation.py", ["tests/test_evaluation.py", "tests/test_evaluate_command.py",
                                                "tests/test_verify.py"], "forkserver"),
    "confidence": ("retrieval/confidence.py", [
        "tests/test_confidence.py::test_the_threshold_holds_only_for_the_space_it_was_measured_in",
        "tests/test_confidence.py::test_the_verdict_is_the_best_similarity_against_the_threshold",
        "tests/test_engine.py"], "forkserver"),
    # The app's parts (app.py itself is start-up only, exercised through a live server).
    "queries": ("webapp/queries.py", ["tests/test_app_handlers.py", "tests/test_app_endpoints.py"], "forkserver"),
    "handlers": ("webapp/handlers.py", ["tests/test_app_handlers.py", "tests/test_app_endpoints.py"], "forkserver"),
    "http_api": ("webapp/http_api.py", ["tests/test_app_endpoints.py", "tests/test_abuse.py"], "forkserver"),
    "guard": ("webapp/guard.py", ["tests/test_abuse.py"], "forkserver"),
    # The million-image backends, diffusion and the runtimes (FAISS runs OpenMP threads: forkserver).
    "rows": ("retrieval/rows.py", ["tests/test_rows.py"], "fork"),
    "diffusion": ("retrieval/diffusion.py", ["tests/test_diffusion.py"], "fork"),
    "ann": ("retrieval/ann.py", ["tests/test_ann.py"], "forkserver"),
    "onnx_export": ("retrieval/onnx_export.py", ["tests/test_onnx_export.py"], "forkserver"),
    "runtimes": ("retrieval/runtimes.py", ["tests/test_runtimes.py"], "forkserver"),
}
# Functions left out of a module's score. The UI layout (webapp/ui.py) and process start-up
# (app.py, webapp/server.py: serve runs uvicorn and does not return) are not mutated at all: the
# live-app and browser tests (tests/test_app.py, tests/test_browser.py) exercise them through a server.
OUT_OF_SCOPE: dict[str, tuple[str, ...]] = {}
# The modules with the 90% target; the rest count towards the 80% over all core modules. `query` holds
# the query path that moved out of `engine` (issue 27), so it keeps the engine's target; `evaluation`
# is the runner that moved out of the evaluate command, which had none.
STRICT = ("search", "rerank", "evaluate", "index", "engine", "query")
DETECTED = {"killed", "timeout", "caught by type check", "segfault"}


def prepare(name: str, *, resume: bool) -> Path:
    """Returns the work folder of one module with a fresh copy of the code and its mutmut config."""
    source, tests, isolation = MODULES[name]
    work = WORK / name
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for item in COPIED:
        src, dst = ROOT / item, work / item
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    _copy_tests(work)
    # The tests find ../shared/data next to their repository root, here work/mutants/.
    shared = work / "shared"
    if not shared.exists() and (ROOT.parent / "shared").is_dir():
        shared.symlink_to((ROOT.parent / "shared").resolve())
    sources = "\n    ".join(item for item in COPIED if item.endswith(".py") or (ROOT / item).is_dir())
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        f"source_paths =\n    {sources}\n"
        f"only_mutate =\n    {source}\n"
        "also_copy =\n    pyproject.toml\n    README.md\n    docs\n"
        "pytest_add_cli_args_test_selection =\n    " + "\n    ".join(tests) + "\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n"
        f"process_isolation = {isolation}\n"
        "use_git_change_detection = false\n"
    )
    return work


def _meta(name: str) -> Path:
    return WORK / name / "mutants" / (MODULES[name][0] + ".meta")


def _prefix(name: str) -> str:
    return MODULES[name][0].removesuffix(".py").replace("/", ".") + "."


def module_state(name: str) -> dict | None:
    """Returns a module's verdicts from its work folder, compact: {function: {hash, codes}} (None: no run).

    `codes[i]` is mutmut's exit code for the function's mutant i + 1 (None: not tried yet).
    """
    meta = _meta(name)
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    by_function: dict[str, dict[int, int | None]] = {}
    for key, code in data["exit_code_by_key"].items():
        function, _, number = key.removeprefix(_prefix(name)).rpartition("__mutmut_")
        by_function.setdefault(function, {})[int(number)] = code
    hashes = data.get("hash_by_function_name", {})
    return {"source": MODULES[name][0], "functions": {
        function: {"hash": hashes.get(function), "codes": [codes.get(i) for i in range(1, max(codes) + 1)]}
        for function, codes in sorted(by_function.items())}}


def seed_from_state(name: str, state: dict | None) -> int:
    """Writes a fresh work folder's mutmut metadata from a saved state; returns the verdicts carried over.

    mutmut then keeps the verdicts of every function whose hash is unchanged and tries the rest, as
    it does when a function is edited between two runs in one folder.
    """
    meta = _meta(name)
    if meta.is_file() or not state or state.get("source") != MODULES[name][0]:
        return 0
    codes, hashes = {}, {}
    for function, saved in state["functions"].items():
        if saved.get("hash"):
            hashes[function] = saved["hash"]
        for i, code in enumerate(saved["codes"], start=1):
            codes[f"{_prefix(name)}{function}__mutmut_{i}"] = code
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": hashes,
                                "type_check_error_by_key": {}, "durations_by_key": {},
                                "estimated_durations_by_key": {}}, indent=1))
    return sum(code is not None for code in codes.values())


def write_states(states: dict) -> None:
    """Writes results/mutation-state.json with a line per function, so that a run's diff is readable."""
    lines = ["{"]
    for m, name in enumerate(sorted(states)):
        state = states[name]
        lines.append(f"{json.dumps(name)}: {{\"source\": {json.dumps(state['source'])}, \"functions\": {{")
        functions = sorted(state["functions"].items())
        for f, (function, saved) in enumerate(functions):
            comma = "," if f < len(functions) - 1 else ""
            lines.append(f"  {json.dumps(function, ensure_ascii=False)}: {json.dumps(saved, separators=(',', ':'))}{comma}")
        lines.append("}}" + ("," if m < len(states) - 1 else ""))
    lines.append("}")
    STATE.parent.mkdir(exist_ok=True)
    STATE.write_text("\n".join(lines) + "\n")


def _saved_states() -> dict:
    return json.loads(STATE.read_text()) if STATE.is_file() else {}


def _copy_tests(work: Path) -> None:
    shutil.copytree(ROOT / "tests", work / "tests", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "README.md", work / "README.md")
    # Tests check that the docs state what the code enforces.
    shutil.copytree(ROOT / "docs", work / "docs", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.png"))


def retest_module(name: str, *, minutes: float, children: int) -> bool:
    """Runs the last run's survivors again against the tests as they are now; True if all were run.

    The sources are not copied again: the mutants are those of the code as it was when the module
    ran (whose diffs the report shows), so a fix made since in a function does not make mutmut drop
    that function's results, as `--resume` would. Without a work folder (a new machine or clone), it
    starts from the verdicts saved in results/mutation-state.json, on the code as it is now.
    """
    statuses = read_statuses(name)
    work = WORK / name
    if not statuses and _saved_states().get(name):
        # A new machine or clone: the survivors are those of the saved state, mutated from the code
        # as it is here (mutmut drops the verdicts of any function edited since the state was saved).
        work = prepare(name, resume=True)
        carried = seed_from_state(name, _saved_states()[name])
        print(f"[{name}] {carried} verdicts carried over from {os.path.relpath(STATE, ROOT)}", flush=True)
        statuses = read_statuses(name)
    if not statuses:
        print(f"[{name}] no run to retest; run it first", flush=True)
        return False
    _copy_tests(work)
    again = [m for m, status in statuses.items() if status not in DETECTED and status != "not checked"]
    finished = _mutmut(name, work, again, time.monotonic() + minutes * 60, children) if again else True
    print(f"[{name}] {summary_counts(read_statuses(name))}", flush=True)
    return finished


def run_module(name: str, *, resume: bool, minutes: float, children: int) -> bool:
    """Runs mutmut on one module for at most `minutes`; returns True when every mutant was tried.

    With `resume`, first the mutants without a result (those a stopped run did not reach, and those of
    every function edited since: mutmut drops their results), then the mutants that survived before and still
    do, against the tests as they are now (a survivor of an edited file is so tried twice).
    """
    work = prepare(name, resume=resume)
    if resume:
        carried = seed_from_state(name, _saved_states().get(name))
        if carried:
            print(f"[{name}] {carried} verdicts carried over from {os.path.relpath(STATE, ROOT)}", flush=True)
    before = read_statuses(name) if resume else {}
    deadline = time.monotonic() + minutes * 60
    finished = _mutmut(name, work, [], deadline, children)
    if resume and finished:
        after = read_statuses(name)
        again = [m for m, status in after.items()
                 if status not in DETECTED and status != "not checked" and before.get(m) == status]
        if again:
            finished = _mutmut(name, work, again, deadline, children)
    counts = read_statuses(name)
    print(f"[{name}] {summary_counts(counts)}", flush=True)
    return finished and "not checked" not in counts.values()


def _mutmut(name: str, work: Path, mutants: list[str], deadline: float, children: int) -> bool:
    """Runs `mutmut run` (on `mutants` only, if given) until it ends or the deadline; True if it ended."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
    env.pop("CI", None)  # a missing ../shared/data skips here rather than failing the clean run
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *mutants]
    what = f"{len(mutants)} named mutants again" if mutants else "the mutants without a result"
    print(f"[{name}] mutmut run: {what}, in {work.relative_to(ROOT)}", flush=True)
    log = open(work / "mutmut.log", "ab")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # mutmut saves what it has on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"[{name}] stopped at the time limit; continue with --resume", flush=True)
        return False
    finally:
        log.close()
    if proc.returncode != 0:
        print(f"[{name}] mutmut exited with {proc.returncode}; see {(work / 'mutmut.log').relative_to(ROOT)}", flush=True)
    return proc.returncode == 0


def read_statuses(name: str) -> dict[str, str]:
    """Returns {mutant name: mutmut status} from a module's last run (empty if none)."""
    from mutmut.stats import status_by_exit_code

    meta = _meta(name)
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {key: status_by_exit_code[code] for key, code in sorted(codes.items())}


def summary_counts(statuses: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses.values():
        out[status] = out.get(status, 0) + 1
    return out


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({name: get_diff_for_mutant(name) for name in json.load(sys.stdin)}))
"""


def mutant_diffs(name: str, mutants: list[str]) -> dict[str, str]:
    """Returns {mutant: its changed lines ("- old" / "+ new")}, from mutmut in the module's work folder."""
    if not mutants:
        return {}
    done = subprocess.run([sys.executable, "-c", _DIFFS], cwd=WORK / name, input=json.dumps(mutants),
                          capture_output=True, text=True, timeout=600, check=True)
    out = {}
    for mutant, diff in json.loads(done.stdout).items():
        lines = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        out[mutant] = "\n".join(line[0] + " " + line[1:].strip() for line in lines)
    return out


def module_result(name: str, previous: dict | None) -> dict | None:
    """Returns one module's counts and survivors, or the previous result when it has no run here."""
    from tests.mutation_notes import EQUIVALENT, NOTES

    statuses = read_statuses(name)
    if not statuses:
        return previous
    skipped = {m for m in statuses if _function_of(m) in OUT_OF_SCOPE.get(name, ())}
    statuses = {m: status for m, status in statuses.items() if m not in skipped}
    survivors, equivalent, detected, counts = [], 0, 0, summary_counts(statuses)
    diffs = mutant_diffs(name, [m for m, status in statuses.items() if status not in DETECTED])
    noted_for = _noted_diffs(previous)
    for mutant, status in statuses.items():
        if status in DETECTED:
            detected += 1
            continue
        diff = diffs[mutant]
        reason, note = EQUIVALENT.get(mutant), NOTES.get(mutant, "")
        old_diff, old_text = noted_for.get(mutant, (diff, None))
        if (reason or note) and old_diff != diff and old_text in (None, reason or note):
            # The function changed since the note was written and the name now means another
            # change: the note is not applied until it is rewritten (any new text counts as reviewed).
            survivors.append({"name": mutant, "status": status, "diff": diff, "equivalent": False,
                              "note": f"A note was written for another change under this name ({old_diff!r}): "
                                      "review it.",
                              "stale_note": True, "note_diff": old_diff, "note_text": reason or note})
            continue
        is_equivalent = reason is not None and status == "survived"
        equivalent += is_equivalent
        entry = {"name": mutant, "status": status, "diff": diff, "equivalent": is_equivalent,
                 "note": reason if is_equivalent else note}
        if entry["note"]:
            entry["note_diff"], entry["note_text"] = diff, entry["note"]  # what the note was checked against
        survivors.append(entry)
    not_tried = sum(1 for status in statuses.values() if status == "not checked")
    # What each note was checked against, kept for every mutant still alive or not tried (not only
    # the survivors listed), so that a note outlives a run that did not reach its mutant.
    noted = {x["name"]: [x["note_diff"], x.get("note_text")] for x in survivors if x.get("note_diff")}
    survivors = [x for x in survivors if x["status"] != "not checked"]  # a stopped run: see not_tried
    # "no tests": no test meant for the module calls the mutant's function. They count as survivors
    # (nothing would catch the bug) and are listed per function, not one by one.
    untested: dict[str, int] = {}
    for x in survivors:
        if x["status"] == "no tests":
            untested[_function_of(x["name"])] = untested.get(_function_of(x["name"]), 0) + 1
    survivors = [x for x in survivors if x["status"] != "no tests"]
    total = len(statuses) - not_tried
    effective = total - equivalent
    meta = _meta(name)
    ran = time.strftime("%Y-%m-%d", time.gmtime(meta.stat().st_mtime)) if meta.is_file() else None
    return {
        "source": MODULES[name][0],
        "tests": MODULES[name][1],
        "ran": ran,
        "mutants": total,
        "killed": detected,
        "survived": total - detected - equivalent,
        "equivalent": equivalent,
        "not_tried": not_tried,
        "statuses": counts,
        "score": round(detected / effective, 4) if effective else None,
        "out_of_scope": {"functions": list(OUT_OF_SCOPE.get(name, ())), "mutants": len(skipped)},
        "no_tests": sum(untested.values()),
        "untested_functions": dict(sorted(untested.items(), key=lambda kv: (-kv[1], kv[0]))),
        "stale_notes": stale_notes(name, statuses),
        "noted": noted,
        "survivors": survivors,
    }


def _noted_diffs(previous: dict | None) -> dict[str, tuple[str, str | None]]:
    """Returns {mutant: (the diff its note was written for, the note's text)} from a module's last result."""
    if previous and "noted" in previous:
        return {m: (d, t) for m, (d, t) in previous["noted"].items()}
    out = {}
    for s in (previous or {}).get("survivors", []):
        if s.get("note_diff"):
            out[s["name"]] = (s["note_diff"], s.get("note_text"))
        elif s.get("note"):
            out[s["name"]] = (s["diff"], None)  # results written before the notes' diffs were kept
    return out


def stale_notes(name: str, statuses: dict[str, str]) -> list[str]:
    """Returns the noted mutants of a module that its tests now kill, or that no longer exist."""
    from tests.mutation_notes import EQUIVALENT, NOTES

    noted = [m for m in (*EQUIVALENT, *NOTES) if m.startswith(_prefix(name))]
    return sorted(m for m in noted if statuses.get(m, "killed") in DETECTED)


def _function_of(mutant: str) -> str:
    """Returns the function (or method) a mutant name belongs to: `app.x_search__mutmut_3` -> `search`."""
    last = mutant.rsplit(".", 1)[-1].split("__mutmut_")[0]
    return last.split("ǁ")[-1] if "ǁ" in last else last[2:]


def write_results(modules: dict[str, dict], *, seconds: dict[str, float]) -> dict:
    rows = []
    killed = survived = equivalent = 0
    for name in MODULES:
        m = modules.get(name)
        if m is None:
            rows.append([f"`{name}`", "", "", "", "", "", "not run", "", ""])
            continue
        killed, survived, equivalent = killed + m["killed"], survived + m["survived"], equivalent + m["equivalent"]
        target = "90%" if name in STRICT else "80% overall"
        score = f"{100 * m['score']:.1f}%" if m["score"] is not None else "no result"
        rows.append([f"`{name}`", m["killed"], m["survived"], m.get("no_tests", 0), m["equivalent"],
                     m.get("not_tried", 0), score, target, m.get("ran") or "before 2026-12"])
    overall = killed / (killed + survived) if killed + survived else None
    rows.append(["**all core modules**", killed, survived, sum(m.get("no_tests", 0) for m in modules.values()),
                 equivalent, sum(m.get("not_tried", 0) for m in modules.values()),
                 f"**{100 * overall:.1f}%**" if overall is not None else "", "80%", ""])
    data = {
        "tool": "mutmut " + _mutmut_version(),
        "command": "python -m tests.mutation",
        "score": "killed / (killed + survived): mutants caught by the module's tests among those that are not equivalent",
        "seconds": seconds,
        "modules": modules,
        "overall": {"killed": killed, "survived": survived, "equivalent": equivalent,
                    "score": round(overall, 4) if overall is not None else None},
        "tables": {"mutation": {
            "columns": ["module", "killed", "survived", "of which no tests", "equivalent", "not tried", "score",
                        "target", "run on"],
            "align": "lrrrrrrll",
            "rows": rows,
        }},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    SURVIVORS_DOC.write_text(survivors_markdown(modules))
    return data


def survivors_markdown(modules: dict[str, dict]) -> str:
    lines = [
        "# Surviving mutants",
        "",
        "Generated by `python -m tests.mutation` from `results/mutation.json`; the notes come from",
        "`tests/mutation_notes.py`. Each line: the mutant, what it changes, and why no test",
        "catches it. *Equivalent* mutants cannot change any outcome and do not count against the score.",
        "",
    ]
    for name in MODULES:
        m = modules.get(name)
        if m is None:
            continue
        lines.append(f"## `{name}` ({m['source']}): {m['killed']} killed, {m['survived']} survived, "
                     f"{m['equivalent']} equivalent")
        lines.append("")
        if not m["survivors"] and not m.get("untested_functions"):
            lines.append("No survivors.")
        for function, count in m.get("untested_functions", {}).items():
            lines.append(f"- `{function}`: {count} mutants that no test of `{name}` reaches (no tests).")
        for s in m["survivors"]:
            change = " / ".join(f"`{line}`" for line in s["diff"].splitlines()[:2]) or "(no diff)"
            kind = "equivalent" if s["equivalent"] else s["status"]
            lines.append(f"- `{s['name']}` ({kind}): {change}. {s['note'] or 'Not reviewed yet.'}")
        lines.append("")
    return "\n".join(lines)


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES), help=f"comma-separated, of {', '.join(MODULES)}")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last run: test the mutants it did not reach and its survivors again")
    parser.add_argument("--retest", action="store_true",
                        help="run the last run's survivors again against the tests as they are now, on the "
                             "code as it was then (after a fix in the module, which --resume would start afresh)")
    parser.add_argument("--minutes", type=float, default=9.0, help="stop each module's run after this long")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--report", action="store_true", help="only rewrite the results from the last runs")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.modules.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if args.retest and args.resume:
        parser.error("--retest and --resume: choose one")
    took = {}
    for name in names:
        if not args.report:
            t0 = time.monotonic()
            if args.retest:
                retest_module(name, minutes=args.minutes, children=args.children)
            else:
                run_module(name, resume=args.resume, minutes=args.minutes, children=args.children)
            took[name] = time.monotonic() - t0
    # Read the last results only now: another run may have written them meanwhile. Every module
    # with a run here is scored again, so the notes' latest state applies to all of them.
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    modules, seconds = dict(previous.get("modules", {})), dict(previous.get("seconds", {}))
    for name, spent in took.items():
        seconds[name] = round((seconds.get(name, 0) if args.resume or args.retest else 0) + spent, 1)
    for name in MODULES:
        try:
            result = module_result(name, modules.get(name))
        except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError) as e:
            # e.g. a module whose run is starting right now: keep its last result
            print(f"[{name}] not rescored ({type(e).__name__}); keeping its last result", file=sys.stderr)
            result = modules.get(name)
        if result is not None:
            modules[name] = result
    data = write_results(modules, seconds=seconds)
    states = _saved_states()
    for name in MODULES:
        state = module_state(name)
        if state is not None:
            states[name] = state
    write_states(states)
    from benchmarks import readme_tables

    readme_tables.main([])  # the README's mutation table comes from results/mutation.json
    for row in data["tables"]["mutation"]["rows"]:
        print(" | ".join(str(c) for c in row))
    for name, m in data["modules"].items():
        moved = [x["name"] for x in m.get("survivors", []) if x.get("stale_note")]
        if moved:
            print(f"[{name}] notes written for another change under the same name, to review: "
                  f"{', '.join(moved)}", file=sys.stderr)
        if m.get("stale_notes"):
            print(f"[{name}] notes on mutants that are now killed or gone, to remove from "
                  f"tests/mutation_notes.py: {', '.join(m['stale_notes'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
