"""The rule for tests that need what a machine may lack: skip and say why, but fail under CI."""

import pytest

from tests.conftest import DATA, in_ci, require, require_shared


@pytest.mark.parametrize("value, ci", [("true", True), ("1", True), ("yes", True), ("", False), ("0", False),
                                       ("false", False), ("False", False), (None, False)])
def test_ci_is_read_from_the_environment(monkeypatch, value, ci):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_missing_shared_data_skips_outside_ci_and_says_why(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared/data/nowhere/jpg is not present"):
        require_shared(DATA / "nowhere" / "jpg")


def test_missing_shared_data_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.\./shared/data/nowhere is not present.*under CI every test must run"):
        require_shared(DATA / "nowhere")
    with pytest.raises(pytest.fail.Exception, match="chromium is missing"):
        require(False, "chromium is missing")


def test_present_data_is_returned(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    assert require_shared(tmp_path) == tmp_path
    require(True, "never shown")
