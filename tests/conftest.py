"""Shared fixtures: the tiny random-weight network, real Paris data and a Lite0 index of it.

A test that needs something this machine may lack (../shared/data, Chromium) calls
`require`: outside CI it skips and says why; under CI (env CI set, as `.ci/run` and most CI
services do) it fails, so that nothing is silently left out of a CI run.
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RPARIS = DATA / "rparis6k"

# Property tests: a fixed, small budget (the suite must stay fast on 2 cores), no deadline (a
# loaded machine would make timing flaky), reproducible examples and no example database on disk.
settings.register_profile("repo", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repo"))


def in_ci() -> bool:
    """Tells whether the tests run under CI: env CI set to anything but "", "0" or "false"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require(present: bool, what: str) -> None:
    """Skips the calling test (fails it under CI) when `present` is false, naming what is missing."""
    if present:
        return
    if in_ci():
        pytest.fail(f"{what}; under CI every test must run, so this fails instead of skipping", pytrace=False)
    pytest.skip(what)


def require_shared(path: Path = RPARIS) -> Path:
    """Returns `path` under ../shared/data, after `require`-ing that it exists."""
    shown = f"../shared/data/{path.relative_to(DATA).as_posix()}" if path.is_relative_to(DATA) else str(path)
    require(path.exists(), f"{shown} is not present (../shared/data holds the Paris photos and ground truth)")
    return path


@pytest.fixture(scope="session")
def tiny():
    from retrieval.networks import tiny_network

    return tiny_network(seed=0, channels=8)


@pytest.fixture(scope="session")
def lite0():
    from retrieval.networks import build_network

    return build_network("efficientnet-lite0", weights="imagenet", runtime="keras")  # the reference runtime


@pytest.fixture(scope="session")
def rparis_dir():
    require_shared(RPARIS / "jpg")
    return RPARIS


@pytest.fixture(scope="session")
def lite0_index(tmp_path_factory, lite0, rparis_dir):
    """A Lite0 index of ../shared/data/rparis6k/jpg (409 images) with the default recipe, built once."""
    from retrieval.build import build_index
    from retrieval.defaults import DEFAULT

    out = tmp_path_factory.mktemp("lite0") / "index"
    build_index(rparis_dir / "jpg", out, lite0, DEFAULT.descriptor, batch_size=8, **DEFAULT.build_options())
    return out
