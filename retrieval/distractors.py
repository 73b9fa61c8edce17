"""Synthetic distractor descriptors drawn from a distribution fitted to real ones (this machine has no R1M).

Random unit vectors are no test of an approximate search or of re-ranking: they have no
structure, every one is nearly orthogonal to every other and to the queries. Real descriptors
live near a low-dimensional subspace and come in clusters (many photos of the same places and
kinds of scene). The model here keeps both:

- the mean and the top principal directions (with their variances) of real descriptors, and an
  isotropic residual for the remaining variance;
- a mixture: cluster centres are drawn from that Gaussian, and each distractor is a centre plus
  a smaller draw from the same Gaussian (`spread` of its scale), then L2-normalised.

Real distractor descriptors (for example R1M's) go through `precompute.build_index --vectors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.search import as_rows, l2_normalize


@dataclass(frozen=True)
class DistractorModel:
    """A Gaussian fitted to descriptors: mean (d,), directions (r, d) with their std (r,), residual std."""

    mean: np.ndarray
    directions: np.ndarray
    stds: np.ndarray
    residual_std: float

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def fit_distractor_model(features: np.ndarray, *, rank: int = 64) -> DistractorModel:
    """Returns the mean, top `rank` principal directions and residual spread of (n, d) descriptors.

    Raises:
        ValueError: for fewer than 2 rows, or rows that are not finite.
    """
    x = as_rows(features, name="features").astype(np.float64)
    if len(x) < 2:
        raise ValueError("fitting distractors needs at least 2 descriptors")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / (len(x) - 1)
    r = min(rank, len(var))
    residual = float(var[r:].sum() / max(x.shape[1] - r, 1))
    return DistractorModel(mean.astype(np.float32), vt[:r].astype(np.float32),
                           np.sqrt(var[:r]).astype(np.float32), float(np.sqrt(residual)))


def sample_distractors(model: DistractorModel, n: int, *, seed: int = 0, cluster_size: int = 20,
                       spread: float = 0.8, out: np.ndarray | None = None) -> np.ndarray:
    """Returns (n, d) float32 L2-normalised synthetic descriptors, in clusters of about `cluster_size`.

    Args:
        model: from `fit_distractor_model`.
        n: how many rows.
        seed: the same seed gives the same rows.
        cluster_size: mean number of rows around one centre (1 for no clusters).
        spread: within-cluster spread as a fraction of the fitted spread (0 < spread <= 1).
        out: an (n, d) array to fill instead (e.g. a float16 memory map: a million rows of 2,560
            never exist as float32 at once); it is returned.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    if not 0 < spread <= 1:
        raise ValueError(f"spread must be in (0, 1], got {spread}")
    rng = np.random.default_rng(seed)
    centres = _draw(model, max(1, -(-n // max(cluster_size, 1))), rng)
    which = rng.integers(0, len(centres), size=n)
    if out is None:
        out = np.empty((n, model.dim), np.float32)
    elif out.shape != (n, model.dim):
        raise ValueError(f"out must have shape {(n, model.dim)}, got {out.shape}")
    for start in range(0, n, 65536):  # in blocks, so a million rows never need a (n, d) float64 temporary
        stop = min(start + 65536, n)
        noise = _draw(model, stop - start, rng, centred=True) * spread
        # Around the mean: a centre's offset shrunk so that centre + noise keeps the fitted spread.
        offsets = (centres[which[start:stop]] - model.mean) * np.sqrt(1 - spread**2)
        out[start:stop] = l2_normalize(model.mean + offsets + noise)
    return out


def _draw(model: DistractorModel, n: int, rng: np.random.Generator, *, centred: bool = False) -> np.ndarray:
    coeff = rng.standard_normal((n, len(model.stds)), dtype=np.float32) * model.stds
    x = coeff @ model.directions
    x += rng.standard_normal((n, model.dim), dtype=np.float32) * model.residual_std
    if not centred:
        x += model.mean
    return x


def distribution_stats(features: np.ndarray, *, max_rows: int = 2000, seed: int = 0) -> dict:
    """Returns what the generator is judged by, on up to `max_rows` rows of (n, d) L2-normalised descriptors.

    nn1 / nn5: median similarity of a row to its nearest and fifth-nearest other row; mean_sim:
    median similarity of two rows; var_top10 / var_top64: share of the variance in the top 10 /
    64 principal directions. Compare sets of the same size: nearest neighbours get closer as
    a set grows.
    """
    x = as_rows(features, name="features")
    if len(x) > max_rows:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))]
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = -np.sort(-sims, axis=1)
    ev = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    ev /= ev.sum()
    return {"rows": len(x), "nn1": float(np.median(nearest[:, 0])), "nn5": float(np.median(nearest[:, min(4, len(x) - 2)])),
            "mean_sim": float(np.median(sims[np.isfinite(sims)])), "var_top10": float(ev[:10].sum()),
            "var_top64": float(ev[:64].sum())}
