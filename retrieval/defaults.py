"""The default pipeline, defined once: every entry point (build, app, evaluation, benchmark) takes it from here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from retrieval.diffusion import DiffusionSettings
from retrieval.features import REPORT_PIPELINE, Pipeline


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a ranking: the descriptor and the re-ranking around the search.

    Attributes:
        descriptor: how an image becomes a descriptor (resizing, pooling, scales).
        dba: database-side augmentation with this many neighbours, applied when the index is built.
        qe: alpha query expansion with the top `qe` results, applied at query time.
        alpha: similarity exponent of DBA and QE.
        ann_rows: indexes of at least this many rows get an ANN structure (FAISS) without
            being asked, and their DBA finds neighbours through it instead of all pairs.
        diffusion: diffusion re-ranking over the database's kNN graph (built with the index),
            after QE; None for none.
    """

    descriptor: Pipeline = field(default_factory=Pipeline)
    dba: int = 0
    qe: int = 0
    alpha: float = 3.0
    # Measured (docs/scale.md, "A million images"): from about 50,000 rows of 2,560 dimensions exact search
    # passes 15 ms a query on 2 cores and all-pairs DBA a minute, while the ANN stays near 1 ms.
    ann_rows: int = 50_000
    diffusion: DiffusionSettings | None = None

    def build_options(self) -> dict:
        """Returns the build's re-ranking options (dba, qe, alpha, diffusion), for `build_index(...,
        recipe.descriptor, **recipe.build_options())`: every build engine takes the recipe whole."""
        return {"dba": self.dba, "qe": self.qe, "alpha": self.alpha, "diffusion": self.diffusion}

    def to_meta(self) -> dict:
        """Returns the index.json entries that record this recipe: pipeline, dba, query_expansion, diffusion.

        The one place a recipe is written into an index; `from_meta` reads it back.
        """
        return {
            "pipeline": self.descriptor.to_meta(),
            "dba": {"k": self.dba, "alpha": self.alpha} if self.dba > 0 else None,
            "query_expansion": {"k": self.qe, "alpha": self.alpha} if self.qe > 0 else None,
            "diffusion": self.diffusion.to_meta() if self.diffusion is not None else None,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> Recipe:
        """Returns the recipe an index.json records (today's and earlier ones: absent entries are "none")."""
        dba, qe, diffusion = meta.get("dba") or {}, meta.get("query_expansion") or {}, meta.get("diffusion")
        return cls(
            descriptor=Pipeline.from_meta(meta["pipeline"]),
            dba=int(dba.get("k", 0)),
            qe=int(qe.get("k", 0)),
            alpha=float(qe.get("alpha", dba.get("alpha", 3.0))),
            diffusion=DiffusionSettings.from_meta(diffusion) if diffusion else None,
        )


# Chosen by measurement with EfficientNet-Lite0 on the mini RParis (docs/evaluation.md): max side 384
# was best of 224-1024 on Easy and Medium, within noise on Hard; DBA k=3 and alpha QE k=5 (alpha 3) are
# where the measured grid levels off. Fixed-shape buckets by resizing (docs/build.md, "Fixed-shape batches") keep
# the mAP without diffusion (+0.7 Medium, +1.0 Hard; padding +0.9, +0.8) and make every batch one of
# 10 shapes. GeM p=4.6, R-MAC regions, max over scales and whitening did not gain beyond noise everywhere.
# PREVIOUS, this without diffusion, is the baseline a default must not lose Medium or Hard against in any
# setting of benchmarks.stability (full, halves, +10k distractors, few photos).
PREVIOUS = Recipe(descriptor=Pipeline(pooling="gem", max_side=384, gem_p=3.0, bucket="resize"), dba=3, qe=5, alpha=3.0)
# Diffusion (docs/evaluation.md, "Stability" and "Few photos"): over the whole graph it gained on the
# full set, the halves and with distractors but lost 4.8 Medium against PREVIOUS when the query's place
# has 5 photos, and it cost 136 ms a query at 300,000 rows. Truncated to the first ranking's top 1000
# (the stored graph's subgraph, at query time), each score divided by the image's degree^0.25 (self
# loops included) and blended half and half with the query's similarity, it holds against PREVIOUS in
# every setting; k=20, 10 seeds, alpha 0.95 as before.
DEFAULT = replace(PREVIOUS, diffusion=DiffusionSettings(k=20, seeds=10, alpha=0.95, gamma=3.0, candidates=1000,
                                                        truncate=True, self_loops=True, degree_power=0.25,
                                                        blend=0.5))


def approximate(rows: int, asked: bool | None = None) -> bool:
    """Tells whether `rows` descriptors are searched through an ANN structure (and their DBA and
    diffusion graph find neighbours through it): `asked` when given, else from DEFAULT.ann_rows rows up.

    The one place this rule is written: the build, the --vectors build, the evaluation and the
    distractor database all call it.
    """
    return bool(asked) if asked is not None else rows >= DEFAULT.ann_rows


# The student report's pipeline: 224x224 squash, flattened feature map, no re-ranking.
REPORT = Recipe(descriptor=REPORT_PIPELINE, dba=0, qe=0, alpha=3.0)
