"""docs/reproducing.md: every ablation command names switches that exist and build."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoConfig

import reid_transformers  # noqa: F401  (registers the architectures with AutoConfig)

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"
SECTIONS = {
    "LA-Transformer": "la_transformer",
    "AAformer": "aaformer",
    "PAN": "pan",
    "HAT": "hat",
    "PRCT": "prct",
}


def _overrides_by_architecture() -> list[tuple[str, dict]]:
    rows, architecture = [], None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## (.+)", line)
        if heading:
            architecture = SECTIONS.get(heading.group(1).strip())
        named = re.search(r"--model (\w+)", line)
        for found in re.findall(r"--model_overrides '([^']*)'", line):
            rows.append((named.group(1) if named else architecture, json.loads(found)))
    return rows


ROWS = _overrides_by_architecture()


def test_the_page_lists_ablations_of_every_paper():
    assert {architecture for architecture, _ in ROWS} >= set(SECTIONS.values())
    assert len(ROWS) >= 20


@pytest.mark.parametrize(("architecture", "overrides"), ROWS, ids=lambda v: json.dumps(v))
def test_every_ablation_row_is_a_valid_config(architecture, overrides):
    config = AutoConfig.for_model(architecture, num_identities=751, **overrides)
    for name, value in overrides.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, name) == expected, name
