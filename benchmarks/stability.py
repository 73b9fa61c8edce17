"""Does a default keep its gain beyond our 397 images? Candidates on the full mini RParis, on two
random halves of its database, and with 10,000 synthetic distractors added.

    python -m benchmarks.stability [--json results/stability.json] [--distractors 10000] [--seed 0]

Each candidate is a `Recipe` (descriptor, DBA, αQE, diffusion) plus optional PCA-whitening
learned on a different collection. Every setting is ranked by `retrieval.evaluation.rank_queries`,
the function the evaluation command uses, and scored by `retrieval.evaluate.evaluate_ranks`:

- full: the 397 database images, the 19 query crops;
- halves: the database split at random (fixed seed) into two halves, each evaluated alone with
  the ground truth restricted to it (a query without positives in a half is left out there);
  whitening, where a candidate has it, is learned on the *other* half: images of the same
  landmarks but not the ones searched, the nearest thing to "a different collection" here;
- distractors: `retrieval.distractors` fitted to the candidate's database descriptors, 10,000
  rows drawn (fixed seed) and appended to the database before DBA and the graph are built.

Descriptors come from the evaluation's cache (`.cache/evaluate`), so only a new pipeline
runs the network. Exact search throughout (the KD-tree ranks the same; it is slow at 10k x 1280).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrieval.evaluation import DEFAULT_CACHE_DIR, dataset_descriptors, rank_queries
from retrieval.datasets import load_dataset
from retrieval.defaults import DEFAULT, Recipe
from retrieval.diffusion import DiffusionSettings
from retrieval.distractors import fit_distractor_model, sample_distractors
from retrieval.evaluate import evaluate_ranks
from retrieval.features import Pipeline
from retrieval.whitening import learn_whitening

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ("easy", "medium", "hard")
PREVIOUS = Recipe(descriptor=DEFAULT.descriptor, dba=3, qe=5, alpha=3.0)


@dataclass(frozen=True)
class Candidate:
    """A recipe to test; `whiten` learns a PCA-whitening (shrinkage) on the other half (halves only)."""

    name: str
    recipe: Recipe
    whiten: float | None = None


def _diffusion(**changes) -> DiffusionSettings:
    return replace(DEFAULT.diffusion or DiffusionSettings(), **changes)


CANDIDATES = (
    Candidate("previous default: GeM 384, αQE 5, DBA 3", PREVIOUS),
    Candidate("**default**: previous + diffusion", DEFAULT),
    Candidate("diffusion without αQE and DBA", replace(DEFAULT, qe=0, dba=0)),
    Candidate("default, diffusion k=10", replace(DEFAULT, diffusion=_diffusion(k=10))),
    Candidate("default, diffusion k=50", replace(DEFAULT, diffusion=_diffusion(k=50))),
    Candidate("default, diffusion α=0.9", replace(DEFAULT, diffusion=_diffusion(alpha=0.9))),
    Candidate("default, diffusion α=0.99", replace(DEFAULT, diffusion=_diffusion(alpha=0.99))),
    Candidate("default, diffusion seeds=5", replace(DEFAULT, diffusion=_diffusion(seeds=5))),
    Candidate("default, diffusion seeds=20", replace(DEFAULT, diffusion=_diffusion(seeds=20))),
    Candidate("default, GeM p=4.6", replace(DEFAULT, descriptor=replace(DEFAULT.descriptor, gem_p=4.6))),
    Candidate("default, R-MAC grid of GeM regions", replace(DEFAULT, descriptor=replace(DEFAULT.descriptor, pooling="rgem"))),
    Candidate("default, scales 1, 1/√2, 1/2, max",
              replace(DEFAULT, descriptor=replace(DEFAULT.descriptor, scales=(1.0, 0.7071, 0.5), combine="max"))),
    Candidate("default, scales 1, 1/√2, 1/2, mean",
              replace(DEFAULT, descriptor=replace(DEFAULT.descriptor, scales=(1.0, 0.7071, 0.5)))),
    Candidate("default, no diffusion + whitening from the other half (shrinkage 50)", PREVIOUS, whiten=50.0),
    Candidate("default + whitening from the other half (shrinkage 50)", DEFAULT, whiten=50.0),
)


def restrict_gnd(gnd: list[dict], rows: np.ndarray) -> list[dict]:
    """Returns the ground truth of a database restricted to `rows`, indices renumbered 0..len(rows)-1."""
    position = {int(r): i for i, r in enumerate(rows)}
    return [{key: np.array([position[int(j)] for j in values if int(j) in position], dtype=np.int64)
             for key, values in query.items() if key in ("easy", "hard", "junk", "ok")} for query in gnd]


def score(db: np.ndarray, queries: np.ndarray, gnd: list[dict], kind: str, recipe: Recipe, whitening=None) -> dict:
    """Returns {protocol: mAP} of one recipe on (n, d) database and (m, d) query rows."""
    ranks, _ = rank_queries(db, queries, backend="exact", whitening=whitening, qe=recipe.qe, dba=recipe.dba,
                            alpha=recipe.alpha, diffusion=recipe.diffusion)
    metrics = evaluate_ranks(ranks, gnd, kind)
    return {p: round(float(metrics[p]["map"]), 6) for p in PROTOCOLS}


def run_candidate(candidate: Candidate, db: np.ndarray, queries: np.ndarray, dataset, *, halves, distractors: int,
                  seed: int) -> dict:
    """Returns {setting: {protocol: mAP}} for one candidate on precomputed raw descriptors."""
    recipe, kind, out = candidate.recipe, dataset.kind, {}
    if candidate.whiten is None:
        out["full"] = score(db, queries, dataset.gnd, kind, recipe)
    for name, rows, other in (("half A", halves[0], halves[1]), ("half B", halves[1], halves[0])):
        whitening = learn_whitening(db[other], shrinkage=candidate.whiten) if candidate.whiten is not None else None
        out[name] = score(db[rows], queries, restrict_gnd(dataset.gnd, rows), kind, recipe, whitening)
    if candidate.whiten is None and distractors:
        extra = sample_distractors(fit_distractor_model(db), distractors, seed=seed)
        out[f"+{distractors // 1000}k distractors"] = score(np.concatenate([db, extra]), queries, dataset.gnd, kind, recipe)
    return out


def _pair(result: dict | None) -> str:
    return "" if result is None else f"{100 * result['medium']:.1f} / {100 * result['hard']:.1f}"


def table(results: list[dict], settings: list[str]) -> dict:
    """Returns the README table: one row per candidate, Medium / Hard mAP per setting."""
    rows = [[r["name"], *[_pair(r["map"].get(s)) for s in settings]] for r in results]
    return {"columns": ["candidate", *[f"{s} M / H" for s in settings]], "align": "l" + "r" * len(settings), "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--dataset", default="rparis6k")
    parser.add_argument("--network", default="efficientnet-lite0")
    parser.add_argument("--distractors", type=int, default=10_000, help="synthetic distractors added (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halves and the distractors")
    parser.add_argument("--only", default=None, help="run only candidates whose name contains this")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--json", default=str(ROOT / "results" / "stability.json"))
    args = parser.parse_args(argv)

    from retrieval.networks import build_network

    dataset = load_dataset(args.dataset, args.data_root)
    network = build_network(args.network, weights="imagenet")
    perm = np.random.default_rng(args.seed).permutation(len(dataset.db_ids))
    halves = (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :]))
    descriptors: dict[Pipeline, tuple] = {}
    results = []
    for candidate in CANDIDATES:
        if args.only and args.only not in candidate.name:
            continue
        pipeline = candidate.recipe.descriptor
        if pipeline not in descriptors:
            found = dataset_descriptors(dataset, network, pipeline, cache_dir=args.cache_dir)
            descriptors[pipeline] = (found.db, found.queries)
        result = run_candidate(candidate, *descriptors[pipeline], dataset, halves=halves,
                               distractors=args.distractors, seed=args.seed)
        print(candidate.name, json.dumps(result), flush=True)
        results.append({"name": candidate.name, "recipe": _recipe_meta(candidate), "map": result})
    settings = ["full", "half A", "half B"] + ([f"+{args.distractors // 1000}k distractors"] if args.distractors else [])
    report = {
        "command": "python -m benchmarks.stability" + (f" --distractors {args.distractors}" if args.distractors != 10_000 else ""),
        "dataset": dataset.name, "network": network.name, "database_size": len(dataset.db_ids),
        "halves": [len(h) for h in halves], "seed": args.seed, "distractors": args.distractors,
        "candidates": results, "tables": {"stability": table(results, settings)},
    }
    if args.only is None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


def _recipe_meta(candidate: Candidate) -> dict:
    r = candidate.recipe
    return {"pipeline": r.descriptor.to_meta(), "qe": r.qe, "dba": r.dba, "alpha": r.alpha,
            "diffusion": r.diffusion.to_meta() if r.diffusion else None, "whiten_other_half": candidate.whiten}


if __name__ == "__main__":
    sys.exit(main())
