"""The built wheel carries the model card templates and renders a card from them.

The templates' one source is the project's top-level ``model_cards/`` folder, which setup.py /
setup.cfg install as ``reid_transformers.model_cards``. The editable install the other tests
use reads them from that folder; this test builds a wheel from a copy of the project (offline,
no build isolation), unpacks it, and renders a card in a fresh interpreter that imports the
package from the unpacked wheel, from a folder outside the project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
# What a build reads: the packaging files, the package and the templates.
BUILD_INPUTS = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "src", "model_cards")
# Renders a tiny LA-Transformer's card and reports where the package and templates came from.
RENDER_SCRIPT = """
import json
import reid_transformers
from reid_transformers import LATransformerConfig, hub, render_model_card

config = LATransformerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, classifier_hidden_size=16)
card = render_model_card(config, model_name="wheel-check")
print(json.dumps({
    "package": reid_transformers.__file__,
    "templates": str(hub._template_files()),
    "available": hub.available_model_card_templates(),
    "card": str(card),
}))
"""


def build_wheel(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in BUILD_INPUTS:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=ignore)
        else:
            shutil.copy2(source, project / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(dist), str(project)],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )
    (wheel,) = dist.glob("reid_transformers-*.whl")
    return wheel


def test_an_installed_wheel_renders_cards_from_its_own_templates(tmp_path):
    wheel = build_wheel(tmp_path)
    templates = sorted(path.name for path in (PROJECT / "model_cards").glob("*.md.jinja"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(
            Path(name).name for name in archive.namelist()
            if name.startswith("reid_transformers/model_cards/") and name.endswith(".md.jinja")
        )
        assert shipped == templates
        site = tmp_path / "site"
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"  # not the project: nothing to import from by accident
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", RENDER_SCRIPT], cwd=elsewhere, env=env,
                          check=True, capture_output=True, text=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site)
    assert Path(report["templates"]) == site / "reid_transformers" / "model_cards"
    assert report["available"] == [name.removesuffix(".md.jinja") for name in templates
                                   if not name.startswith("_")]
    assert report["card"].startswith("---\n") and "# wheel-check" in report["card"]
