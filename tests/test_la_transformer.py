from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reid_transformers import (
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
)

from .reid_model_tests import ReIDModelTests, dead_parameters

TINY = dict(
    image_size=(32, 16), patch_size=8, patch_stride=8, hidden_size=32, num_hidden_layers=3,
    num_attention_heads=4, intermediate_size=64, num_identities=5, classifier_hidden_size=16,
)


class TestLATransformer(ReIDModelTests):
    model_class = LATransformerModel
    processor_class = LATransformerImageProcessor
    alternative_image_size = (48, 24)

    def tiny_config(self, **overrides):
        attn = overrides.pop("attn_implementation", None)
        config = LATransformerConfig(**{**TINY, **overrides})
        if attn is not None:
            config._attn_implementation = attn
        return config


class TestLATransformerGlobal(TestLATransformer):
    """The "LA Global" ablation: every row classifier sees the [CLS] token."""

    def tiny_config(self, **overrides):
        return super().tiny_config(**{"classifier_input": "global", **overrides})


class TestLATransformerCLSBaseline(TestLATransformer):
    """The single-classifier ViT baseline."""

    def tiny_config(self, **overrides):
        return super().tiny_config(**{"classification": "cls", **overrides})


def tiny_model(**overrides):
    torch.manual_seed(0)
    return LATransformerModel(TestLATransformer().tiny_config(**overrides)).eval()


def test_gelt_rows_and_unit_norm_embedding():
    model = tiny_model(gelt_lambda=0.5)
    x = torch.randn(2, 3, 32, 16)
    out = model(x)
    tokens = model.vit(x).last_hidden_state  # (B, 1 + 4 * 2, D)
    cls, patches = tokens[:, 0], tokens[:, 1:].reshape(2, 4, 2, 32)
    row_means = patches.mean(2)
    gelt = (row_means + 0.5 * cls[:, None]) / 1.5
    for i in range(4):
        torch.testing.assert_close(out.features[i], gelt[:, i])
    expected = (F.normalize(row_means, dim=-1) / 2).flatten(1)  # sqrt(4 rows) = 2
    torch.testing.assert_close(out.embeddings, expected)
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(2))

    gelt_model = tiny_model(gelt_lambda=0.5, test_feature="gelt")
    gelt_model.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        gelt_model(x).embeddings, (F.normalize(gelt, dim=-1) / 2).flatten(1)
    )


def test_loss_is_the_sum_of_row_cross_entropies():
    model = tiny_model()
    x, y = torch.randn(4, 3, 32, 16), torch.tensor([0, 1, 2, 4])
    out = model(x, labels=y)
    assert len(out.logits) == 4  # one classifier per patch row
    expected = sum(F.cross_entropy(logits, y) for logits in out.logits)
    torch.testing.assert_close(out.loss, expected)


def test_predict_identity_sums_row_softmaxes():
    model = tiny_model()
    x = torch.randn(3, 3, 32, 16)
    logits = model(x).logits
    expected = sum(row.softmax(-1) for row in logits).argmax(-1)
    assert torch.equal(model.predict_identity(x), expected)
    with pytest.raises(ValueError, match="row classifiers"):
        tiny_model(num_identities=0).predict_identity(x)


def test_row_classifier_layout_and_init():
    model = tiny_model(classifier_activation="relu", num_identities=2000, classifier_hidden_size=64)
    head = model.row_classifiers[0].requires_grad_(False)
    assert isinstance(head.activation, torch.nn.ReLU)
    assert abs(float(head.classifier.weight.std()) - 0.001) < 2e-4
    assert float(head.classifier.bias.abs().max()) == 0.0
    assert abs(float(head.norm.weight.mean()) - 1.0) < 0.02
    assert isinstance(tiny_model().row_classifiers[0].activation, torch.nn.Identity)


def test_fresh_model_initialises_every_parameter():
    model = tiny_model()
    cls = model.vit.embeddings.cls_token
    assert 0.005 < float(cls.std()) < 0.05 and torch.isfinite(cls).all()
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name


def test_row_count_follows_the_input_size():
    assert LATransformerConfig().num_patch_rows == 14  # 224x224, the default
    assert LATransformerConfig(image_size=(256, 128)).num_patch_rows == 16
    model = tiny_model()
    out = model(torch.randn(2, 3, 48, 16))  # 6 rows: embeddings, but no row classifiers
    assert out.embeddings.shape == (2, 6 * 32) and out.logits is None
    with pytest.raises(ValueError, match="6 patch rows vs 4 configured"):
        model(torch.randn(2, 3, 48, 16), labels=torch.tensor([0, 1]))


def test_256x128_input_has_16_row_classifiers():
    config = TestLATransformer().tiny_config(image_size=(256, 128), patch_size=16, patch_stride=16)
    model = LATransformerModel(config).eval()
    out = model(torch.randn(1, 3, 256, 128))
    assert len(out.logits) == 16 and out.embeddings.shape == (1, 16 * 32)
    assert math.isclose(float(out.embeddings.norm()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 30}, "divisible by num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be an integer >= 1"),
        ({"image_size": (4, 16)}, "smaller than one patch"),
        ({"classifier_activation": "gelu"}, "classifier_activation must be one of"),
        ({"test_feature": "cls"}, "test_feature must be one of"),
        ({"gelt_lambda": -1}, "gelt_lambda must be a number >= 0"),
        ({"num_identities": -2}, "num_identities must be an integer >= 0"),
        ({"classifier_dropout": 1.0}, r"classifier_dropout must be in \[0.0, 1.0\)"),
        ({"patch_stride": 9}, "patch_stride"),
        ({"classification": "pcb"}, "classification must be one of"),
        ({"classifier_input": "cls"}, "classifier_input must be one of"),
        (
            {"classification": "cls", "classifier_input": "global"},
            "classifier_input='global' needs classification='rows'",
        ),
        (
            {"classification": "cls", "test_feature": "gelt"},
            "test_feature='gelt' needs classification='rows'",
        ),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        LATransformerConfig(**{**TINY, **overrides})


# ---------------------------------------------------------------- input pipeline


def test_processor_follows_the_released_training_code():
    processor = LATransformerImageProcessor()
    assert processor.size == {"height": 224, "width": 224}
    assert processor.resample == Image.Resampling.BICUBIC
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8))
    pixels = processor(image, size={"height": 32, "width": 16}, return_tensors="pt")
    resized = np.asarray(image.resize((16, 32), Image.Resampling.BICUBIC), dtype=np.float64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((resized / 255 - mean) / std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(pixels["pixel_values"].numpy(), expected, atol=1e-5, rtol=0)


def test_plain_shuffled_batches_suffice():
    # Cross-entropy only, no triplet term: the trainer needs no identity-balanced sampler.
    assert LATransformerModel.requires_identity_balanced_batches is False


# ---------------------------------------------------------------- Table 2 ablations


@pytest.mark.parametrize(
    "overrides",
    [{}, {"classifier_input": "global"}, {"classification": "cls"}],
)
def test_every_parameter_gets_a_gradient(overrides):
    model = tiny_model(**overrides).train()
    model(torch.randn(4, 3, 32, 16), labels=torch.tensor([0, 1, 2, 4])).loss.backward()
    assert not dead_parameters(model)


def test_la_global_feeds_the_class_token_to_every_row_classifier():
    model = tiny_model(classifier_input="global")
    x, y = torch.randn(3, 3, 32, 16), torch.tensor([0, 1, 4])
    out = model(x, labels=y)
    tokens = model.vit(x).last_hidden_state
    cls = tokens[:, 0]
    assert len(out.features) == len(out.logits) == 4  # still one classifier per row
    for head, feature, logits in zip(model.row_classifiers, out.features, out.logits,
                                     strict=True):
        torch.testing.assert_close(feature, cls)
        torch.testing.assert_close(logits, head(cls))
    torch.testing.assert_close(out.loss, sum(F.cross_entropy(g, y) for g in out.logits))
    # The retrieval embedding is unchanged: the row means, as in LA-Transformer.
    row_means = tokens[:, 1:].reshape(3, 4, 2, 32).mean(2)
    torch.testing.assert_close(out.embeddings, (F.normalize(row_means, dim=-1) / 2).flatten(1))
    # Same weights, GELT input: different logits, so the switch really changes the input.
    gelt = tiny_model()
    gelt.load_state_dict(model.state_dict())
    assert not torch.allclose(gelt(x).logits[0], out.logits[0])


def test_cls_baseline_has_one_classifier_on_the_class_token():
    model = tiny_model(classification="cls")
    assert model.row_classifiers is None and model.cls_classifier is not None
    x, y = torch.randn(3, 3, 32, 16), torch.tensor([0, 1, 4])
    out = model(x, labels=y)
    cls = model.vit(x).last_hidden_state[:, 0]
    assert len(out.logits) == 1 and len(out.features) == 1
    torch.testing.assert_close(out.features[0], cls)
    torch.testing.assert_close(out.logits[0], model.cls_classifier(cls))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[0], y))
    torch.testing.assert_close(out.embeddings, F.normalize(cls, dim=-1))
    assert out.embeddings.shape == (3, 32)
    assert torch.equal(model.predict_identity(x), out.logits[0].argmax(-1))
    # One classifier, so any input size has logits and a loss.
    other = model(torch.randn(2, 3, 48, 16), labels=torch.tensor([0, 1]))
    assert other.logits[0].shape == (2, 5) and torch.isfinite(other.loss)
    assert tiny_model(classification="cls", num_identities=0).cls_classifier is None
