"""Tests of the torchvision-layout ResNet-50 backbone and its weight loaders."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedConfig, ResNetConfig, ResNetModel

from reid_transformers.backbones import (
    RESNET50_STAGE_CHANNELS,
    FrozenBatchNorm2d,
    LoadReport,
    ResNetBackbone,
    feature_grid,
    load_resnet_pretrained,
)

# Small input keeps ResNet-50 fast on CPU; 64x32 still leaves a 2x1 map after stride 32.
HEIGHT, WIDTH = 64, 32


def make_config(last_stride: int = 2, frozen_batch_norm: bool = False) -> PreTrainedConfig:
    return PreTrainedConfig(
        num_channels=3, last_stride=last_stride, frozen_batch_norm=frozen_batch_norm
    )


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
    for stage, stride, channels in zip(stages, (4, 8, 16, 32), RESNET50_STAGE_CHANNELS,
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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("last_stride", 3, "last_stride must be 1 or 2, got 3"),
        ("frozen_batch_norm", "yes", "frozen_batch_norm must be a bool"),
        ("num_channels", 0, "num_channels must be a positive int"),
    ],
)
def test_bad_config_raises(field: str, value: object, message: str) -> None:
    config = make_config()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        ResNetBackbone(config)


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
