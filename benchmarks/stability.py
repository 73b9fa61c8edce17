"""Does a default keep its gain beyond our 397 images? Candidates on the full mini RParis, on two
random halves of its database, with 10,000 synthetic distractors, with few photos of the query's
place, and with every parameter chosen without the landmark it is scored on.

    python -m benchmarks.stability [--json results/stability.json] [--distractors 10000] [--seed 0]
        [--keep 5] [--draws 10] [--only TEXT]

Each candidate is a `Recipe` (descriptor, DBA, αQE, diffusion) plus optional PCA-whitening
learned on a different collection. Every setting is ranked by `retrieval.evaluation.rank_queries`,
the function the evaluation command uses, and scored by `retrieval.evaluate.evaluate_ranks`:

- full: the 397 database images, the 19 query crops;
- halves: the database split at random (fixed seed) into two halves, each evaluated alone with
  the ground truth restricted to it (a query without positives in a half is left out there);
  whitening, where a candidate has it, is learned on the *other* half: images of the same
  landmarks but not the ones searched, the nearest thing to "a different collection" here;
- distractors: `retrieval.distractors` fitted to the candidate's database descriptors, 10,000
  rows drawn (fixed seed) and appended to the database before DBA and the graph are built;
- few photos: a person's own collection holds a few photos of each place. For each landmark (a
  query's landmark is the one most of its positives are named after), its photos (every image
  that is a positive or junk of one of its queries) are subsampled to --keep (5), every other
  image kept, and its queries are scored on that database, the ground truth restricted to it.
  --draws (10) draws with seeds seed, seed + 1, ...; each query's AP is the mean over the draws
  where it keeps a positive, the mAP the mean over queries;
- leave one landmark out: for a family of options (a grid of one re-ranker's parameters), each
  landmark's queries are scored with the option that is best on all the other landmarks' queries
  (mean of Medium and Hard mAP on the full set and with few photos); the mAP pools those scores.

Descriptors come from the evaluation's cache (`.cache/evaluate`), so only a new pipeline
runs the network. Exact search throughout (the KD-tree ranks the same; it is slow at 10k x 1280).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrieval.datasets import load_dataset
from retrieval.defaults import DEFAULT, PREVIOUS, Recipe
from retrieval.diffusion import DiffusionSettings
from retrieval.distractors import fit_distractor_model, sample_distractors
from retrieval.evaluate import evaluate_ranks
from retrieval.evaluation import DEFAULT_CACHE_DIR, dataset_descriptors, rank_queries
from retrieval.features import Pipeline
from retrieval.whitening import learn_whitening

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ("medium", "hard")
# The diffusion that was the default until the few-photos setting existed: the whole graph, no blend.
WHOLE_GRAPH = DiffusionSettings(k=20, seeds=10, alpha=0.95, gamma=3.0)


@dataclass(frozen=True)
class Candidate:
    """A recipe to test; `whiten` learns a PCA-whitening (shrinkage) on the other half (halves only)."""

    name: str
    recipe: Recipe
    whiten: float | None = None


def _whole(**changes) -> Recipe:
    return replace(PREVIOUS, diffusion=replace(WHOLE_GRAPH, **changes))


def _default(**changes) -> Recipe:
    return replace(DEFAULT, diffusion=replace(DEFAULT.diffusion, **changes))


def _descriptor(**changes) -> Recipe:
    return replace(DEFAULT, descriptor=replace(DEFAULT.descriptor, **changes))


CANDIDATES = (
    Candidate("previous default: GeM 384, αQE 5, DBA 3, no diffusion", PREVIOUS),
    Candidate("diffusion, whole graph (the default before)", _whole()),
    Candidate("whole graph, α=0.9", _whole(alpha=0.9)),
    Candidate("whole graph, 5 seeds", _whole(seeds=5)),
    Candidate("whole graph, query-adaptive seeds (≥ 0.9 × the best)", _whole(seed_ratio=0.9)),
    Candidate("whole graph, blended 0.5 with the similarity", _whole(blend=0.5)),
    Candidate("whole graph, ÷ degree^0.25, blended 0.5", _whole(self_loops=True, degree_power=0.25, blend=0.5)),
    Candidate("truncated to the top 1000", _whole(truncate=True)),
    Candidate("truncated 1000, ÷ degree^0.25", _whole(truncate=True, self_loops=True, degree_power=0.25)),
    Candidate("truncated 1000, blended 0.5", _whole(truncate=True, blend=0.5)),
    Candidate("**default**: truncated 1000, ÷ degree^0.25, blended 0.5", DEFAULT),
    Candidate("default, ÷ degree^0.5", _default(degree_power=0.5)),
    Candidate("default, α=0.9", _default(alpha=0.9)),
    Candidate("default, graph k=10", _default(k=10)),
    Candidate("default, graph k=50", _default(k=50)),
    Candidate("default, 5 seeds", _default(seeds=5)),
    Candidate("default, 20 seeds", _default(seeds=20)),
    Candidate("default, truncated to the top 300", _default(candidates=300)),
    Candidate("default without αQE and DBA", replace(DEFAULT, qe=0, dba=0)),
    Candidate("default, GeM p=4.6", _descriptor(gem_p=4.6)),
    Candidate("default, R-MAC grid of GeM regions", _descriptor(pooling="rgem")),
    Candidate("default, scales 1, 1/√2, 1/2, max", _descriptor(scales=(1.0, 0.7071, 0.5), combine="max")),
    Candidate("default, scales 1, 1/√2, 1/2, mean", _descriptor(scales=(1.0, 0.7071, 0.5))),
    Candidate("previous default + whitening from the other half (shrinkage 50)", PREVIOUS, whiten=50.0),
    Candidate("default + whitening from the other half (shrinkage 50)", DEFAULT, whiten=50.0),
)


LABELS = {"alpha": "α", "seeds": "seeds", "degree_power": "÷ degree^", "blend": "blend"}


def _grid(base: DiffusionSettings, **values) -> dict[str, Recipe]:
    out = {}
    for combo in itertools.product(*values.values()):
        changes = dict(zip(values, combo))
        label = ", ".join(f"{LABELS[k]}{'' if k == 'degree_power' else '='}{v:g}" for k, v in changes.items())
        out[label] = replace(PREVIOUS, diffusion=replace(base, **changes))
    return out


# Leave one landmark out: each family's parameters are chosen without the landmark scored. The
# candidates above with the default's descriptor form one more family: the choice of the default itself.
EVERY_CANDIDATE = "every candidate above with the default's descriptor"
FAMILIES = {
    "no diffusion": {"": PREVIOUS},
    "whole graph (the default before)": _grid(WHOLE_GRAPH, alpha=[0.9, 0.95, 0.99], seeds=[5, 10, 20]),
    "truncated 1000, ÷ degree^p, blended (the default's)": _grid(
        replace(WHOLE_GRAPH, truncate=True, self_loops=True), degree_power=[0.0, 0.25, 0.5], blend=[0.5, 1.0],
        alpha=[0.9, 0.95]),
}


# ---------------------------------------------------------------- settings


def restrict_gnd(gnd: list[dict], rows: np.ndarray) -> list[dict]:
    """Returns the ground truth of a database restricted to `rows`, indices renumbered 0..len(rows)-1."""
    position = {int(r): i for i, r in enumerate(rows)}
    return [{key: np.array([position[int(j)] for j in values if int(j) in position], dtype=np.int64)
             for key, values in query.items() if key in ("easy", "hard", "junk", "ok")} for query in gnd]


def landmark_of(image_id: str) -> str:
    """Returns the place an image is named after: its id without the trailing number (paris_eiffel_000266 -> paris_eiffel)."""
    return re.sub(r"_\d+$", "", image_id)


def query_landmarks(gnd: Sequence[dict], db_ids: Sequence[str], query_ids: Sequence[str]) -> list[str]:
    """Returns each query's landmark: the name most of its positives carry (its own name if it has none).

    A query's file name can mislead: paris_defense_000038 shows the Arc de Triomphe.
    """
    out = []
    for qid, query in zip(query_ids, gnd):
        names = Counter(landmark_of(db_ids[int(j)]) for key in ("easy", "hard", "ok") for j in query.get(key, ()))
        out.append(names.most_common(1)[0][0] if names else landmark_of(qid))
    return out


@dataclass(frozen=True)
class FewPhotos:
    """One few-photos database: `landmark`'s photos subsampled to `kept`, `rows` the database kept (sorted)."""

    landmark: str
    draw: int
    queries: np.ndarray  # the landmark's queries
    rows: np.ndarray
    kept: np.ndarray


def few_photo_databases(n_db: int, gnd: Sequence[dict], landmarks: Sequence[str], *, keep: int, draws: int,
                        seed: int) -> list[FewPhotos]:
    """Returns, for each landmark and draw, the database with that landmark's photos subsampled to `keep`.

    A landmark's photos are every image that is a positive or junk of one of its queries; draw d keeps
    the first `keep` of them in the order of `np.random.default_rng(seed + d).permutation`; every
    other image of the `n_db` stays.
    """
    out = []
    for landmark in sorted(set(landmarks)):
        queries = np.array([i for i, name in enumerate(landmarks) if name == landmark])
        photos = np.unique(np.concatenate([np.asarray(gnd[i][key], np.int64) for i in queries
                                           for key in ("easy", "hard", "junk", "ok") if key in gnd[i]]))
        others = np.setdiff1d(np.arange(n_db), photos)
        for draw in range(draws):
            kept = np.sort(np.random.default_rng(seed + draw).permutation(photos)[:keep])
            out.append(FewPhotos(landmark, draw, queries, np.sort(np.concatenate([others, kept])), kept))
    return out


def leave_one_landmark_out(aps: dict[str, np.ndarray], landmarks: Sequence[str]) -> tuple[dict[str, str], np.ndarray]:
    """Scores each landmark's queries with the option chosen on the other landmarks' queries.

    Args:
        aps: {option: (m, c) per-query APs in c columns (Medium and Hard of each setting), NaN
            where a query has no positive}; every option the same shape.
        landmarks: (m,) each query's landmark.

    Returns:
        ({landmark: the option chosen without it}, (m, c) the APs each query gets from its own
        landmark's choice). The choice maximises the mean over columns of each column's mAP
        over the other landmarks' queries; a tie goes to the option listed first.
    """
    names = list(aps)
    landmarks = np.asarray(landmarks)
    chosen, out = {}, np.full(next(iter(aps.values())).shape, np.nan)
    for landmark in sorted(set(landmarks.tolist())):
        train, test = landmarks != landmark, landmarks == landmark
        merit = [np.nanmean(np.nanmean(aps[name][train], axis=0)) for name in names]
        chosen[landmark] = names[int(np.argmax(merit))]
        out[test] = aps[chosen[landmark]][test]
    return chosen, out


# ---------------------------------------------------------------- scoring


def query_aps(db: np.ndarray, queries: np.ndarray, gnd: list[dict], kind: str, recipe: Recipe,
              whitening=None, reuse: dict | None = None) -> np.ndarray:
    """Returns (m, 2) per-query AP, Medium and Hard, of one recipe on (n, d) database and (m, d) query rows.

    `reuse`: kept by the caller for this database, its DBA rows and graphs (see `rank_queries`).
    """
    ranks, _ = rank_queries(db, queries, backend="exact", whitening=whitening, qe=recipe.qe, dba=recipe.dba,
                            alpha=recipe.alpha, diffusion=recipe.diffusion, reuse=reuse)
    metrics = evaluate_ranks(ranks, gnd, kind)
    return np.stack([metrics[p]["aps"] for p in PROTOCOLS], axis=1)


def few_photos_aps(db: np.ndarray, queries: np.ndarray, gnd: list[dict], kind: str, recipe: Recipe,
                   databases: list[FewPhotos], reuse: dict | None = None) -> np.ndarray:
    """Returns (m, 2) per-query AP, Medium and Hard, with few photos: each query's mean over the draws.

    `reuse`: {(landmark, draw): dict} kept by the caller, one `rank_queries` reuse dict per database.
    """
    found = np.full((max(d.draw for d in databases) + 1, len(queries), len(PROTOCOLS)), np.nan)
    for few in databases:
        part = [gnd[i] for i in few.queries]
        kept = None if reuse is None else reuse.setdefault((few.landmark, few.draw), {})
        found[few.draw, few.queries] = query_aps(db[few.rows], queries[few.queries], restrict_gnd(part, few.rows),
                                                 kind, recipe, reuse=kept)
    counted = ~np.isnan(found)
    return np.where(counted.any(0), np.nansum(found, 0) / np.maximum(counted.sum(0), 1), np.nan)


def mean_ap(aps: np.ndarray) -> dict:
    """Returns {medium, hard} mAP of (m, 2) per-query APs (queries without a positive left out)."""
    return {p: round(float(np.nanmean(aps[:, j])), 6) for j, p in enumerate(PROTOCOLS)}


@dataclass
class Collection:
    """The raw descriptors and ground truth every setting is cut from.

    `reuse` holds, per setting, what `rank_queries` made of its database (DBA rows, graphs) and the
    distractors drawn, so that candidates of one descriptor share them.
    """

    db: np.ndarray
    queries: np.ndarray
    gnd: list[dict]
    kind: str
    halves: tuple[np.ndarray, np.ndarray]
    few: list[FewPhotos]
    reuse: dict = field(default_factory=dict)

    def kept(self, setting) -> dict:
        """Returns the reuse dict of one setting's database."""
        return self.reuse.setdefault(setting, {})

    def with_distractors(self, count: int, seed: int) -> np.ndarray:
        """Returns the database with `count` synthetic distractors fitted to it appended (drawn once)."""
        if ("distractors", count, seed) not in self.reuse:
            extra = sample_distractors(fit_distractor_model(self.db), count, seed=seed)
            self.reuse["distractors", count, seed] = np.concatenate([self.db, extra])
        return self.reuse["distractors", count, seed]


def run_candidate(candidate: Candidate, data: Collection, *, distractors: int, seed: int) -> tuple[dict, dict]:
    """Returns ({setting: {medium, hard}}, {setting: (m, 2) per-query APs} of full and few photos) for one candidate."""
    recipe, out, per_query = candidate.recipe, {}, {}
    plain = candidate.whiten is None  # a whitened database is another database: nothing reused
    if plain:
        per_query["full"] = query_aps(data.db, data.queries, data.gnd, data.kind, recipe, reuse=data.kept("full"))
        out["full"] = mean_ap(per_query["full"])
    for name, rows, other in (("half A", data.halves[0], data.halves[1]), ("half B", data.halves[1], data.halves[0])):
        whitening = None if plain else learn_whitening(data.db[other], shrinkage=candidate.whiten)
        out[name] = mean_ap(query_aps(data.db[rows], data.queries, restrict_gnd(data.gnd, rows), data.kind, recipe,
                                      whitening, reuse=data.kept(name) if plain else None))
    if plain and distractors:
        out[f"+{distractors // 1000}k distractors"] = mean_ap(query_aps(
            data.with_distractors(distractors, seed), data.queries, data.gnd, data.kind, recipe,
            reuse=data.kept("distractors")))
    if plain:
        per_query["few photos"] = few_photos_aps(data.db, data.queries, data.gnd, data.kind, recipe, data.few,
                                                 reuse=data.kept("few photos"))
        out["few photos"] = mean_ap(per_query["few photos"])
    return out, per_query


def run_family(options: dict[str, Recipe], data: Collection, landmarks: list[str],
               measured: dict[str, dict] | None = None) -> dict:
    """Returns one family's leave-one-landmark-out result: each option's full and few-photos mAP, the choices, the pooled mAP.

    `measured`: {option: {"full", "few photos": (m, 2) per-query APs}} already measured, instead of `options`.
    """
    aps, scores = {}, {}
    for name in (measured or options):
        if measured:
            full, few = measured[name]["full"], measured[name]["few photos"]
        else:
            full = query_aps(data.db, data.queries, data.gnd, data.kind, options[name], reuse=data.kept("full"))
            few = few_photos_aps(data.db, data.queries, data.gnd, data.kind, options[name], data.few,
                                 reuse=data.kept("few photos"))
        aps[name] = np.concatenate([full, few], axis=1)
        scores[name] = {"full": mean_ap(full), "few photos": mean_ap(few)}
    chosen, held_out = leave_one_landmark_out(aps, landmarks)
    return {"options": scores, "chosen": chosen,
            "left out": {"full": mean_ap(held_out[:, :2]), "few photos": mean_ap(held_out[:, 2:])}}


# ---------------------------------------------------------------- tables and command


def _pair(result: dict | None) -> str:
    return "" if result is None else f"{100 * result['medium']:.1f} / {100 * result['hard']:.1f}"


def table(results: list[dict], settings: list[str]) -> dict:
    """Returns the README table: one row per candidate, Medium / Hard mAP per setting."""
    rows = [[r["name"], *[_pair(r["map"].get(s)) for s in settings]] for r in results]
    return {"columns": ["candidate", *[f"{s} M / H" for s in settings]], "align": "l" + "r" * len(settings), "rows": rows}


def family_table(families: dict[str, dict]) -> dict:
    """Returns the leave-one-landmark-out table: per family, the held-out mAP and what was chosen."""
    rows = []
    for name, result in families.items():
        picks = Counter(result["chosen"].values()).most_common()
        chosen = "; ".join(f"{option or 'fixed'} ({count})" for option, count in picks)
        options = str(len(result["options"]))
        rows.append([name, options, _pair(result["left out"]["full"]),
                     _pair(result["left out"]["few photos"]), chosen])
    return {"columns": ["family", "options", "full M / H", "few photos M / H", "chosen (landmarks)"],
            "align": "lrrrl", "rows": rows}


def load_collection(args: argparse.Namespace, dataset, network, pipeline: Pipeline) -> Collection:
    found = dataset_descriptors(dataset, network, pipeline, cache_dir=args.cache_dir)
    perm = np.random.default_rng(args.seed).permutation(len(dataset.db_ids))
    halves = (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :]))
    landmarks = query_landmarks(dataset.gnd, dataset.db_ids, dataset.query_ids)
    few = few_photo_databases(len(dataset.db_ids), dataset.gnd, landmarks, keep=args.keep, draws=args.draws,
                              seed=args.seed)
    return Collection(found.db, found.queries, dataset.gnd, dataset.kind, halves, few)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--dataset", default="rparis6k")
    parser.add_argument("--network", default="efficientnet-lite0")
    parser.add_argument("--distractors", type=int, default=10_000, help="synthetic distractors added (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halves, the distractors and the first draw")
    parser.add_argument("--keep", type=int, default=5, help="photos kept of the query's landmark (few photos)")
    parser.add_argument("--draws", type=int, default=10, help="draws of the few photos kept")
    parser.add_argument("--only", default=None, help="run only candidates whose name contains this; write nothing")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--json", default=str(ROOT / "results" / "stability.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from retrieval.networks import build_network

    dataset = load_dataset(args.dataset, args.data_root)
    network = build_network(args.network, weights="imagenet")
    landmarks = query_landmarks(dataset.gnd, dataset.db_ids, dataset.query_ids)
    collections: dict[Pipeline, Collection] = {}
    results, measured = [], {}
    for candidate in CANDIDATES:
        if args.only and args.only not in candidate.name:
            continue
        pipeline = candidate.recipe.descriptor
        if pipeline not in collections:
            collections[pipeline] = load_collection(args, dataset, network, pipeline)
        result, per_query = run_candidate(candidate, collections[pipeline], distractors=args.distractors,
                                          seed=args.seed)
        if pipeline == DEFAULT.descriptor and per_query:
            measured[candidate.name] = per_query
        print(candidate.name, json.dumps(result), flush=True)
        results.append({"name": candidate.name, "recipe": _recipe_meta(candidate), "map": result})
    if args.only is not None:
        return 0
    families = {}
    for name, options in {**FAMILIES, EVERY_CANDIDATE: None}.items():
        families[name] = run_family(options or {}, collections[DEFAULT.descriptor], landmarks,
                                    measured if options is None else None)
        print(name, json.dumps(families[name]["left out"]), flush=True)
    write_report(args, dataset, network, landmarks, results, families)
    return 0


def write_report(args, dataset, network, landmarks, results, families) -> None:
    settings = ["full", "half A", "half B"] + ([f"+{args.distractors // 1000}k distractors"] if args.distractors else [])
    settings.append("few photos")
    defaults = [a for a, v in (("--distractors", args.distractors != 10_000), ("--keep", args.keep != 5),
                               ("--draws", args.draws != 10), ("--seed", args.seed != 0)) if v]
    report = {
        "command": "python -m benchmarks.stability" + "".join(f" {a} {getattr(args, a[2:])}" for a in defaults),
        "dataset": dataset.name, "network": network.name, "database_size": len(dataset.db_ids),
        "seed": args.seed, "distractors": args.distractors, "keep": args.keep, "draws": args.draws,
        "query_landmarks": dict(zip(dataset.query_ids, landmarks)),
        "candidates": results, "families": families,
        "tables": {"stability": table(results, settings), "leave_one_out": family_table(families)},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _recipe_meta(candidate: Candidate) -> dict:
    r = candidate.recipe
    return {"pipeline": r.descriptor.to_meta(), "qe": r.qe, "dba": r.dba, "alpha": r.alpha,
            "diffusion": r.diffusion.to_meta() if r.diffusion else None, "whiten_other_half": candidate.whiten}


if __name__ == "__main__":
    sys.exit(main())
