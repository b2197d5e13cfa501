"""Tests for reid_transformers.backbones.vit: the ViT backbone and its weight loaders.

Reference models are tiny `transformers.ViTModel`s with random weights built here; nothing
is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from transformers import (
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)
from transformers import initialization as init

from reid_transformers.backbones import (
    CheckpointUnavailableError,
    LoadReport,
    ViTBackbone,
    ViTEmbeddings,
    ViTEncoder,
    ViTLayer,
    load_vit_pretrained,
)
from reid_transformers.backbones import loading as loading_module
from reid_transformers.backbones.vit import (
    DropPath,
    ViTAttention,
    ViTMLP,
    ViTSelfAttention,
    eager_attention_forward,
    resize_position_embeddings,
)
from reid_transformers.configuration_utils import ViTReIDConfig

HIDDEN, HEADS, LAYERS, MLP, PATCH = 32, 4, 2, 64, 8
TOL = 1e-5
POS = "embeddings.position_embeddings"


class TinyViTConfig(ViTReIDConfig):
    """A re-ID model config's ViT backbone fields, at test size."""

    model_type = "reid_vit_backbone_test"

    image_size: int | list[int] = 32
    patch_size: int = PATCH
    patch_stride: int = PATCH
    hidden_size: int = HIDDEN
    num_hidden_layers: int = LAYERS
    num_attention_heads: int = HEADS
    intermediate_size: int = MLP


class TinyViTModel(PreTrainedModel):
    """A minimal PreTrainedModel around the backbone, as the re-ID models embed it."""

    config_class = TinyViTConfig
    base_model_prefix = "tiny_vit"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__(config)
        self.backbone = ViTBackbone(config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ViTEmbeddings):
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values).last_hidden_state


def _config(attn: str = "eager", **overrides: object) -> TinyViTConfig:
    config = TinyViTConfig(**overrides)
    config._attn_implementation = attn
    return config


def _hf_config(**overrides: object) -> ViTConfig:
    fields = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        image_size=32,
        patch_size=PATCH,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
    )
    fields.update(overrides)
    return ViTConfig(**fields)


@torch.no_grad()
def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter (norm scales included) a distinct random value, so that a
    mix-up of any two tensors by a loader changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in module.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator) * 0.2
        base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
        parameter.copy_(base + noise)
    return module


def _hf_model(attn: str = "eager", seed: int = 0, **overrides: object) -> ViTModel:
    model = ViTModel(_hf_config(**overrides), add_pooling_layer=False)
    model.set_attn_implementation(attn)
    return _randomise(model, seed).eval()


def _images(batch: int = 2, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _timm_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers-5 in-memory ViTModel state dict to timm's layout."""
    timm = {
        "cls_token": hf_state["embeddings.cls_token"],
        "pos_embed": hf_state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf_state["layernorm.weight"],
        "norm.bias": hf_state["layernorm.bias"],
        "head.weight": torch.zeros(10, HIDDEN),
        "head.bias": torch.zeros(10),
    }
    for i in range(LAYERS):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            timm[dst + f"attn.qkv.{kind}"] = torch.cat(
                [hf_state[src + f"attention.{p}_proj.{kind}"] for p in "qkv"], dim=0
            )
            timm[dst + f"attn.proj.{kind}"] = hf_state[src + f"attention.o_proj.{kind}"]
            timm[dst + f"norm1.{kind}"] = hf_state[src + f"layernorm_before.{kind}"]
            timm[dst + f"norm2.{kind}"] = hf_state[src + f"layernorm_after.{kind}"]
            timm[dst + f"mlp.fc1.{kind}"] = hf_state[src + f"mlp.fc1.{kind}"]
            timm[dst + f"mlp.fc2.{kind}"] = hf_state[src + f"mlp.fc2.{kind}"]
    return {key: value.clone() for key, value in timm.items()}


@pytest.fixture(scope="module")
def hf_reference() -> ViTModel:
    return _hf_model()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, hf_reference: ViTModel) -> Path:
    folder = tmp_path_factory.mktemp("hf_vit")
    hf_reference.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def timm_state(hf_reference: ViTModel) -> dict[str, torch.Tensor]:
    return _timm_state_dict(hf_reference.state_dict())


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hf_folder_parity(tmp_path: Path, attn: str) -> None:
    reference = _hf_model(attn, seed=3)
    reference.save_pretrained(tmp_path)
    backbone = ViTBackbone(_config(attn)).eval()
    report = load_vit_pretrained(backbone, tmp_path)

    assert report.source_format == "huggingface"
    assert report.missing == report.unexpected == report.ignored == ()
    assert set(report.loaded) == set(backbone.state_dict())
    assert report.resized == {}
    images = _images()
    with torch.no_grad():
        expected = reference(images, output_hidden_states=True)
        ours = backbone(images, output_hidden_states=True)
    assert _max_diff(ours.last_hidden_state, expected.last_hidden_state) < TOL
    assert len(ours.hidden_states) == len(expected.hidden_states) == LAYERS + 1
    for mine, theirs in zip(ours.hidden_states, expected.hidden_states, strict=True):
        assert _max_diff(mine, theirs) < TOL


def test_timm_state_dict_parity(
    tmp_path: Path, hf_reference: ViTModel, timm_state: dict[str, torch.Tensor]
) -> None:
    images = _images()
    with torch.no_grad():
        expected = hf_reference(images).last_hidden_state
    files = {"safetensors": tmp_path / "vit.safetensors", "pth": tmp_path / "vit.pth"}
    save_file(timm_state, files["safetensors"])
    torch.save({"state_dict": timm_state, "epoch": 3}, files["pth"])
    for source in (timm_state, files["safetensors"], files["pth"], str(files["pth"])):
        backbone = ViTBackbone(_config()).eval()
        report = load_vit_pretrained(backbone, source)
        assert report.source_format == "timm"
        assert sorted(report.ignored) == ["head.bias", "head.weight"]
        assert report.missing == report.unexpected == ()
        with torch.no_grad():
            assert _max_diff(backbone(images).last_hidden_state, expected) < TOL


def test_in_memory_hf_state_dicts_with_heads_and_prefix(hf_reference: ViTModel) -> None:
    images = _images()
    with torch.no_grad():
        expected = hf_reference(images).last_hidden_state

    pooled = ViTModel(_hf_config(), add_pooling_layer=True)
    pooled.load_state_dict(hf_reference.state_dict(), strict=False)
    backbone = ViTBackbone(_config()).eval()
    report = load_vit_pretrained(backbone, pooled.state_dict())
    assert sorted(report.ignored) == ["pooler.dense.bias", "pooler.dense.weight"]
    with torch.no_grad():
        assert _max_diff(backbone(images).last_hidden_state, expected) < TOL

    # DistributedDataParallel-style prefix on the transformers-5 layout.
    wrapped = {f"module.{k}": v for k, v in hf_reference.state_dict().items()}
    backbone = ViTBackbone(_config()).eval()
    assert load_vit_pretrained(backbone, wrapped).missing == ()
    with torch.no_grad():
        assert _max_diff(backbone(images).last_hidden_state, expected) < TOL


def test_classification_checkpoint_folder_ignores_classifier(
    tmp_path: Path, hf_reference: ViTModel
) -> None:
    classifier = ViTForImageClassification(_hf_config(num_labels=5))
    classifier.vit.load_state_dict(hf_reference.state_dict())
    classifier.save_pretrained(tmp_path)
    backbone = ViTBackbone(_config()).eval()
    report = load_vit_pretrained(backbone, tmp_path)
    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]
    assert report.unexpected == report.missing == ()
    images = _images()
    with torch.no_grad():
        expected = hf_reference(images).last_hidden_state
        assert _max_diff(backbone(images).last_hidden_state, expected) < TOL


def test_own_layout_under_prefix_loads_and_reports_extra_keys() -> None:
    source = _randomise(ViTBackbone(_config()), seed=5).eval()
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, HIDDEN)
    target = ViTBackbone(_config()).eval()
    with pytest.raises(ValueError, match="classifier.weight"):
        load_vit_pretrained(target, state)
    report = load_vit_pretrained(target, state, strict=False)
    assert report.source_format == "reid_transformers"
    assert report.unexpected == ("classifier.weight",)
    images = _images()
    with torch.no_grad():
        assert _max_diff(target(images).last_hidden_state, source(images).last_hidden_state) == 0


def test_checkpoint_layer_norm_eps_is_not_taken(tmp_path: Path, hf_reference: ViTModel) -> None:
    model = ViTModel(_hf_config(layer_norm_eps=1e-12), add_pooling_layer=False)
    model.load_state_dict(hf_reference.state_dict())
    model.save_pretrained(tmp_path)
    backbone = ViTBackbone(_config(layer_norm_eps=1e-6))
    load_vit_pretrained(backbone, tmp_path)
    assert {m.eps for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}


# --------------------------------------------------------------------------- attention


def test_eager_and_sdpa_agree() -> None:
    backbone = _randomise(ViTBackbone(_config("eager", image_size=[64, 32])), seed=7).eval()
    images = _images(3, 64, 32)
    with torch.no_grad():
        eager = backbone(images).last_hidden_state
        backbone.config._attn_implementation = "sdpa"
        sdpa = backbone(images).last_hidden_state
    assert _max_diff(eager, sdpa) < TOL


def test_attention_weights_eager_only() -> None:
    backbone = _randomise(ViTBackbone(_config("eager")), seed=8).eval()
    images = _images()
    with torch.no_grad():
        output = backbone(images, output_attentions=True)
    tokens = 1 + (32 // PATCH) ** 2
    assert len(output.attentions) == LAYERS
    for weights in output.attentions:
        assert weights.shape == (2, HEADS, tokens, tokens)
        assert torch.allclose(weights.sum(-1), torch.ones(2, HEADS, tokens), atol=1e-6)
    assert output.hidden_states is None

    backbone.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="eager"):
        backbone(images, output_attentions=True)


def test_additive_attention_mask_blocks_keys_per_head() -> None:
    config = _config("eager")
    layer = _randomise(ViTLayer(config), seed=9).eval()
    tokens = 1 + (32 // PATCH) ** 2
    hidden = torch.randn(2, tokens, HIDDEN, generator=torch.Generator().manual_seed(10))
    mask = torch.zeros(1, HEADS, tokens, tokens)
    mask[:, 0, :, 3] = float("-inf")  # head 0 may not look at token 3
    mask[:, 2, :, 5:] = float("-inf")  # head 2 sees only tokens 0-4
    with torch.no_grad():
        unmasked, _ = layer(hidden)
        eager, weights = layer(hidden, mask, output_attentions=True)
        config._attn_implementation = "sdpa"
        sdpa, none = layer(hidden, mask)
    assert none is None
    assert torch.all(weights[:, 0, :, 3] == 0)
    assert torch.all(weights[:, 2, :, 5:] == 0)
    assert torch.all(weights[:, 1] > 0)
    assert _max_diff(eager, sdpa) < TOL
    assert _max_diff(eager, unmasked) > 1e-3


def test_attention_mask_validation() -> None:
    attention = ViTAttention(_config())
    hidden = torch.randn(2, 5, HIDDEN)
    with pytest.raises(ValueError, match="float"):
        attention(hidden, torch.ones(2, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 5\)"):
        attention(hidden, torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="broadcast"):
        attention(hidden, torch.zeros(5, 5))


def test_self_attention_projection_layout() -> None:
    """project_qkv splits the fused projection as [q; k; v], each head-major."""
    attention = _randomise(ViTSelfAttention(_config()), seed=11)
    hidden = torch.randn(2, 5, HIDDEN)
    query, key, value = attention.project_qkv(hidden)
    head_dim = HIDDEN // HEADS
    w, b = attention.qkv.weight, attention.qkv.bias
    for index, projected in enumerate((query, key, value)):
        assert projected.shape == (2, HEADS, 5, head_dim)
        rows = slice(index * HIDDEN + head_dim, index * HIDDEN + 2 * head_dim)  # head 1
        expected = hidden @ w[rows].T + b[rows]
        assert _max_diff(projected[:, 1], expected) < 1e-6


def test_eager_attention_forward_matches_softmax_definition() -> None:
    generator = torch.Generator().manual_seed(12)
    query, key, value = (torch.randn(2, 3, 4, 8, generator=generator) for _ in range(3))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1] = float("-inf")
    module = torch.nn.Module().eval()
    context, weights = eager_attention_forward(module, query, key, value, mask, scaling=0.5)
    expected_weights = ((query @ key.transpose(-1, -2)) * 0.5 + mask).softmax(-1)
    assert _max_diff(weights, expected_weights) < 1e-6
    assert context.shape == (2, 4, 3, 8)
    assert _max_diff(context, (expected_weights @ value).transpose(1, 2)) < 1e-6


def test_mlp_computes_fc2_gelu_fc1() -> None:
    mlp = _randomise(ViTMLP(_config()), seed=13).eval()
    hidden = torch.randn(2, 5, HIDDEN)
    expected = mlp.fc2(F.gelu(mlp.fc1(hidden)))
    assert _max_diff(mlp(hidden), expected) < 1e-6


def test_mlp_activation_dropout_is_optional_and_sits_before_fc2() -> None:
    from reid_transformers.configuration_utils import ConfigView

    # Without the field (every ViT model): no dropout module there, no random draws.
    assert isinstance(ViTMLP(_config()).activation_dropout, torch.nn.Identity)
    mlp = ViTMLP(ConfigView(_config(), activation_dropout=0.5, hidden_dropout_prob=0.25)).train()
    hidden = torch.randn(2, 5, HIDDEN)
    torch.manual_seed(3)
    inner = F.dropout(F.gelu(mlp.fc1(hidden)), 0.5, training=True)
    expected = F.dropout(mlp.fc2(inner), 0.25, training=True)
    torch.manual_seed(3)
    assert _max_diff(mlp(hidden), expected) < 1e-6


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("attention_scale", ["head_dim", "width"])
def test_attention_scale_matches_the_formula(attn: str, attention_scale: str) -> None:
    from reid_transformers.configuration_utils import ConfigView

    config = _config(attn) if attention_scale == "head_dim" else ConfigView(
        _config(attn), attention_scale="width"
    )
    attention = _randomise(ViTAttention(config), seed=14).eval()
    head_dim = HIDDEN // HEADS
    scale = head_dim**-0.5 if attention_scale == "head_dim" else HIDDEN**-0.5
    assert attention.attention.scaling == pytest.approx(scale)
    x = torch.randn(2, 7, HIDDEN, generator=torch.Generator().manual_seed(15))
    qkv = attention.attention.qkv(x).reshape(2, 7, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    weights = (q @ k.transpose(-1, -2) * scale).softmax(-1)
    context = (weights @ v).transpose(1, 2).reshape(2, 7, HIDDEN)
    with torch.no_grad():
        out, _ = attention(x)
        assert _max_diff(out, attention.proj(context)) < TOL


def test_vit_reid_config_attention_fields() -> None:
    config = ViTReIDConfig()
    assert config.attention_scale == "head_dim" and config.activation_dropout == 0.0
    assert ViTReIDConfig(attention_scale="width").attention_scale == "width"
    with pytest.raises(ValueError, match="attention_scale must be one of"):
        ViTReIDConfig(attention_scale="sqrt")
    with pytest.raises(ValueError, match="activation_dropout"):
        ViTReIDConfig(activation_dropout=1.0)


# ------------------------------------------------------------------- position embeddings


def _manual_resize(
    table: torch.Tensor, source: tuple[int, int], target: tuple[int, int]
) -> torch.Tensor:
    grid = table[:, 1:].reshape(1, *source, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], 1)


def test_resize_position_embeddings() -> None:
    table = torch.randn(1, 1 + 4 * 4, HIDDEN, requires_grad=True)
    resized = resize_position_embeddings(table, (4, 4), (8, 4))
    assert resized.shape == (1, 1 + 32, HIDDEN)
    assert torch.equal(resized[:, 0], table[:, 0])
    assert _max_diff(resized, _manual_resize(table, (4, 4), (8, 4))) < 1e-6
    resized.sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert resize_position_embeddings(table, (4, 4), (4, 4)) is table

    with pytest.raises(ValueError, match="source_grid 4x5"):
        resize_position_embeddings(table, (4, 5), (8, 4))
    with pytest.raises(ValueError, match="shape"):
        resize_position_embeddings(table[0], (4, 4), (8, 4))
    with pytest.raises(ValueError, match="target_grid"):
        resize_position_embeddings(table, (4, 4), (0, 4))


def test_checkpoint_grid_resized_to_backbone(hf_folder: Path, hf_reference: ViTModel) -> None:
    """A 32x32 checkpoint (4x4 grid) loaded into a 64x32 backbone (8x4 grid)."""
    backbone = ViTBackbone(_config(image_size=[64, 32])).eval()
    report = load_vit_pretrained(backbone, hf_folder)
    assert report.resized == {POS: ((1, 17, HIDDEN), (1, 33, HIDDEN))}
    original = hf_reference.embeddings.position_embeddings.detach()
    expected = _manual_resize(original, (4, 4), (8, 4))
    assert _max_diff(backbone.embeddings.position_embeddings.detach(), expected) < 1e-6

    # The same resize happens on the fly when a 32x32 backbone sees a 64x32 image.
    small = ViTBackbone(_config()).eval()
    load_vit_pretrained(small, hf_folder)
    assert small.embeddings.grid_size(64, 32) == (8, 4)
    images = _images(2, 64, 32)
    with torch.no_grad():
        on_the_fly = small(images).last_hidden_state
        loaded = backbone(images).last_hidden_state
    assert on_the_fly.shape == (2, 33, HIDDEN)
    assert _max_diff(on_the_fly, loaded) < TOL


def test_non_square_source_grid_needs_source_grid() -> None:
    source = _randomise(ViTBackbone(_config(image_size=[64, 32])), seed=14)  # 8x4 grid
    state = source.state_dict()
    target = ViTBackbone(_config())  # 4x4 grid
    with pytest.raises(ValueError, match="source_grid"):
        load_vit_pretrained(target, state)
    report = load_vit_pretrained(target, state, source_grid=(8, 4))
    assert report.resized == {POS: ((1, 33, HIDDEN), (1, 17, HIDDEN))}
    expected = _manual_resize(state[POS], (8, 4), (4, 4))
    assert _max_diff(target.embeddings.position_embeddings.detach(), expected) < 1e-6


def test_overlapping_patches(hf_folder: Path) -> None:
    backbone = ViTBackbone(_config(image_size=[64, 32], patch_size=16, patch_stride=12)).eval()
    assert backbone.embeddings.position_grid == (5, 2)  # (64-16)//12+1, (32-16)//12+1
    report = load_vit_pretrained(
        backbone, _randomise(ViTModel(_hf_config(patch_size=16)), seed=15).state_dict()
    )
    assert report.resized == {POS: ((1, 5, HIDDEN), (1, 11, HIDDEN))}
    images = _images(2, 64, 32)
    with torch.no_grad():
        output = backbone(images, output_hidden_states=True)
        patches = F.conv2d(
            images,
            backbone.embeddings.projection.weight,
            backbone.embeddings.projection.bias,
            stride=12,
        )
    assert output.last_hidden_state.shape == (2, 1 + 10, HIDDEN)
    expected = patches.flatten(2).transpose(1, 2) + backbone.embeddings.position_embeddings[:, 1:]
    assert _max_diff(output.hidden_states[0][:, 1:], expected) < 1e-5


def test_embeddings_token_order_and_grid_size() -> None:
    embeddings = _randomise(ViTEmbeddings(_config(image_size=[64, 32])), seed=16).eval()
    assert embeddings.grid_size(64, 32) == (8, 4)
    assert embeddings.grid_size(71, 39) == (8, 4)  # trailing pixels short of a patch unused
    images = _images(1, 64, 32)
    tokens = embeddings(images)
    assert tokens.shape == (1, 33, HIDDEN)
    # Token 1 + r*4 + c is the patch at row r, column c.
    patch = images[:, :, 2 * PATCH : 3 * PATCH, 1 * PATCH : 2 * PATCH]
    expected = F.conv2d(patch, embeddings.projection.weight, embeddings.projection.bias)
    expected = expected.flatten() + embeddings.position_embeddings[0, 1 + 2 * 4 + 1]
    assert _max_diff(tokens[0, 1 + 2 * 4 + 1], expected) < 1e-5
    assert (
        _max_diff(
            tokens[0, 0], (embeddings.cls_token + embeddings.position_embeddings[:, :1])[0, 0]
        )
        < 1e-6
    )
    with pytest.raises(ValueError, match="smaller than one"):
        embeddings.grid_size(7, 32)


# ------------------------------------------------------------------------ drop path, modes


def test_drop_path_module() -> None:
    drop = DropPath(0.5)
    hidden = torch.ones(400, 3, 4)
    assert drop.eval()(hidden) is hidden
    torch.manual_seed(0)
    out = drop.train()(hidden)
    per_sample = out.reshape(400, -1)
    # Whole samples are dropped or scaled by 1/keep_prob.
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert 120 < int((per_sample[:, 0] == 0).sum()) < 280
    assert DropPath(0.0).train()(hidden) is hidden
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


def test_drop_path_schedule_and_modes() -> None:
    backbone = _randomise(ViTBackbone(_config(num_hidden_layers=3, drop_path_rate=0.4)), 17)
    rates = [layer.drop_path.drop_prob for layer in backbone.encoder.layers]
    assert rates == pytest.approx([0.0, 0.2, 0.4])
    reference = ViTBackbone(_config(num_hidden_layers=3))
    reference.load_state_dict(backbone.state_dict())
    images = _images()
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(
            backbone(images).last_hidden_state, reference.eval()(images).last_hidden_state
        )
        backbone.train()
        torch.manual_seed(1)
        first = backbone(images).last_hidden_state
        second = backbone(images).last_hidden_state
    assert _max_diff(first, second) > 1e-4


def test_batch_size_one_train_and_eval() -> None:
    backbone = ViTBackbone(_config(drop_path_rate=0.3, hidden_dropout_prob=0.1))
    images = _images(1)
    backbone.train()
    output = backbone(images).last_hidden_state
    output.sum().backward()
    assert output.shape == (1, 17, HIDDEN)
    backbone.eval()
    assert backbone(images).last_hidden_state.shape == (1, 17, HIDDEN)


# ----------------------------------------------------------------- gradient checkpointing


def _loss_and_grads(
    model: torch.nn.Module, images: torch.Tensor, seed: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(images).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_via_pretrained_model(reentrant: bool) -> None:
    config = _config(drop_path_rate=0.3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = _randomise(TinyViTModel(config), seed=18).train()
    images = _images()
    plain_loss, plain_grads = _loss_and_grads(model, images, seed=5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated alias in transformers 5
        model.gradient_checkpointing_enable({"use_reentrant": reentrant})
    encoder = model.backbone.encoder
    assert encoder.gradient_checkpointing
    calls = []
    encoder.layers[0].norm1.register_forward_hook(lambda *args: calls.append(1))
    ckpt_loss, ckpt_grads = _loss_and_grads(model, images, seed=5)
    assert len(calls) == 2  # forward, then the recomputation in backward
    assert torch.equal(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        assert torch.allclose(ckpt_grads[name], grad, atol=1e-6), name

    model.activation_checkpointing_disable()
    assert not encoder.gradient_checkpointing


class _Head(torch.nn.Module):
    def __init__(self, backbone: ViTBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).last_hidden_state


def test_gradient_checkpointing_flag_on_bare_encoder() -> None:
    """Outside a PreTrainedModel, setting the flag falls back to torch's checkpoint."""
    backbone = _randomise(ViTBackbone(_config(drop_path_rate=0.3)), seed=19).train()
    model = _Head(backbone)
    plain_loss, plain_grads = _loss_and_grads(model, _images(), seed=6)
    backbone.encoder.gradient_checkpointing = True
    assert all(layer.gradient_checkpointing for layer in backbone.encoder.layers)
    calls = []
    backbone.encoder.layers[1].norm1.register_forward_hook(lambda *args: calls.append(1))
    ckpt_loss, ckpt_grads = _loss_and_grads(model, _images(), seed=6)
    assert len(calls) == 2
    assert torch.equal(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        assert torch.allclose(ckpt_grads[name], grad, atol=1e-6), name


def test_pretrained_model_round_trip(tmp_path: Path) -> None:
    """Built on the meta device by from_pretrained, the backbone gets its weights back."""
    model = _randomise(TinyViTModel(_config(image_size=[64, 32])), seed=20).eval()
    model.save_pretrained(tmp_path)
    reloaded = TinyViTModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert reloaded.config._attn_implementation == "sdpa"
    images = _images(2, 64, 32)
    with torch.no_grad():
        assert _max_diff(reloaded(images), model(images)) < TOL


def test_unfreezable_blocks_top_down() -> None:
    backbone = ViTBackbone(_config(num_hidden_layers=3))
    blocks = backbone.unfreezable_blocks()
    assert blocks == [
        backbone.encoder.layers[2],
        backbone.encoder.layers[1],
        backbone.encoder.layers[0],
    ]
    assert all(isinstance(block, ViTLayer) for block in blocks)


def test_encoder_outputs() -> None:
    encoder = _randomise(ViTEncoder(_config()), seed=21).eval()
    hidden = torch.randn(2, 7, HIDDEN)
    output = encoder(hidden, output_hidden_states=True, output_attentions=True)
    assert output.hidden_states[0] is hidden
    assert len(output.hidden_states) == LAYERS + 1 and len(output.attentions) == LAYERS
    step = hidden
    for layer in encoder.layers:
        step, _ = layer(step)
    assert _max_diff(output.last_hidden_state, step) < 1e-6
    assert torch.equal(output.hidden_states[-1], output.last_hidden_state)


# ------------------------------------------------------------------------------ bad input


def test_bad_pixel_values() -> None:
    backbone = ViTBackbone(_config())
    with pytest.raises(ValueError, match="1 channels, expected config.num_channels = 3"):
        backbone(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="7x32 pixels is smaller than one 8x8 patch"):
        backbone(torch.randn(2, 3, 7, 32))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        backbone(torch.randn(3, 32, 32))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_attention_heads": 5}, "divisible"),
        ({"patch_stride": 9}, "patch_stride"),
        ({"image_size": 4}, "smaller than one"),
        ({"image_size": [32, 32, 3]}, "image_size"),
        ({"hidden_act": "swishy"}, "swishy"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"attention_scale": "sqrt"}, "attention_scale must be one of"),
        ({"activation_dropout": 1.0}, "activation_dropout"),
        ({"qkv_bias": 1}, "qkv_bias must be a bool, got 1"),
        ({"layer_norm_eps": -1e-6}, r"layer_norm_eps must be in \[0.0, 1.0\]"),
    ],
)
def test_bad_config(overrides: dict[str, object], message: str) -> None:
    # The config is the one place the backbone's fields are checked.
    with pytest.raises(ValueError, match=message):
        TinyViTConfig(**overrides)


# ------------------------------------------------------------------------- loader errors


class _Payload:
    """Unpickling this creates ``path``: evidence that code ran during loading."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickled_code_is_refused(tmp_path: Path, timm_state: dict[str, torch.Tensor]) -> None:
    evidence = tmp_path / "ran"
    checkpoint = tmp_path / "evil.pth"
    torch.save({"state_dict": timm_state, "payload": _Payload(evidence)}, checkpoint)
    backbone = ViTBackbone(_config())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match="weights_only=True"):
        load_vit_pretrained(backbone, checkpoint)
    assert not evidence.exists()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_strict_missing_and_unexpected(timm_state: dict[str, torch.Tensor]) -> None:
    state = dict(timm_state)
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.1.attn.extra"] = torch.zeros(1)
    backbone = ViTBackbone(_config())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_vit_pretrained(backbone, state)
    message = str(error.value)
    assert "encoder.layers.1.mlp.fc2.bias" in message and "blocks.1.attn.extra" in message
    assert "strict=False" in message
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())

    report = load_vit_pretrained(backbone, state, strict=False)
    assert report.missing == ("encoder.layers.1.mlp.fc2.bias",)
    assert report.unexpected == ("blocks.1.attn.extra",)
    assert torch.equal(
        backbone.encoder.layers[1].mlp.fc2.bias, before["encoder.layers.1.mlp.fc2.bias"]
    )
    assert torch.equal(backbone.layernorm.weight, timm_state["norm.weight"])


def test_incomplete_qkv_and_extra_layers_are_unexpected(hf_reference: ViTModel) -> None:
    state = dict(hf_reference.state_dict())
    del state["layers.0.attention.k_proj.weight"]
    three = ViTModel(_hf_config(num_hidden_layers=3)).state_dict()
    state["layers.2.mlp.fc1.weight"] = three["layers.2.mlp.fc1.weight"]
    report = load_vit_pretrained(ViTBackbone(_config()), state, strict=False)
    assert "encoder.layers.0.attention.attention.qkv.weight" in report.missing
    assert set(report.unexpected) == {
        "layers.0.attention.q_proj.weight",
        "layers.0.attention.v_proj.weight",
        "layers.2.mlp.fc1.weight",
    }


def test_hf_config_mismatch(tmp_path: Path) -> None:
    ViTModel(_hf_config(num_hidden_layers=3, intermediate_size=48)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_hidden_layers: checkpoint 3, backbone 2") as error:
        load_vit_pretrained(ViTBackbone(_config()), tmp_path)
    assert "intermediate_size: checkpoint 48, backbone 64" in str(error.value)


def test_shape_mismatch_always_raises(timm_state: dict[str, torch.Tensor]) -> None:
    state = dict(timm_state)
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(48, HIDDEN)
    with pytest.raises(ValueError, match=r"encoder.layers.0.mlp.fc1.weight: checkpoint \(48, 32\)"):
        load_vit_pretrained(ViTBackbone(_config()), state, strict=False)


def test_unrecognised_and_ambiguous_layouts(timm_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="not a recognised ViT checkpoint"):
        load_vit_pretrained(ViTBackbone(_config()), {"conv1.weight": torch.zeros(1)})
    double = {f"a.{k}": v for k, v in timm_state.items()} | {
        f"b.{k}": v for k, v in timm_state.items()
    }
    with pytest.raises(ValueError, match="more than one ViT"):
        load_vit_pretrained(ViTBackbone(_config()), double)
    with pytest.raises(ValueError, match="str keys to tensors"):
        load_vit_pretrained(ViTBackbone(_config()), {"pos_embed": [1.0]})
    with pytest.raises(ValueError, match="ViTBackbone"):
        load_vit_pretrained(torch.nn.Linear(2, 2), timm_state)  # type: ignore[arg-type]


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_vit_pretrained(ViTBackbone(_config()), tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vit_pretrained(ViTBackbone(_config()), tmp_path)
    (tmp_path / "config.json").write_text(_hf_config().to_json_string())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_vit_pretrained(ViTBackbone(_config()), tmp_path)
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported checkpoint suffix '.npz'"):
        load_vit_pretrained(ViTBackbone(_config()), tmp_path / "weights.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_vit_pretrained(ViTBackbone(_config()), tmp_path / "broken.safetensors")


def test_sharded_hf_folder(tmp_path: Path, hf_reference: ViTModel) -> None:
    hf_reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    backbone = ViTBackbone(_config()).eval()
    assert load_vit_pretrained(backbone, tmp_path).missing == ()
    images = _images()
    with torch.no_grad():
        expected = hf_reference(images).last_hidden_state
        assert _max_diff(backbone(images).last_hidden_state, expected) < TOL


def test_hub_id_is_downloaded(monkeypatch: pytest.MonkeyPatch, hf_folder: Path) -> None:
    calls = []

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(hf_folder)

    monkeypatch.setattr(loading_module, "snapshot_download", fake_snapshot_download)
    report = load_vit_pretrained(ViTBackbone(_config()), "google/vit-base-patch16-224")
    assert report.source_format == "huggingface" and report.missing == ()
    ((repo_id, patterns),) = calls
    assert repo_id == "google/vit-base-patch16-224"
    assert not any(pattern.endswith((".bin", ".pth", ".pt")) for pattern in patterns)


def test_hub_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(repo_id: str, allow_patterns: list[str]) -> str:
        raise LocalEntryNotFoundError("no cached snapshot and outgoing traffic is disabled")

    monkeypatch.setattr(loading_module, "snapshot_download", offline)
    monkeypatch.setattr(loading_module.hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(
        CheckpointUnavailableError,
        match=r"'someone/vit-missing'.*LocalEntryNotFoundError.*--pretrained_backbone DIR",
    ):
        load_vit_pretrained(ViTBackbone(_config()), "someone/vit-missing")


def test_load_report_is_frozen(timm_state: dict[str, torch.Tensor]) -> None:
    report = load_vit_pretrained(ViTBackbone(_config()), timm_state)
    assert isinstance(report, LoadReport)
    with pytest.raises(AttributeError):
        report.missing = ("x",)  # type: ignore[misc]


def test_invalid_hf_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "vit", "hidden_size": "wide"}')
    with pytest.raises(ValueError, match="not a valid ViT config"):
        load_vit_pretrained(ViTBackbone(_config()), tmp_path)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_head_dim_decoupled_from_the_width_matches_the_formula(attn: str) -> None:
    from reid_transformers.configuration_utils import ConfigView

    view = ConfigView(_config(attn), head_dim=5)  # 4 heads x 5 = inner 20 at width 32
    torch.manual_seed(0)
    attention = ViTAttention(view).eval()
    assert attention.attention.qkv.weight.shape == (3 * HEADS * 5, HIDDEN)
    assert attention.proj.weight.shape == (HIDDEN, HEADS * 5)
    x = torch.randn(2, 7, HIDDEN)
    q, k, v = attention.attention.qkv(x).reshape(2, 7, 3, HEADS, 5).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / 5**0.5).softmax(-1)
    context = (weights @ v).transpose(1, 2).reshape(2, 7, HEADS * 5)
    out, _ = attention(x)
    torch.testing.assert_close(out, attention.proj(context), atol=1e-5, rtol=1e-5)
