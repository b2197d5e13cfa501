"""``pipeline("image-feature-extraction")`` on a re-ID model: ``pool=True``, ``pool=False`` and
no ``pool`` argument all return the retrieval embedding, one ``D``-vector per image (in
transformers ``pool=False`` usually means per-token features; a re-ID model's first output is
its embedding, and that is what the documentation says), and the per-token / per-stage
features are in ``hidden_states``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

# Modules, not their test classes: a class imported here would be collected and run again.
from . import test_aaformer, test_hat, test_la_transformer, test_pan, test_prct

SUITES = {
    "la_transformer": test_la_transformer.TestLATransformer,
    "aaformer": test_aaformer.TestAAformer,
    "pan": test_pan.TestPAN,
    "hat": test_hat.TestHAT,
    "prct": test_prct.TestPRCT,
}
DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


@pytest.mark.parametrize("architecture", sorted(SUITES))
def test_every_pool_setting_returns_one_embedding_per_image(architecture):
    suite = SUITES[architecture]()
    model, processor = suite.make_model().eval(), suite.processor()
    extractor = pipeline("image-feature-extraction", model=model, image_processor=processor)
    height, width = suite.tiny_config().image_size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        direct = model(pixels, output_hidden_states=True)
    expected = direct.embeddings
    for options in ({}, {"pool": False}, {"pool": True}):
        got = torch.tensor(extractor(image, **options))
        assert got.shape == expected.shape, (options, got.shape)  # (1, D): no token axis
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The features before pooling, for whoever wants them: token sequences or stage maps.
    assert direct.hidden_states and all(h.ndim in (3, 4) for h in direct.hidden_states)


def test_the_documentation_says_what_pool_false_returns():
    section = DOC.read_text(encoding="utf-8").split("## What a model returns", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "`pool=False`" in section and "output_hidden_states=True" in section
