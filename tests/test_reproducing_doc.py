"""docs/reproducing.md: every command on the page parses, and every ablation's overrides are
fields of the row's architecture config and build."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from transformers import AutoConfig

import reid_transformers  # noqa: F401  (registers the architectures with AutoConfig)
from reid_transformers.training import parse_arguments
from reid_transformers.training.arguments import check_model_overrides

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"
SECTIONS = {
    "LA-Transformer": "la_transformer",
    "AAformer": "aaformer",
    "PAN": "pan",
    "HAT": "hat",
    "PRCT": "prct",
}


def _rows() -> list[tuple[str, str]]:
    """(architecture, code span) of every code span with a flag, by section."""
    rows, architecture = [], None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## (.+)", line)
        if heading:
            architecture = SECTIONS.get(heading.group(1).strip())
        for span in re.findall(r"`((?:reid-transformers train|train|\.\.\.) [^`]*)`", line):
            named = re.search(r"--model (\w+)", span)
            rows.append((named.group(1) if named else architecture, span))
    return rows


ROWS = _rows()
OVERRIDES = [
    (architecture, json.loads(found))
    for architecture, span in ROWS
    for found in re.findall(r"--model_overrides '([^']*)'", span)
]


def test_the_page_lists_ablations_of_every_paper():
    assert {architecture for architecture, _ in OVERRIDES} >= set(SECTIONS.values())
    assert len(OVERRIDES) >= 20


@pytest.mark.parametrize(("architecture", "overrides"), OVERRIDES, ids=lambda v: json.dumps(v))
def test_every_ablation_row_is_a_valid_config(architecture, overrides):
    config_class = type(AutoConfig.for_model(architecture))
    check_model_overrides(config_class, overrides)  # a misspelt field fails here
    config = AutoConfig.for_model(architecture, num_identities=751, **overrides)
    for name, value in overrides.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, name) == expected, name


@pytest.mark.parametrize(("architecture", "span"), ROWS, ids=lambda v: str(v)[:60])
def test_every_command_parses_with_the_rows_preset(architecture, span):
    # "train ..." rows name their flags; "... --flag value" rows continue the section's
    # preset command. The dataset paths are placeholders.
    words = [w for w in shlex.split(span) if w not in ("reid-transformers", "train", "...")]
    if "--preset" not in words:
        words = ["--preset", architecture, *words]
    args = parse_arguments(words)
    assert args.preset in (*SECTIONS.values(), "tiny")


def test_the_page_has_commands_for_every_paper():
    assert {architecture for architecture, _ in ROWS} >= set(SECTIONS.values())
    assert len(ROWS) >= 40
