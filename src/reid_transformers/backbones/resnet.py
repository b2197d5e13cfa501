"""torchvision-layout bottleneck ResNet-50 backbone, with loaders for HF and torchvision weights.

The trunk is torchvision's ResNet-50 "v1.5" (the stride of a downsampling block sits on its
3x3 convolution, not on the first 1x1):

    stem:   conv1 7x7/2 (no bias) -> bn1 -> ReLU -> max-pool 3x3/2   (B, 64, H/4, W/4)
    layer1: 3 Bottleneck blocks, stride 1                            (B, 256, H/4, W/4)
    layer2: 4 blocks, first with stride 2                            (B, 512, H/8, W/8)
    layer3: 6 blocks, first with stride 2                            (B, 1024, H/16, W/16)
    layer4: 3 blocks, first with stride ``last_stride`` (1 or 2)     (B, 2048, H/16 or H/32, ...)

A Bottleneck block of width w computes ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))
+ shortcut(x))`` with conv1 1x1 (-> w), conv2 3x3 (w -> w, carries the stride), conv3 1x1
(w -> 4w); the shortcut is the identity, or ``downsample`` = 1x1 strided conv + BN when the
shape changes. ``last_stride = 1`` is the PCB / BoT re-ID trick: stage 4 keeps the 16x8 map of
a 256x128 input. Spatial sizes above are exact for inputs divisible by 32; otherwise each
stride-2 layer rounds up ((n + 1) // 2), as the convolutions' padding does.

The parameter names are torchvision's (``conv1``, ``bn1``, ``layer{1..4}.{b}.conv{1,2,3}`` /
``bn{1,2,3}`` / ``downsample.{0,1}``), so torchvision state dicts load unchanged.
`load_resnet_pretrained` also reads Hugging Face `transformers.ResNetModel` checkpoints such as
``microsoft/resnet-50``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedConfig, ResNetConfig

from .vit import (
    LoadReport,
    _detect_format,
    _load_checked,
    _read_hf_config,
    _read_state_dict_file,
    _resolve_checkpoint,
    _tensor_dict,
)

__all__ = [
    "RESNET50_STAGE_CHANNELS",
    "Bottleneck",
    "feature_grid",
    "FrozenBatchNorm2d",
    "ResNetBackbone",
    "ResNetSourceFormat",
    "load_resnet_pretrained",
]

ResNetSourceFormat: TypeAlias = Literal["huggingface", "torchvision"]
StateDict: TypeAlias = Mapping[str, torch.Tensor]

#: Blocks per stage and bottleneck widths of ResNet-50.
_DEPTHS = (3, 4, 6, 3)
_WIDTHS = (64, 128, 256, 512)
_STEM_CHANNELS = 64


#: Output channels of layer1..layer4: 256, 512, 1024, 2048.
RESNET50_STAGE_CHANNELS = tuple(4 * width for width in _WIDTHS)


def feature_grid(height: int, width: int, stride: int) -> tuple[int, int]:
    """``(ceil(height / stride), ceil(width / stride))``: the size of the trunk's feature map
    of total stride ``stride`` (4, 8, 16 or 32) for a ``height x width`` input, since every
    stride-2 layer rounds up. 16x8 for 256x128 at stride 16."""
    return -(-height // stride), -(-width // stride)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that always normalises with its running statistics and never learns.

    - ``train()`` leaves it in eval mode, so a parent's ``model.train()`` does not switch it
      back to batch statistics, and the running statistics are never updated.
    - Its affine parameters are created with ``requires_grad=False`` and are detached in the
      forward pass, so they get no gradient even if a later ``requires_grad_(True)`` on an
      enclosing module flips the flag (optimizers skip parameters without a gradient).

    The state-dict keys are those of ``BatchNorm2d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), so checkpoints load either way.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        """Ignore ``mode``: frozen batch norm stays in eval mode."""
        return super().train(False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, C, H, W)`` with the running statistics; returns the same shape."""
        return F.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight.detach(),
            self.bias.detach(),
            training=False,
            eps=self.eps,
        )


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck block: 1x1 -> 3x3 (strided) -> 1x1 (x4 channels) + shortcut.

    Args:
        in_channels: channels of the input.
        width: channels of the inner 1x1 / 3x3 convolutions; the output has ``4 * width``.
        stride: stride of the 3x3 convolution (and of the shortcut projection).
        norm_layer: ``nn.BatchNorm2d`` or `FrozenBatchNorm2d`.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        norm_layer: type[nn.BatchNorm2d],
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                norm_layer(out_channels),
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 4 * width, ceil(H / stride), ceil(W / stride))``."""
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


@contextlib.contextmanager
def _running_stats_untouched(module: nn.Module) -> Iterator[None]:
    """Keep the batch-norm running statistics of ``module`` unchanged inside the block.

    Gradient checkpointing runs a block's forward twice; a training-mode batch norm would
    otherwise fold the same batch into its running statistics twice. Momentum 0 keeps the
    running mean/var, and ``num_batches_tracked`` (which batch norm still increments) is
    restored on exit. Normalisation itself still uses the batch statistics, so the
    recomputed activations equal the original ones.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (
            norm,
            norm.momentum,
            None if norm.num_batches_tracked is None else norm.num_batches_tracked.clone(),
        )
        for norm in norms
    ]
    for norm, _, _ in saved:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum, count in saved:
            norm.momentum = momentum
            if count is not None:
                norm.num_batches_tracked.copy_(count)


def _positive_int(config: PreTrainedConfig, name: str) -> int:
    value = getattr(config, name, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.{name} must be a positive int, got {value!r}")
    return value


class ResNetBackbone(nn.Module):
    """ResNet-50 trunk (torchvision layout) returning the four stage outputs.

    A plain ``nn.Module`` meant to live inside a model's ``PreTrainedModel``. Config fields
    read:

    - ``num_channels``: input channels (3 for RGB).
    - ``last_stride``: 1 or 2, the stride of layer4's first block. 1 keeps stage 4 at H/16
      (16x8 for a 256x128 input; the PCB / BoT trick), 2 is the ImageNet network (H/32).
    - ``frozen_batch_norm``: bool. If true every batch norm of the trunk (stem, blocks and
      shortcuts) is a `FrozenBatchNorm2d`: always in eval mode, even after ``model.train()``,
      running statistics never updated, affine parameters never trained.

    Attributes:
        gradient_checkpointing: when true and in training mode (with autograd on), every
            Bottleneck block runs under non-reentrant ``torch.utils.checkpoint``: its
            activations are recomputed in the backward pass instead of stored. Gradients and
            batch-norm running statistics equal those of the plain forward.
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.num_channels = _positive_int(config, "num_channels")
        last_stride = getattr(config, "last_stride", None)
        if last_stride not in (1, 2) or isinstance(last_stride, bool):
            raise ValueError(f"config.last_stride must be 1 or 2, got {last_stride!r}")
        frozen = getattr(config, "frozen_batch_norm", None)
        if not isinstance(frozen, bool):
            raise ValueError(f"config.frozen_batch_norm must be a bool, got {frozen!r}")
        norm_layer: type[nn.BatchNorm2d] = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        self.gradient_checkpointing = False

        self.conv1 = nn.Conv2d(
            self.num_channels, _STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = norm_layer(_STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = _STEM_CHANNELS
        strides = (1, 2, 2, last_stride)
        for index, (depth, width, stride) in enumerate(
            zip(_DEPTHS, _WIDTHS, strides, strict=True), start=1
        ):
            blocks = []
            for block_index in range(depth):
                blocks.append(
                    Bottleneck(in_channels, width, stride if block_index == 0 else 1, norm_layer)
                )
                in_channels = width * Bottleneck.expansion
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation: He-normal (fan-out) convolutions, unit-scale BN.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def stages(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential, nn.Sequential]:
        """``(layer1, layer2, layer3, layer4)``."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode images.

        Args:
            pixel_values: ``(B, num_channels, H, W)`` normalised pixels (ImageNet mean/std for
                ImageNet weights); cast to the weights' dtype. Contiguous or channels-last.

        Returns:
            The outputs of layer1..layer4: ``(B, 256, H/4, W/4)``, ``(B, 512, H/8, W/8)``,
            ``(B, 1024, H/16, W/16)`` and ``(B, 2048, H/16, W/16)`` with ``last_stride = 1``
            or ``(B, 2048, H/32, W/32)`` with 2 (sizes rounded up for H, W not divisible by
            32). Each keeps the memory format the convolutions produce (channels-last in,
            channels-last out).
        """
        if pixel_values.ndim != 4:
            raise ValueError(
                "pixel_values must have shape (batch, channels, height, width), got "
                f"{tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values have {pixel_values.shape[1]} channels, expected "
                f"config.num_channels = {self.num_channels}"
            )
        hidden_states = pixel_values.to(self.conv1.weight.dtype)
        hidden_states = self.maxpool(self.relu(self.bn1(self.conv1(hidden_states))))
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        outputs = []
        for stage in self.stages:
            for block in stage:
                if use_checkpoint:
                    hidden_states = checkpoint(
                        block,
                        hidden_states,
                        use_reentrant=False,
                        context_fn=lambda block=block: (
                            contextlib.nullcontext(),
                            _running_stats_untouched(block),
                        ),
                    )
                else:
                    hidden_states = block(hidden_states)
            outputs.append(hidden_states)
        return outputs[0], outputs[1], outputs[2], outputs[3]

    def unfreezable_blocks(self) -> list[nn.Sequential]:
        """``[layer4, layer3, layer2, layer1]``: the stages from the output side down, the
        order in which blockwise fine-tuning unfreezes them. The stem (``conv1``, ``bn1``) is
        never included."""
        return [self.layer4, self.layer3, self.layer2, self.layer1]


# --------------------------------------------------------------------------- weight loading

_NORM = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
_HF_BLOCK = r"encoder\.stages\.(?P<s>\d+)\.layers\.(?P<b>\d+)\."

#: Hugging Face ResNetModel key (after the prefix) -> our key. Templates are filled with the
#: named groups; HF stages ``s`` and inner layers ``c`` count from 0, torchvision's
#: ``layer{1..4}`` and ``conv{1..3}`` / ``bn{1..3}`` from 1.
_HF_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"embedder\.embedder\.convolution\.weight"), "conv1.weight"),
    (re.compile(r"embedder\.embedder\.normalization\." + _NORM), "bn1.{p}"),
    (re.compile(_HF_BLOCK + r"shortcut\.convolution\.weight"), "layer{s}.{b}.downsample.0.weight"),
    (re.compile(_HF_BLOCK + r"shortcut\.normalization\." + _NORM), "layer{s}.{b}.downsample.1.{p}"),
    (
        re.compile(_HF_BLOCK + r"layer\.(?P<c>[0-2])\.convolution\.weight"),
        "layer{s}.{b}.conv{c}.weight",
    ),
    (
        re.compile(_HF_BLOCK + r"layer\.(?P<c>[0-2])\.normalization\." + _NORM),
        "layer{s}.{b}.bn{c}.{p}",
    ),
)

#: A key only this layout has; also tells the prefix in front of the trunk (``resnet.`` in
#: ResNetForImageClassification, ``module.`` from DistributedDataParallel, ``backbone.``...).
_FORMAT_MARKERS: dict[ResNetSourceFormat, str] = {
    "huggingface": "embedder.embedder.convolution.weight",
    "torchvision": "layer1.0.conv1.weight",
}

_IGNORED_HEADS: dict[ResNetSourceFormat, re.Pattern[str]] = {
    "huggingface": re.compile(r"classifier\..+"),
    "torchvision": re.compile(r"fc\..+"),
}

#: (ResNetConfig field, value a torchvision ResNet-50 has).
_HF_ARCHITECTURE = (
    ("layer_type", "bottleneck"),
    ("depths", list(_DEPTHS)),
    ("hidden_sizes", [w * Bottleneck.expansion for w in _WIDTHS]),
    ("embedding_size", _STEM_CHANNELS),
    ("hidden_act", "relu"),
    ("downsample_in_first_stage", False),
    ("downsample_in_bottleneck", False),
)

def load_resnet_pretrained(
    backbone: ResNetBackbone,
    source: str | os.PathLike[str] | StateDict,
    *,
    strict: bool = True,
) -> LoadReport:
    """Load pretrained ResNet-50 weights into ``backbone`` in place.

    Args:
        backbone: the `ResNetBackbone` to fill (any ``last_stride``: strides hold no weights).
        source: one of
            - a local Hugging Face `transformers.ResNetModel` / ``ResNetForImageClassification``
              checkpoint folder (``config.json`` plus ``model.safetensors``, a sharded
              ``model.safetensors.index.json``, or ``pytorch_model.bin``);
            - a Hub repository id such as ``"microsoft/resnet-50"`` (fetched with
              ``huggingface_hub.snapshot_download``, safetensors files only; honours
              ``HF_HUB_OFFLINE`` and the Hub cache);
            - a torchvision-format state dict file: ``.safetensors``, or ``.pth``/``.pt``/
              ``.bin`` read with ``torch.load(weights_only=True)`` (a file needing arbitrary
              unpickling is refused); ``{"state_dict"|"model"|"module": ...}`` is unwrapped;
            - an in-memory state dict (either layout).
            The layout and any prefix in front of the keys (``resnet.``, ``module.``, ...) are
            detected from the keys.
        strict: raise if any backbone tensor gets no value or any checkpoint key is left
            unused. Classifier keys (torchvision ``fc.*``, HF ``classifier.*``) never count:
            they are listed in `LoadReport.ignored`. ``num_batches_tracked`` counters are
            loaded when present but never required (older torchvision files lack them).

    Returns:
        A `LoadReport` with ``source_format`` ``"huggingface"`` or ``"torchvision"`` (this
        backbone's own ``state_dict()`` is torchvision layout) and ``resized`` empty.

    Raises:
        FileNotFoundError: ``source`` is neither an existing path nor a Hub id, or a folder
            lacks the expected files.
        OSError: the Hub download failed (no network, unknown repository, offline mode
            without a cached copy).
        ValueError: unrecognised or ambiguous key layout, an HF config that is not a
            torchvision-style ResNet-50, shape mismatches, an unreadable file, or (with
            ``strict``) missing/unexpected keys. Nothing is loaded when it raises.
    """
    if not isinstance(backbone, ResNetBackbone):
        raise ValueError(f"backbone must be a ResNetBackbone, got {type(backbone).__name__}")
    state_dict, description = _read_source(source, backbone.num_channels)
    source_format, prefix = _detect_format(state_dict, description, _FORMAT_MARKERS, "ResNet")
    converted, unexpected, ignored = _convert(state_dict, source_format, prefix)

    own = backbone.state_dict()
    for target in [key for key in converted if key not in own]:
        unexpected.append(converted.pop(target)[0])
    missing = [
        key for key in own if key not in converted and not key.endswith("num_batches_tracked")
    ]
    tensors = {key: tensor for key, (_, tensor) in converted.items()}
    _load_checked(backbone, tensors, missing, unexpected, strict, description, "ResNet-50 backbone")
    return LoadReport(
        source_format=source_format,
        loaded=tuple(sorted(converted)),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        ignored=tuple(ignored),
        resized={},
    )


def _read_source(
    source: str | os.PathLike[str] | StateDict, num_channels: int
) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description of the source for messages)."""
    if isinstance(source, Mapping):
        return _tensor_dict(source, "the given state dict"), "the given state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "source must be a path, a Hub repository id or a state dict, got "
            f"{type(source).__name__}"
        )
    path = _resolve_checkpoint(source, example_repo="microsoft/resnet-50")
    if path.is_dir():
        return _read_hf_folder(path, num_channels)
    return _read_state_dict_file(path), str(path)


def _read_hf_folder(folder: Path, num_channels: int) -> tuple[dict[str, torch.Tensor], str]:
    config = _read_hf_config(folder, ResNetConfig, "ResNet")
    expected = (*_HF_ARCHITECTURE, ("num_channels", num_channels))
    differences = [
        f"{name}: checkpoint {getattr(config, name, None)!r}, expected {value!r}"
        for name, value in expected
        if getattr(config, name, None) != value
    ]
    if differences:
        raise ValueError(
            f"{folder} is not a torchvision-style ResNet-50 matching the backbone: "
            + "; ".join(differences)
        )

    single, index, legacy = (
        folder / "model.safetensors",
        folder / "model.safetensors.index.json",
        folder / "pytorch_model.bin",
    )
    if single.is_file():
        return _read_state_dict_file(single), str(folder)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
            raise ValueError(f"{index} is not a safetensors shard index: {error}") from error
        state_dict: dict[str, torch.Tensor] = {}
        for shard in shards:
            state_dict.update(_read_state_dict_file(folder / shard))
        return state_dict, str(folder)
    if legacy.is_file():
        return _read_state_dict_file(legacy), str(folder)
    raise FileNotFoundError(
        f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _convert(
    state_dict: Mapping[str, torch.Tensor], source_format: ResNetSourceFormat, prefix: str
) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str], list[str]]:
    """Rename to our (torchvision) keys.

    Returns (our key -> (checkpoint key, tensor), unexpected checkpoint keys, ignored
    classifier keys).
    """
    converted: dict[str, tuple[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    ignored: list[str] = []
    for key, tensor in state_dict.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        target = None if name is None else _target_key(name, source_format)
        if target is None:
            # A head may sit outside the prefix (ResNetForImageClassification: resnet.* +
            # classifier.*).
            bare = key if name is None else name
            (ignored if _IGNORED_HEADS[source_format].fullmatch(bare) else unexpected).append(key)
        else:
            converted[target] = (key, tensor)
    return converted, unexpected, ignored


def _target_key(name: str, source_format: ResNetSourceFormat) -> str | None:
    """Our key for checkpoint key ``name`` (prefix removed), or None if it maps to nothing."""
    if source_format == "torchvision":
        return None if _IGNORED_HEADS["torchvision"].fullmatch(name) else name
    for pattern, template in _HF_RULES:
        match = pattern.fullmatch(name)
        if match is not None:
            fields = match.groupdict()
            for counter in ("s", "c"):
                if counter in fields:
                    fields[counter] = str(int(fields[counter]) + 1)
            return template.format(**fields)
    return None
