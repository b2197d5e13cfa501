"""docs/synthetic_data.md quotes the colour baseline's scores once, with the snippet that
measures them: running the snippet must print exactly the table rows the page shows, and the
baseline the page calls the default must be the class's defaults."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path

from reid_transformers.baselines import ColorHistogramEmbedder

DOC = Path(__file__).resolve().parents[1] / "docs" / "synthetic_data.md"
SECTION = "## Difficulty, measured"


def _section() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC} has no {SECTION!r} section"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def _snippet(section: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section should hold one Python snippet, the measurement"
    return blocks[0]


def test_the_quoted_scores_are_what_the_snippet_prints(tmp_path, monkeypatch):
    section = _section()
    # The snippet generates the default dataset into the cache; here, a fresh one.
    monkeypatch.setenv("REID_TRANSFORMERS_CACHE", str(tmp_path))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_snippet(section), str(DOC), "exec"), {"__name__": "snippet"})
    rows = printed.getvalue().splitlines()
    assert len(rows) == 3 and all(row.startswith("| ") for row in rows), rows
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[2:] == rows  # the header, the rule, then exactly the printed rows


def test_the_documented_default_baseline_is_the_class_default():
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(ColorHistogramEmbedder).parameters.items()
    }
    section = _section()
    described = (
        f"num_stripes={defaults['num_stripes']}, bins={defaults['bins']}, "
        f"center_fraction={defaults['center_fraction']}, image_size={defaults['image_size']}"
    )
    assert f"`ColorHistogramEmbedder()`, the defaults: {described}" in section
