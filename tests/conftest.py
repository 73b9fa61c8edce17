"""Shared fixtures: the tiny random-weight network, real Paris data and a Lite0 index of it."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RPARIS = DATA / "rparis6k"


@pytest.fixture(scope="session")
def tiny():
    from retrieval.networks import tiny_network

    return tiny_network(seed=0, channels=8)


@pytest.fixture(scope="session")
def lite0():
    from retrieval.networks import build_network

    return build_network("efficientnet-lite0", weights="imagenet")


@pytest.fixture(scope="session")
def rparis_dir():
    if not (RPARIS / "jpg").is_dir():
        pytest.skip("../shared/data/rparis6k is not present")
    return RPARIS


@pytest.fixture(scope="session")
def lite0_index(tmp_path_factory, lite0, rparis_dir):
    """A Lite0 index of ../shared/data/rparis6k/jpg (409 images) with the default recipe, built once."""
    from retrieval.build import build_index
    from retrieval.defaults import DEFAULT

    out = tmp_path_factory.mktemp("lite0") / "index"
    build_index(rparis_dir / "jpg", out, lite0, DEFAULT.descriptor, batch_size=8,
                dba=DEFAULT.dba, qe=DEFAULT.qe, alpha=DEFAULT.alpha, diffusion=DEFAULT.diffusion)
    return out
