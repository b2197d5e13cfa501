from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid_transformers import (
    LATransformerConfig,
    LATransformerImageProcessor,
    LATransformerModel,
)

from .reid_model_tests import ReIDModelTests

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
    assert LATransformerConfig().num_rows == 14  # 224x224, the default
    assert LATransformerConfig(image_size=(256, 128)).num_rows == 16
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
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"image_size": (4, 16)}, "smaller than one patch"),
        ({"classifier_activation": "gelu"}, "classifier_activation must be one of"),
        ({"test_feature": "cls"}, "test_feature must be one of"),
        ({"gelt_lambda": -1}, "gelt_lambda must be a number >= 0"),
        ({"num_identities": -2}, "num_identities must be an integer >= 0"),
        ({"classifier_dropout": 1.0}, r"classifier_dropout must be in \[0.0, 1.0\)"),
        ({"patch_stride": 9}, "patch_stride"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        LATransformerConfig(**{**TINY, **overrides})
