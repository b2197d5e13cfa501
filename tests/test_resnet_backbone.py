"""Tests of the torchvision-layout ResNet backbone (any depth) and its weight loaders."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import ResNetConfig, ResNetModel

from reid_transformers.backbones import (
    BasicBlock,
    FrozenBatchNorm2d,
    LoadReport,
    ResNetBackbone,
    feature_grid,
    load_resnet_pretrained,
)
from reid_transformers.configuration_utils import ResNetReIDConfig

# Small input keeps ResNet-50 fast on CPU; 64x32 still leaves a 2x1 map after stride 32.
HEIGHT, WIDTH = 64, 32


#: Output channels of ResNet-50's four stages.
RESNET50_WIDTHS = (256, 512, 1024, 2048)


def make_config(last_stride: int = 2, frozen_batch_norm: bool = False) -> ResNetReIDConfig:
    """ResNet-50 trunk fields."""
    return ResNetReIDConfig(last_stride=last_stride, frozen_batch_norm=frozen_batch_norm)


def randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Random affine parameters and positive running statistics, so BN is not the identity."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


@pytest.fixture(scope="module")
def hf_model() -> ResNetModel:
    torch.manual_seed(0)
    # layer_type bottleneck + downsample_in_bottleneck False (stride on the 3x3) + no
    # downsampling in the first stage is torchvision's v1.5 ResNet-50.
    config = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        embedding_size=64,
        layer_type="bottleneck",
        downsample_in_bottleneck=False,
        downsample_in_first_stage=False,
    )
    model = ResNetModel(config)
    randomise_batch_norm(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="module")
def hf_folder(hf_model: ResNetModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf_resnet")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def hf_stages(hf_model: ResNetModel, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return hf_model(pixels, output_hidden_states=True).hidden_states[1:]


def hf_to_torchvision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF ResNetModel keys to torchvision's, independently of the loader's rules."""
    renamed = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "embedder":
            new = "conv1." + parts[-1] if parts[2] == "convolution" else "bn1." + parts[-1]
        else:
            stage, block = int(parts[2]) + 1, parts[4]
            if parts[5] == "shortcut":
                index = 0 if parts[6] == "convolution" else 1
                new = f"layer{stage}.{block}.downsample.{index}.{parts[-1]}"
            else:
                kind = "conv" if parts[7] == "convolution" else "bn"
                new = f"layer{stage}.{block}.{kind}{int(parts[6]) + 1}.{parts[-1]}"
        renamed[new] = tensor
    return renamed


def max_diff(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...]) -> float:
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))


def test_hf_folder_parity(hf_folder: Path, pixels: torch.Tensor, hf_stages: tuple) -> None:
    backbone = ResNetBackbone(make_config(last_stride=2)).eval()
    report = load_resnet_pretrained(backbone, hf_folder)
    assert isinstance(report, LoadReport)
    assert report.source_format == "huggingface"
    assert report.missing == report.unexpected == report.ignored == ()
    assert set(report.loaded) == set(backbone.state_dict())
    with torch.no_grad():
        ours = backbone(pixels)
    assert max_diff(ours, hf_stages) < 1e-5


def test_torchvision_state_dict_file_and_dict(
    hf_model: ResNetModel, pixels: torch.Tensor, hf_stages: tuple, tmp_path: Path
) -> None:
    state_dict = hf_to_torchvision(hf_model.state_dict())
    state_dict["fc.weight"] = torch.zeros(1000, 2048)
    state_dict["fc.bias"] = torch.zeros(1000)
    pth, safetensors = tmp_path / "resnet50.pth", tmp_path / "resnet50.safetensors"
    torch.save({"state_dict": state_dict}, pth)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, safetensors)
    for source in (pth, safetensors, {"module." + k: v for k, v in state_dict.items()}):
        backbone = ResNetBackbone(make_config()).eval()
        report = load_resnet_pretrained(backbone, source)
        assert report.source_format == "torchvision"
        assert sorted(key.removeprefix("module.") for key in report.ignored) == [
            "fc.bias",
            "fc.weight",
        ]
        with torch.no_grad():
            assert max_diff(backbone(pixels), hf_stages) < 1e-5


def test_hf_classification_prefix_and_head_ignored(
    hf_model: ResNetModel, pixels: torch.Tensor, hf_stages: tuple
) -> None:
    state_dict = {"resnet." + k: v for k, v in hf_model.state_dict().items()}
    state_dict["classifier.1.weight"] = torch.zeros(1000, 2048)
    backbone = ResNetBackbone(make_config()).eval()
    report = load_resnet_pretrained(backbone, state_dict)
    assert report.ignored == ("classifier.1.weight",)
    with torch.no_grad():
        assert max_diff(backbone(pixels), hf_stages) < 1e-5


def test_missing_num_batches_tracked_is_not_required(hf_model: ResNetModel) -> None:
    state_dict = {
        k: v
        for k, v in hf_to_torchvision(hf_model.state_dict()).items()
        if not k.endswith("num_batches_tracked")
    }
    report = load_resnet_pretrained(ResNetBackbone(make_config()), state_dict)
    assert report.missing == ()


def test_own_state_dict_round_trip(pixels: torch.Tensor) -> None:
    torch.manual_seed(3)
    source = ResNetBackbone(make_config()).eval()
    randomise_batch_norm(source, torch.Generator().manual_seed(4))
    target = ResNetBackbone(make_config()).eval()
    load_resnet_pretrained(target, source.state_dict())
    with torch.no_grad():
        assert max_diff(target(pixels), source(pixels)) == 0.0


def test_stage_shapes_for_both_last_strides() -> None:
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        one = ResNetBackbone(make_config(last_stride=1)).eval()(x)
        two = ResNetBackbone(make_config(last_stride=2)).eval()(x)
    expected = [(1, 256, 64, 32), (1, 512, 32, 16), (1, 1024, 16, 8)]
    assert [tuple(t.shape) for t in one] == [*expected, (1, 2048, 16, 8)]
    assert [tuple(t.shape) for t in two] == [*expected, (1, 2048, 8, 4)]


@pytest.mark.parametrize("size", [(64, 32), (70, 33), (97, 50)])
def test_feature_grid_predicts_every_stage_size(size) -> None:
    with torch.no_grad():
        stages = ResNetBackbone(make_config(last_stride=2)).eval()(torch.randn(1, 3, *size))
    for stage, stride, channels in zip(stages, (4, 8, 16, 32), RESNET50_WIDTHS,
                                       strict=True):
        assert tuple(stage.shape[1:]) == (channels, *feature_grid(*size, stride))


def test_last_stride_1_loads_same_weights(hf_folder: Path, pixels: torch.Tensor) -> None:
    strided = ResNetBackbone(make_config(last_stride=2)).eval()
    dense = ResNetBackbone(make_config(last_stride=1)).eval()
    load_resnet_pretrained(strided, hf_folder)
    load_resnet_pretrained(dense, hf_folder)
    with torch.no_grad():
        a, b = strided(pixels), dense(pixels)
    for index in range(3):
        assert torch.equal(a[index], b[index])
    assert b[3].shape[-2:] == (HEIGHT // 16, WIDTH // 16)


def test_channels_last(pixels: torch.Tensor) -> None:
    torch.manual_seed(5)
    backbone = ResNetBackbone(make_config()).eval()
    with torch.no_grad():
        reference = backbone(pixels)
        backbone = backbone.to(memory_format=torch.channels_last)
        result = backbone(pixels.contiguous(memory_format=torch.channels_last))
    assert result[3].is_contiguous(memory_format=torch.channels_last)
    assert max_diff(result, reference) < 1e-4


def test_frozen_batch_norm_stays_frozen(pixels: torch.Tensor) -> None:
    backbone = ResNetBackbone(make_config(frozen_batch_norm=True))
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 53  # stem + 3 per block (16 blocks) + 4 shortcuts
    assert all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    randomise_batch_norm(backbone, torch.Generator().manual_seed(6))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()
    nn.Sequential(backbone).train()  # a parent's train() must not unfreeze them either
    assert backbone.training and not any(m.training for m in norms)
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    backbone.layer4.requires_grad_(True)  # blockwise unfreezing flips the flags ...
    backbone(pixels)[3].sum().backward()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ... yet the affine parameters still get no gradient, while the convolutions do.
    assert all(p.grad is None for m in norms for p in m.parameters())
    assert backbone.layer4[0].conv1.weight.grad is not None


def test_unfrozen_batch_norm_trains() -> None:
    backbone = ResNetBackbone(make_config(frozen_batch_norm=False)).train()
    assert backbone.bn1.training and backbone.bn1.weight.requires_grad
    before = backbone.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, HEIGHT, WIDTH))
    assert not torch.equal(before, backbone.bn1.running_mean)


def test_unfreezable_blocks_order() -> None:
    backbone = ResNetBackbone(make_config())
    blocks = backbone.unfreezable_blocks()
    assert blocks == [backbone.layer4, backbone.layer3, backbone.layer2, backbone.layer1]
    inside = {id(p) for block in blocks for p in block.parameters()}
    assert id(backbone.conv1.weight) not in inside and id(backbone.bn1.weight) not in inside


def test_gradient_checkpointing_matches_plain_backward(pixels: torch.Tensor) -> None:
    torch.manual_seed(7)
    plain = ResNetBackbone(make_config()).train()
    checkpointed = ResNetBackbone(make_config()).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing = True
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    # A hook on the block's first op: the recomputation stops early, before the block's own
    # forward hooks would run.
    checkpointed.layer1[0].conv1.register_forward_hook(count)
    for model in (plain, checkpointed):
        sum(stage.square().mean() for stage in model(pixels)).backward()
    assert calls == 2  # forward + recomputation: checkpointing really ran
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    # The recomputation does not fold the batch into the running statistics a second time.
    for key, tensor in plain.state_dict().items():
        assert torch.allclose(tensor.float(), checkpointed.state_dict()[key].float()), key


def test_bad_input_raises() -> None:
    backbone = ResNetBackbone(make_config())
    with pytest.raises(ValueError, match="1 channels, expected config.num_channels = 3"):
        backbone(torch.randn(1, 1, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        backbone(torch.randn(3, HEIGHT, WIDTH))


def test_strict_error_lists_missing_and_unexpected(hf_model: ResNetModel) -> None:
    state_dict = hf_to_torchvision(hf_model.state_dict())
    del state_dict["layer4.2.conv3.weight"]
    state_dict["layer5.0.conv1.weight"] = torch.zeros(1)
    backbone = ResNetBackbone(make_config())
    before = backbone.conv1.weight.clone()
    with pytest.raises(ValueError, match=r"layer4\.2\.conv3\.weight.*layer5\.0\.conv1\.weight"):
        load_resnet_pretrained(backbone, state_dict)
    assert torch.equal(before, backbone.conv1.weight)  # nothing loaded on failure
    report = load_resnet_pretrained(backbone, state_dict, strict=False)
    assert report.missing == ("layer4.2.conv3.weight",)
    assert report.unexpected == ("layer5.0.conv1.weight",)
    assert torch.equal(backbone.conv1.weight, state_dict["conv1.weight"])


def test_shape_mismatch_raises_even_when_not_strict(hf_model: ResNetModel) -> None:
    state_dict = hf_to_torchvision(hf_model.state_dict())
    state_dict["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv1\.weight: checkpoint \(64, 3, 3, 3\)"):
        load_resnet_pretrained(ResNetBackbone(make_config()), state_dict, strict=False)


def test_hf_config_of_another_architecture_rejected(tmp_path: Path) -> None:
    config = ResNetConfig(depths=[1, 1, 1, 1], layer_type="basic", hidden_sizes=[8, 8, 8, 8])
    ResNetModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layer_type: checkpoint 'basic', expected 'bottleneck'"):
        load_resnet_pretrained(ResNetBackbone(make_config()), tmp_path)


def test_pickled_object_in_pth_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"conv1.weight": torch.zeros(1), "payload": Path("/")}, handle, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_resnet_pretrained(ResNetBackbone(make_config()), path)


def test_unrecognised_and_missing_sources(tmp_path: Path) -> None:
    backbone = ResNetBackbone(make_config())
    with pytest.raises(ValueError, match="not a recognised ResNet checkpoint"):
        load_resnet_pretrained(backbone, {"foo.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="not an existing file or folder"):
        load_resnet_pretrained(backbone, tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_resnet_pretrained(backbone, tmp_path)
    with pytest.raises(ValueError, match="must be a ResNetBackbone"):
        load_resnet_pretrained(nn.Linear(1, 1), {})  # type: ignore[arg-type]


def test_hub_id_offline_without_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="'someone/no-such-resnet'"):
        load_resnet_pretrained(ResNetBackbone(make_config()), "someone/no-such-resnet")


# ------------------------------------------------------------ trunks of any depth and width

#: Recommended tiny trunk for CPU tests and presets: ResNet-18-shaped, one block per stage.
TINY_TRUNK = {
    "layer_type": "basic",
    "depths": (1, 1, 1, 1),
    "hidden_sizes": (16, 32, 64, 128),
    "stem_channels": 16,
}
TINY_WIDTHS = (16, 32, 64, 128)
#: Unequal depths per stage, so a stage/depth mix-up cannot pass the parity tests.
TINY_DEPTHS = {"basic": (2, 1, 2, 1), "bottleneck": (1, 2, 1, 2)}


def tiny_config(**overrides: object) -> ResNetReIDConfig:
    return ResNetReIDConfig(**{**TINY_TRUNK, "last_stride": 2, **overrides})


@pytest.fixture(scope="module", params=["basic", "bottleneck"])
def tiny_hf(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ResNetModel, Path, ResNetReIDConfig]:
    """(random tiny transformers ResNetModel, its save_pretrained folder, matching config)."""
    layer_type = request.param
    torch.manual_seed(10)
    # Embedding 8 -> stage 1 of 16 channels: stage 1 has a stride-1 projection shortcut.
    config = ResNetConfig(
        layer_type=layer_type,
        depths=list(TINY_DEPTHS[layer_type]),
        hidden_sizes=list(TINY_WIDTHS),
        embedding_size=8,
    )
    model = ResNetModel(config)
    randomise_batch_norm(model, torch.Generator().manual_seed(11))
    folder = tmp_path_factory.mktemp(f"tiny_{layer_type}")
    model.save_pretrained(folder)
    ours = tiny_config(
        layer_type=layer_type, depths=TINY_DEPTHS[layer_type], stem_channels=8
    )
    return model.eval(), folder, ours


def test_tiny_hf_folder_parity(tiny_hf: tuple, pixels: torch.Tensor) -> None:
    model, folder, config = tiny_hf
    backbone = ResNetBackbone(config).eval()
    report = load_resnet_pretrained(backbone, folder)
    assert report.source_format == "huggingface"
    assert report.missing == report.unexpected == report.ignored == ()
    assert set(report.loaded) == set(backbone.state_dict())
    with torch.no_grad():
        reference = model(pixels, output_hidden_states=True).hidden_states[1:]
        ours = backbone(pixels)
    assert backbone.stage_channels == TINY_WIDTHS
    assert [stage.shape[1] for stage in ours] == list(TINY_WIDTHS)
    assert max_diff(ours, reference) < 1e-5


def test_tiny_torchvision_and_prefixed_hf_state_dicts(
    tiny_hf: tuple, pixels: torch.Tensor, tmp_path: Path
) -> None:
    model, _, config = tiny_hf
    with torch.no_grad():
        reference = model(pixels, output_hidden_states=True).hidden_states[1:]
    torchvision = hf_to_torchvision(model.state_dict())
    torchvision["fc.weight"], torchvision["fc.bias"] = torch.zeros(10, 128), torch.zeros(10)
    pth = tmp_path / "tiny.pth"
    torch.save(torchvision, pth)
    classification = {"resnet." + k: v for k, v in model.state_dict().items()}
    classification["classifier.1.weight"] = torch.zeros(10, 128)
    for source, layout in ((pth, "torchvision"), (classification, "huggingface")):
        backbone = ResNetBackbone(config).eval()
        report = load_resnet_pretrained(backbone, source)
        assert report.source_format == layout
        assert report.missing == report.unexpected == () and len(report.ignored) >= 1
        with torch.no_grad():
            assert max_diff(backbone(pixels), reference) < 1e-5


def test_hf_folder_of_another_depth_or_width_names_both(tiny_hf: tuple) -> None:
    model, folder, config = tiny_hf
    shallow = ResNetBackbone(tiny_config(layer_type=config.layer_type, stem_channels=8))
    depths = TINY_DEPTHS[config.layer_type]
    with pytest.raises(ValueError, match=rf"depths: checkpoint {re.escape(str(depths))}, "
                       r"expected \(1, 1, 1, 1\)"):
        load_resnet_pretrained(shallow, folder)
    report = load_resnet_pretrained(shallow, folder, strict=False)  # the common blocks load
    assert report.missing == () and {key.split(".")[4] for key in report.unexpected} == {"1"}
    message = (
        r"hidden_sizes: checkpoint \(16, 32, 64, 128\), expected \(256, 512, 1024, 2048\)"
        r".*embedding_size \(our stem_channels\): checkpoint 8, expected 64"
    )
    with pytest.raises(ValueError, match=message) as error:
        load_resnet_pretrained(ResNetBackbone(make_config()), folder, strict=False)
    assert "(ResNet-50)" in str(error.value)


def test_state_dict_of_another_architecture_names_both() -> None:
    torch.manual_seed(12)
    source = ResNetBackbone(tiny_config(depths=(2, 1, 2, 1))).state_dict()
    target = ResNetBackbone(make_config())
    before = target.conv1.weight.clone()
    message = (
        r"holds a ResNet with layer_type='basic', depths=\(2, 1, 2, 1\), "
        r"hidden_sizes=\(16, 32, 64, 128\), stem_channels=16, but the backbone is configured "
        r"with layer_type='bottleneck', depths=\(3, 4, 6, 3\), "
        r"hidden_sizes=\(256, 512, 1024, 2048\), stem_channels=64 \(ResNet-50\)"
    )
    for strict in (True, False):  # other widths or block types never load
        with pytest.raises(ValueError, match=message):
            load_resnet_pretrained(target, source, strict=strict)
    assert torch.equal(before, target.conv1.weight)


def test_other_depth_loads_the_common_blocks_only_when_not_strict() -> None:
    torch.manual_seed(13)
    source = ResNetBackbone(tiny_config(depths=(2, 1, 2, 1))).state_dict()
    shallow = ResNetBackbone(tiny_config())
    with pytest.raises(ValueError, match=r"depths=\(2, 1, 2, 1\).*depths=\(1, 1, 1, 1\)"):
        load_resnet_pretrained(shallow, source)
    report = load_resnet_pretrained(shallow, source, strict=False)
    assert report.missing == ()
    assert {key.split(".")[0] + "." + key.split(".")[1] for key in report.unexpected} == {
        "layer1.1",
        "layer3.1",
    }
    for key, tensor in shallow.state_dict().items():
        assert torch.equal(tensor, source[key]), key
    deep = ResNetBackbone(tiny_config(depths=(2, 2, 2, 2)))
    report = load_resnet_pretrained(deep, source, strict=False)
    assert report.unexpected == ()
    assert {key.split(".")[0] for key in report.missing} == {"layer2", "layer4"}


@pytest.mark.parametrize(
    ("layer_type", "depths", "hidden_sizes", "parameters"),
    [
        # torchvision's resnet18/34/50/101 parameter counts minus the 1000-class fc layer.
        ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 11_689_512 - 513_000),
        ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 21_797_672 - 513_000),
        ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048), 25_557_032 - 2_049_000),
        ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048), 44_549_160 - 2_049_000),
    ],
)
def test_torchvision_sizes(layer_type, depths, hidden_sizes, parameters) -> None:
    config = ResNetReIDConfig(layer_type=layer_type, depths=depths, hidden_sizes=hidden_sizes)
    with torch.device("meta"):
        backbone = ResNetBackbone(config)
    assert sum(p.numel() for p in backbone.parameters()) == parameters
    assert backbone.stage_channels == hidden_sizes
    # torchvision names: 3x3 conv1 in basic blocks, 1x1 conv1 + conv3 in bottlenecks.
    names = set(backbone.state_dict())
    assert ("layer1.0.conv3.weight" in names) == (layer_type == "bottleneck")
    assert backbone.layer2[0].conv1.weight.shape[-1] == (3 if layer_type == "basic" else 1)


def test_model_embedding_size_is_not_the_stem_width() -> None:
    # PAN's and PRCT's configs use embedding_size for the output embedding (256 / 2048);
    # transformers' ResNetConfig uses it for the stem width, which is stem_channels here.
    config = make_config()
    config.embedding_size = 256
    with torch.device("meta"):
        backbone = ResNetBackbone(config)
    assert backbone.conv1.weight.shape == (64, 3, 7, 7)


def test_resnet_reid_config_defaults_and_round_trip(tmp_path: Path) -> None:
    config = ResNetReIDConfig()
    assert (config.layer_type, config.depths, config.stem_channels) == (
        "bottleneck",
        (3, 4, 6, 3),
        64,
    )
    assert config.stage_channels == config.hidden_sizes == RESNET50_WIDTHS
    assert (config.image_size, config.num_channels, config.last_stride) == ((256, 128), 3, 1)
    assert config.frozen_batch_norm is False and config.stem_activation is True
    tiny = tiny_config(depths=[2, 1, 2, 1], image_size=64, stem_activation=False)
    assert tiny.depths == (2, 1, 2, 1) and tiny.image_size == (64, 64)
    tiny.save_pretrained(tmp_path)
    reloaded = ResNetReIDConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == tiny.to_dict()
    assert reloaded.depths == (2, 1, 2, 1) and reloaded.stage_channels == TINY_WIDTHS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depths": (3, 4, 6)}, r"depths must be four positive integers \(one per stage\), "
                                r"got \(3, 4, 6\)"),
        ({"depths": (3, 0, 6, 3)}, "depths must be four positive integers"),
        ({"depths": 4}, "depths must be four positive integers"),
        ({"hidden_sizes": (16, 32, 64, 128.0)}, "hidden_sizes must be four positive integers"),
        ({"layer_type": "bottleneck", "hidden_sizes": (18, 32, 64, 128)},
         r"hidden_sizes must be divisible by 4 with layer_type 'bottleneck'"),
        ({"layer_type": "wide"}, r"layer_type must be one of \('bottleneck', 'basic'\), "
                                 "got 'wide'"),
        ({"stem_channels": 0}, "stem_channels must be an integer >= 1, got 0"),
        ({"num_channels": -1}, "num_channels must be an integer >= 1, got -1"),
        ({"last_stride": 3}, "last_stride must be 1 or 2, got 3"),
        ({"last_stride": True}, "last_stride must be 1 or 2, got True"),
        ({"frozen_batch_norm": 1}, "frozen_batch_norm must be a bool, got 1"),
        ({"stem_activation": "no"}, "stem_activation must be a bool, got 'no'"),
        ({"image_size": (0, 64)}, "image_size must be positive"),
    ],
)
def test_resnet_reid_config_rejects(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_basic_hidden_sizes_need_not_divide_by_4() -> None:
    assert tiny_config(hidden_sizes=(6, 10, 14, 18)).stage_channels == (6, 10, 14, 18)


def test_stem_activation_switch(pixels: torch.Tensor) -> None:
    torch.manual_seed(14)
    with_relu = ResNetBackbone(tiny_config()).eval()
    without = ResNetBackbone(tiny_config(stem_activation=False)).eval()
    randomise_batch_norm(with_relu, torch.Generator().manual_seed(15))
    load_resnet_pretrained(without, with_relu.state_dict())  # same weights, no extra tensors
    pooled_inputs = []
    for backbone in (with_relu, without):
        backbone.maxpool.register_forward_hook(lambda _, args, __: pooled_inputs.append(args[0]))
        with torch.no_grad():
            backbone(pixels)
    assert pooled_inputs[0].min() >= 0 and pooled_inputs[1].min() < 0
    stem = with_relu.bn1(with_relu.conv1(pixels))
    assert torch.allclose(pooled_inputs[0], stem.relu()) and torch.allclose(pooled_inputs[1], stem)


def test_basic_block_computes_torchvision_basic_block() -> None:
    torch.manual_seed(16)
    block = BasicBlock(8, 16, 2, nn.BatchNorm2d).eval()
    randomise_batch_norm(block, torch.Generator().manual_seed(17))
    assert sorted({key.rsplit(".", 1)[0] for key in block.state_dict()}) == [
        "bn1", "bn2", "conv1", "conv2", "downsample.0", "downsample.1",
    ]
    x = torch.randn(2, 8, 9, 6)
    with torch.no_grad():
        inner = block.bn2(block.conv2(block.bn1(block.conv1(x)).relu()))
        expected = (inner + block.downsample(x)).relu()
        assert block(x).shape == (2, 16, 5, 3)
        assert torch.allclose(block(x), expected)
    identity = BasicBlock(16, 16, 1, nn.BatchNorm2d).eval()
    assert identity.downsample is None and identity.conv1.stride == (1, 1)
    y = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        inner = identity.bn2(identity.conv2(identity.bn1(identity.conv1(y)).relu()))
        assert torch.allclose(identity(y), (inner + y).relu())


def test_tiny_trunk_frozen_batch_norm_and_unfreezable_blocks() -> None:
    backbone = ResNetBackbone(tiny_config(frozen_batch_norm=True)).train()
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    # stem + 2 per basic block (4 blocks) + shortcuts of stages 2-4 (stage 1 keeps 16 channels)
    assert len(norms) == 12 and all(isinstance(m, FrozenBatchNorm2d) and not m.training
                                    for m in norms)
    assert backbone.unfreezable_blocks() == [
        backbone.layer4, backbone.layer3, backbone.layer2, backbone.layer1,
    ]


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_tiny_gradient_checkpointing_matches_plain_backward(
    layer_type: str, pixels: torch.Tensor
) -> None:
    torch.manual_seed(18)
    config = tiny_config(layer_type=layer_type, depths=TINY_DEPTHS[layer_type])
    plain, checkpointed = ResNetBackbone(config).train(), ResNetBackbone(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing = True
    calls = []
    checkpointed.layer3[-1].conv1.register_forward_hook(lambda *_: calls.append(1))
    for model in (plain, checkpointed):
        sum(stage.square().mean() for stage in model(pixels)).backward()
    assert len(calls) == 2  # forward + recomputation
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    for key, tensor in plain.state_dict().items():
        assert torch.allclose(tensor.float(), checkpointed.state_dict()[key].float()), key
