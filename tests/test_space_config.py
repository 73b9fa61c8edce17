"""The README's front matter is the Space's configuration: keep it consistent with the code."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def front_matter():
    text = (ROOT / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Spaces front matter"
    return yaml.safe_load(match.group(1))


def test_front_matter_configures_a_gradio_space_matching_requirements():
    meta = front_matter()
    pinned = re.search(r"^gradio==([\w.]+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned, "requirements.txt must pin gradio"
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pinned.group(1)
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert meta["python_version"] == "3.11"
    assert meta["datasets"] and all("/" in d for d in meta["datasets"])
    assert 0 < len(meta["short_description"]) <= 60  # the Hub's limit


def test_readme_commands_name_real_modules():
    text = (ROOT / "README.md").read_text()
    for module in set(re.findall(r"python -m (precompute\.\w+)", text)):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
