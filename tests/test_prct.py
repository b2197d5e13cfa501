from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid_transformers import PRCTConfig, PRCTImageProcessor, PRCTModel
from reid_transformers.backbones.vit import ViTSelfAttention
from reid_transformers.losses import batch_hard_triplet_loss, cross_entropy_with_label_smoothing
from reid_transformers.models.prct import (
    LinformerSelfAttention,
    resize_sequence_projection,
    sincos_position_encoding_2d,
)

from .reid_model_tests import TINY_TRUNK, ReIDModelTests, dead_parameters

# 64x32 -> a 4x2 stage-4 grid: n = 1 + 8 = 9 tokens; width 32 projected from 2048.
TINY = dict(
    image_size=(64, 32),
    num_identities=5,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    linformer_k=8,
    frozen_batch_norm=True,
)
GRID, TOKENS = (4, 2), 9


class TestPRCT(ReIDModelTests):
    model_class = PRCTModel
    processor_class = PRCTImageProcessor
    alternative_image_size = (96, 32)  # 6x2 grid, 13 tokens: E/F and positions resized

    def tiny_config(self, **overrides):
        # The shared suite runs on the tiny trunk; this file's own tests on ResNet-50's
        # stage widths, which their expected values spell out.
        attn = overrides.pop("attn_implementation", None)
        config = PRCTConfig(**{**TINY_TRUNK, **TINY, **overrides})
        if attn is not None:
            config._attn_implementation = attn
        return config


def tiny_model(**overrides):
    torch.manual_seed(0)
    return PRCTModel(PRCTConfig(**{**TINY, **overrides})).eval()


# ---------------------------------------------------------------- position code


def test_sincos_code_equals_the_formula_at_hand_picked_positions():
    code = sincos_position_encoding_2d(3, 4, 8)  # half = 4: frequencies 1 and 10000^(-1/2)
    assert code.shape == (12, 8) and code.dtype == torch.float32
    for y, x in [(0, 0), (2, 3), (1, 2), (2, 0)]:
        w0, w1 = 1.0, 1.0 / 10000 ** (2 / 4)
        expected = [
            math.sin(x * w0),
            math.cos(x * w0),
            math.sin(x * w1),
            math.cos(x * w1),
            math.sin(y * w0),
            math.cos(y * w0),
            math.sin(y * w1),
            math.cos(y * w1),
        ]
        torch.testing.assert_close(code[y * 4 + x], torch.tensor(expected), atol=1e-6, rtol=0)
    wide = sincos_position_encoding_2d(2, 5, 16, dtype=torch.float64)  # half 8, i = 0..3
    y, x = 1, 4
    for i in range(4):
        angle_x, angle_y = x / 10000 ** (2 * i / 8), y / 10000 ** (2 * i / 8)
        assert wide[y * 5 + x, 2 * i].item() == pytest.approx(math.sin(angle_x), abs=1e-12)
        assert wide[y * 5 + x, 2 * i + 1].item() == pytest.approx(math.cos(angle_x), abs=1e-12)
        assert wide[y * 5 + x, 8 + 2 * i].item() == pytest.approx(math.sin(angle_y), abs=1e-12)
        assert wide[y * 5 + x, 9 + 2 * i].item() == pytest.approx(math.cos(angle_y), abs=1e-12)


def test_sincos_code_shift_is_a_rotation_of_each_frequency_pair():
    rows, cols, dim = 9, 7, 24
    code = sincos_position_encoding_2d(rows, cols, dim, dtype=torch.float64).reshape(
        rows, cols, dim
    )
    half = dim // 2
    frequencies = [1.0 / 10000 ** (2 * i / half) for i in range(half // 2)]

    def rotation(angle):
        return torch.tensor(
            [[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]],
            dtype=torch.float64,
        )

    for pos, k in [(0, 1), (1, 3), (2, 4), (5, 1), (0, 6)]:
        for i, w in enumerate(frequencies):
            x_pair, y_pair = slice(2 * i, 2 * i + 2), slice(half + 2 * i, half + 2 * i + 2)
            # Along x (any row), the x pair rotates by k * w; the y pair does not move.
            for row in (0, 3):
                torch.testing.assert_close(
                    code[row, pos + k, x_pair], rotation(k * w) @ code[row, pos, x_pair]
                )
                torch.testing.assert_close(code[row, pos + k, y_pair], code[row, pos, y_pair])
            if pos + k < rows:  # along y (any column)
                for col in (0, 6):
                    torch.testing.assert_close(
                        code[pos + k, col, y_pair], rotation(k * w) @ code[pos, col, y_pair]
                    )


def test_sincos_code_rejects_widths_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_encoding_2d(2, 2, 6)


def test_position_switches_and_the_code_used_in_the_model():
    model = tiny_model(position_encoding="sine", hidden_dropout_prob=0.0)
    assert model.embeddings.position_embeddings is None
    feature_map = torch.randn(2, 2048, 4, 2)
    tokens = model.embeddings(feature_map)
    projected = model.embeddings.projection(feature_map.flatten(2).transpose(1, 2))
    expected = projected + sincos_position_encoding_2d(4, 2, 32)
    torch.testing.assert_close(tokens[:, 1:], expected)
    torch.testing.assert_close(tokens[:, 0], model.embeddings.embedding_token[0].expand(2, -1))
    learned = tiny_model(position_encoding="learned").embeddings
    assert learned.position_embeddings.shape == (1, 8, 32)
    none = tiny_model(position_encoding="none", hidden_dropout_prob=0.0).eval()
    assert none.embeddings.position_embeddings is None
    torch.testing.assert_close(
        none.embeddings(feature_map)[:, 1:],
        none.embeddings.projection(feature_map.flatten(2).transpose(1, 2)),
    )


# ---------------------------------------------------------------- linear attention


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("shared", [False, True])
def test_linear_attention_with_identity_projections_equals_full_attention(implementation, shared):
    config = TestPRCT().tiny_config(
        linformer_k=TOKENS, share_kv_projection=shared, attn_implementation=implementation
    )
    torch.manual_seed(0)
    full = ViTSelfAttention(config).eval()
    linear = LinformerSelfAttention(config, GRID).eval()
    linear.qkv.load_state_dict(full.qkv.state_dict())
    with torch.no_grad():
        eye = torch.eye(TOKENS).expand_as(linear.key_projection)
        linear.key_projection.copy_(eye)
        linear.value_projection.copy_(eye)
    x = torch.randn(3, TOKENS, 32)
    expected, _ = full(x)
    actual, _ = linear(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_linear_model_with_identity_projections_equals_the_full_attention_model():
    full = tiny_model(attention="full", linformer_k=TOKENS)
    linear = tiny_model(attention="linear", linformer_k=TOKENS)
    result = linear.load_state_dict(full.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted({k.rsplit(".", 1)[1] for k in result.missing_keys}) == [
        "key_projection",
        "value_projection",
    ]
    with torch.no_grad():
        for layer in linear.transformer.layers:
            core = layer.attention.attention
            core.key_projection.copy_(torch.eye(TOKENS).expand_as(core.key_projection))
            core.value_projection.copy_(torch.eye(TOKENS).expand_as(core.value_projection))
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(linear(x).embeddings, full(x).embeddings, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared, groups", [(False, 4), (True, 1)])
def test_share_kv_projection_shapes(shared, groups):
    model = tiny_model(share_kv_projection=shared)
    for layer in model.transformer.layers:
        core = layer.attention.attention
        assert isinstance(core, LinformerSelfAttention)
        assert core.key_projection.shape == (groups, TOKENS, 8)
        assert core.value_projection.shape == (groups, TOKENS, 8)
    full = tiny_model(attention="full")
    core = full.transformer.layers[0].attention.attention
    assert type(core) is ViTSelfAttention
    assert not any("projection" in n for n, _ in full.transformer.named_parameters())


def test_attention_maps_and_hidden_states():
    model = tiny_model(attn_implementation="eager")
    out = model(torch.randn(2, 3, 64, 32), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and all(a.shape == (2, 4, TOKENS, 8) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, TOKENS))
    assert len(out.hidden_states) == 3 and all(
        h.shape == (2, TOKENS, 32) for h in out.hidden_states
    )
    full = tiny_model(attention="full", attn_implementation="eager")
    out = full(torch.randn(2, 3, 64, 32), output_attentions=True)
    assert all(a.shape == (2, 4, TOKENS, TOKENS) for a in out.attentions)
    with pytest.raises(ValueError, match="eager"):
        tiny_model(attn_implementation="sdpa")(torch.randn(1, 3, 64, 32), output_attentions=True)


def test_linear_attention_rejects_a_grid_that_does_not_fit_the_tokens():
    core = tiny_model().transformer.layers[0].attention.attention
    with pytest.raises(ValueError, match="do not fit"):
        core(torch.randn(1, 10, 32))
    with pytest.raises(ValueError, match="attention_mask"):
        core(torch.randn(1, TOKENS, 32), torch.zeros(1, 1, TOKENS, TOKENS))


# ---------------------------------------------------------------- other input sizes


def test_resized_sequence_projection_has_the_documented_values():
    torch.manual_seed(0)
    projection = torch.randn(2, TOKENS, 3)
    assert resize_sequence_projection(projection, GRID, GRID) is projection
    # A constant projection stays constant, times N_configured / N_new, token row unchanged.
    constant = torch.full((2, TOKENS, 3), 0.7)
    resized = resize_sequence_projection(constant, GRID, (6, 2))
    assert resized.shape == (2, 13, 3)
    torch.testing.assert_close(resized[:, 0], constant[:, 0])
    torch.testing.assert_close(resized[:, 1:], torch.full((2, 12, 3), 0.7 * 8 / 12))
    # In general: each (head, k) column of grid rows is resized bilinearly as a 4x2 image.
    resized = resize_sequence_projection(projection, GRID, (3, 5))
    for head in range(2):
        for column in range(3):
            image = projection[head, 1:, column].reshape(1, 1, 4, 2)
            expected = F.interpolate(image, size=(3, 5), mode="bilinear", align_corners=False)
            torch.testing.assert_close(resized[head, 1:, column], expected.flatten() * 8 / 15)
            assert resized[head, 0, column] == projection[head, 0, column]


def test_other_token_count_runs_and_uses_resized_parameters():
    model = tiny_model()
    x = torch.randn(2, 3, 96, 32)  # 6x2 grid
    out = model(x, output_hidden_states=True)
    assert out.hidden_states[0].shape == (2, 13, 32)
    core = model.transformer.layers[0].attention.attention
    key, value = core.sequence_projections((6, 2))
    assert key.shape == value.shape == (4, 13, 8)
    torch.testing.assert_close(key, resize_sequence_projection(core.key_projection, GRID, (6, 2)))
    embeddings = model.embeddings
    assert embeddings.learned_positions(GRID) is embeddings.position_embeddings
    assert embeddings.learned_positions((6, 2)).shape == (1, 12, 32)
    # Smaller and wider inputs too; the loss works at another size (E/F resize differentiably).
    model.train()
    out = model(torch.randn(4, 3, 48, 48), labels=torch.tensor([0, 0, 1, 1]))
    out.loss.backward()
    assert core.key_projection.grad is not None and core.key_projection.grad.abs().sum() > 0


# ---------------------------------------------------------------- head, loss, training


def test_embeddings_are_the_normalised_bnneck_feature():
    model = tiny_model()
    assert model.embedding_projection is None  # no FC layer by default
    x = torch.randn(3, 3, 64, 32)
    out = model(x, output_hidden_states=True)
    feature = out.features[0]
    assert feature.shape == (3, 32) and len(out.logits) == 1
    token = model.transformer.layernorm(out.hidden_states[-1])[:, 0]
    torch.testing.assert_close(feature, token)
    torch.testing.assert_close(out.embeddings, F.normalize(model.neck.bn(feature), dim=-1))
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(3))


def test_embedding_projection_is_an_fc_layer_between_the_token_and_the_bnneck():
    model = tiny_model(embedding_projection_size=16).train()
    fc = model.embedding_projection
    assert (fc.in_features, fc.out_features) == (32, 16) and fc.bias is not None
    assert model.neck.bn.num_features == 16 and model.neck.classifier.in_features == 16
    x, y = torch.randn(4, 3, 64, 32), torch.tensor([0, 0, 1, 1])
    torch.manual_seed(4)
    out = model(x, labels=y, output_hidden_states=True)
    token = model.transformer.layernorm(out.hidden_states[-1])[:, 0]
    feature = out.features[0]
    torch.testing.assert_close(feature, fc(token))  # the triplet loss sees the FC output
    expected = cross_entropy_with_label_smoothing(
        out.logits[0], y, 0.1
    ) + batch_hard_triplet_loss(feature, y, 0.3)
    torch.testing.assert_close(out.loss, expected)
    model.eval()
    out = model(x)
    assert out.embeddings.shape == (4, 16)
    torch.testing.assert_close(
        out.embeddings, F.normalize(model.neck.bn(out.features[0]), dim=-1)
    )
    assert model(x[:1]).embeddings.shape == (1, 16)  # batch size 1
    groups = {g["group_name"]: g for g in model.optimizer_parameter_groups(1e-3, 5e-4)}
    assert any(p is fc.weight for p in groups["new_decay"]["params"])


def test_loss_is_the_formula_with_its_terms_recomputed():
    model = tiny_model(triplet_weight=0.5, label_smoothing=0.2).train()
    x, y = torch.randn(8, 3, 64, 32), torch.arange(8) % 4
    torch.manual_seed(2)
    out = model(x, labels=y)
    expected = cross_entropy_with_label_smoothing(
        out.logits[0], y, 0.2
    ) + 0.5 * batch_hard_triplet_loss(out.features[0], y, 0.3)
    torch.testing.assert_close(out.loss, expected)
    soft = tiny_model(triplet_margin=None).train()
    torch.manual_seed(2)
    out = soft(x, labels=y)
    expected = cross_entropy_with_label_smoothing(out.logits[0], y, 0.1) + batch_hard_triplet_loss(
        out.features[0], y, None
    )
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"attention": "full"},
        {"share_kv_projection": True, "drop_path_rate": 0.1},
        # No projection: the trunk's 2048 channels are the tokens (the paper's setting).
        {
            "hidden_size": 2048,
            "num_hidden_layers": 1,
            "num_attention_heads": 8,
            "frozen_batch_norm": False,
        },
        {"embedding_projection_size": 16},
    ],
)
def test_every_parameter_gets_a_gradient(overrides):
    model = tiny_model(**overrides).train()
    assert (model.embeddings.projection is None) == (model.config.hidden_size == 2048)
    model(torch.randn(4, 3, 64, 32), labels=torch.tensor([0, 0, 1, 1])).loss.backward()
    assert not (dead := dead_parameters(model)), dead


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_attention_heads": 1},
        {"position_encoding": "none"},
        {"num_hidden_layers": 1},
        {"attention": "full"},
        {"last_stride": 2, "image_size": (128, 64)},
    ],
)
def test_ablation_switches_construct_and_run(overrides):
    model = tiny_model(**overrides).train()
    size = overrides.get("image_size", (64, 32))
    out = model(torch.randn(4, 3, *size), labels=torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(out.loss) and out.embeddings.shape == (4, 32)
    assert len(model.transformer.layers) == model.config.num_hidden_layers
    assert model.transformer.layers[0].attention.attention.num_attention_heads == (
        model.config.num_attention_heads
    )


def test_default_config_matches_the_paper():
    config = PRCTConfig()
    assert config.image_size == (256, 128) and config.part_grid == (16, 8)
    assert config.num_tokens == 129 and config.hidden_size == 2048
    assert (config.num_hidden_layers, config.num_attention_heads, config.linformer_k) == (12, 8, 64)
    assert config.attention == "linear" and config.position_encoding == "sine+learned"
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1  # ours
    assert config.embedding_projection_size is None and config.embedding_size == 2048
    assert PRCTConfig(last_stride=2).part_grid == (8, 4)
    assert PRCTConfig(image_size=(250, 120)).part_grid == (16, 8)  # ceil, as the trunk


def test_optimizer_groups_keep_tokens_and_positions_out_of_weight_decay():
    model = tiny_model()
    groups = {g["group_name"]: g for g in model.optimizer_parameter_groups(1e-3, 5e-4)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {
        names[id(p)] for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]
    }
    assert {"embeddings.embedding_token", "embeddings.position_embeddings"} <= no_decay
    transformer = {names[id(p)] for p in groups["transformer_decay"]["params"]}
    assert "transformer.layers.0.attention.attention.key_projection" in transformer
    assert all(names[id(p)].startswith("resnet.") for p in groups["trunk_decay"]["params"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention": "softmax"}, "attention must be one of"),
        ({"linformer_k": 0}, "linformer_k must be an integer >= 1"),
        ({"hidden_size": 30}, "divisible by num_attention_heads"),
        ({"hidden_size": 18, "num_attention_heads": 3}, "divisible by 4"),
        ({"position_encoding": "rope"}, "position_encoding must be one of"),
        ({"last_stride": 3}, "last_stride must be 1 or 2"),
        ({"triplet_margin": 0}, "triplet_margin"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
        ({"share_kv_projection": "yes"}, "share_kv_projection must be a bool"),
        ({"image_size": (8, 8)}, "16-pixel stride"),
        ({"embedding_projection_size": 0}, "embedding_projection_size must be an integer >= 1"),
        ({"embedding_projection_size": 8.0}, "embedding_projection_size must be an integer >= 1"),
        ({"attention_scale": "sqrt"}, "attention_scale must be one of"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        PRCTConfig(**{**TINY, **overrides})


def test_sine_width_rule_only_applies_with_a_sine_code():
    config = PRCTConfig(
        **{**TINY, "hidden_size": 18, "num_attention_heads": 3, "position_encoding": "learned"}
    )
    assert config.hidden_size == 18


def test_attention_scale_switch_reaches_every_layer():
    usual, by_width = tiny_model(), tiny_model(attention_scale="width")
    for model, expected in ((usual, (32 // 4) ** -0.5), (by_width, 32 ** -0.5)):
        scales = [m.scaling for m in model.modules() if hasattr(m, "scaling")]
        assert len(scales) == 2 and scales == pytest.approx([expected] * 2)
    x = torch.randn(2, 3, 64, 32)
    assert not torch.allclose(usual(x).embeddings, by_width(x).embeddings)
