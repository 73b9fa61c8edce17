"""PCA-whitening of global descriptors, learned from a set of descriptors and stored with an index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.search import as_rows, l2_normalize


@dataclass(frozen=True)
class Whitening:
    """x -> normalise((x - mean) @ projection).

    Attributes:
        mean: (d,) float32 mean of the training descriptors.
        projection: (d, d_out) float32; columns are principal directions scaled by
            1 / sqrt(eigenvalue + shrinkage * mean eigenvalue).
        shrinkage: the regulariser used, recorded in the index metadata.
    """

    mean: np.ndarray
    projection: np.ndarray
    shrinkage: float

    @property
    def dim_in(self) -> int:
        return self.projection.shape[0]

    @property
    def dim_out(self) -> int:
        return self.projection.shape[1]

    def to_meta(self) -> dict:
        return {"method": "pca", "dim_in": self.dim_in, "dim_out": self.dim_out, "shrinkage": self.shrinkage}


def learn_whitening(x: np.ndarray, *, dim: int | None = None, shrinkage: float = 0.5) -> Whitening:
    """Returns a PCA-whitening learned from (n, d) descriptors.

    With n training rows the centred covariance has rank at most n - 1, often below d. Only
    directions with a usable eigenvalue are kept (at most n - 1), and every eigenvalue is
    shrunk towards the mean by adding `shrinkage` times the mean eigenvalue, so that the
    weakest directions, mostly noise, are not blown up.

    Args:
        x: (n, d) training descriptors, n >= 2.
        dim: keep at most this many output dimensions (default: all usable ones).
        shrinkage: 0 is plain PCA-whitening; larger values whiten less.

    Raises:
        ValueError: with fewer than two rows, or a non-positive dim.
    """
    x = as_rows(x, name="training descriptors").astype(np.float64)
    if len(x) < 2:
        raise ValueError("whitening needs at least two training descriptors")
    if dim is not None and dim < 1:
        raise ValueError(f"whitening dim must be positive, got {dim}")
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    mean = x.mean(axis=0)
    xc = x - mean
    # The SVD of the centred data gives the covariance eigenvectors without forming d x d.
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    eig = s**2 / len(x)
    usable = eig > eig[0] * 1e-9
    keep = int(usable.sum())
    if dim is not None:
        keep = min(keep, dim)
    eig, vt = eig[:keep], vt[:keep]
    scale = 1.0 / np.sqrt(eig + shrinkage * eig.mean())
    projection = (vt.T * scale).astype(np.float32)
    return Whitening(mean.astype(np.float32), np.ascontiguousarray(projection), float(shrinkage))


def apply_whitening(x: np.ndarray, whitening: Whitening) -> np.ndarray:
    """Returns (n, d_out) float32 L2-normalised whitened rows of (n, d_in) descriptors."""
    x = as_rows(x)
    if x.shape[1] != whitening.dim_in:
        raise ValueError(f"descriptor dimension {x.shape[1]} does not match the whitening's {whitening.dim_in}")
    return l2_normalize((x - whitening.mean) @ whitening.projection)
