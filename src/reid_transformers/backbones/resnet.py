"""torchvision-layout ResNet backbone of any depth, with loaders for HF and torchvision weights.

The trunk is torchvision's ResNet "v1.5" (the stride of a downsampling block sits on its 3x3
convolution, not on a 1x1), with the depth and widths of the config (`ResNetReIDConfig`
fields; ResNet-50 shown, C_i = ``hidden_sizes[i]``):

    stem:   conv1 7x7/2 (no bias) -> bn1 -> ReLU -> max-pool 3x3/2   (B, 64, H/4, W/4)
    layer1: depths[0] = 3 blocks, stride 1                           (B, C_1 = 256, H/4, W/4)
    layer2: 4 blocks, first with stride 2                            (B, 512, H/8, W/8)
    layer3: 6 blocks, first with stride 2                            (B, 1024, H/16, W/16)
    layer4: 3 blocks, first with stride ``last_stride`` (1 or 2)     (B, 2048, H/16 or H/32, ...)

The stem width is ``stem_channels`` and its ReLU can be switched off (``stem_activation``).
A `Bottleneck` block of output width C computes ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(
conv1(x)))))))) + shortcut(x))`` with conv1 1x1 (-> C/4), conv2 3x3 (carries the stride),
conv3 1x1 (-> C); a `BasicBlock` (ResNet-18/34) computes ``relu(bn2(conv2(relu(bn1(conv1(x)))))
+ shortcut(x))`` with two 3x3 convolutions (conv1 carries the stride). The shortcut is the
identity, or ``downsample`` = 1x1 strided conv + BN when the shape changes. ``last_stride = 1``
is the PCB / BoT re-ID trick: stage 4 keeps the 16x8 map of a 256x128 input. Spatial sizes
above are exact for inputs divisible by 32; otherwise each stride-2 layer rounds up
((n + 1) // 2), as the convolutions' padding does.

The parameter names are torchvision's (``conv1``, ``bn1``, ``layer{1..4}.{b}.conv{1,2[,3]}`` /
``bn{1,2[,3]}`` / ``downsample.{0,1}``), so torchvision ``resnet18/34/50/101`` state dicts load
unchanged. `load_resnet_pretrained` also reads Hugging Face `transformers.ResNetModel`
checkpoints such as ``microsoft/resnet-18`` ... ``microsoft/resnet-101``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedConfig, ResNetConfig

from ..configuration_utils import ResNetReIDConfig
from .loading import (
    ConvertedState,
    LoadReport,
    RenameRule,
    apply_rename_rules,
    detect_layout,
    load_converted,
    read_checkpoint,
    read_hf_config,
    rename_rule,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResidualBlock",
    "feature_grid",
    "FrozenBatchNorm2d",
    "ResNetBackbone",
    "ResNetSourceFormat",
    "load_resnet_pretrained",
]

ResNetSourceFormat: TypeAlias = Literal["huggingface", "torchvision"]
StateDict: TypeAlias = Mapping[str, torch.Tensor]


class _Architecture(NamedTuple):
    """What decides a trunk's parameter shapes (strides and the stem ReLU hold no weights)."""

    layer_type: str
    depths: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    stem_channels: int

    def describe(self) -> str:
        """``layer_type='basic', depths=(2, 2, 2, 2), ... (ResNet-18)`` for messages."""
        text = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items())
        name = _NAMED_ARCHITECTURES.get(self)
        return text if name is None else f"{text} ({name})"


#: The torchvision / ``microsoft/resnet-*`` trunks, named in error messages.
_NAMED_ARCHITECTURES = {
    _Architecture("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64): "ResNet-18",
    _Architecture("basic", (3, 4, 6, 3), (64, 128, 256, 512), 64): "ResNet-34",
    _Architecture("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048), 64): "ResNet-50",
    _Architecture("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048), 64): "ResNet-101",
    _Architecture("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048), 64): "ResNet-152",
}

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


#: The batch norm of a trunk: ``nn.BatchNorm2d`` or `FrozenBatchNorm2d`.
NormLayer: TypeAlias = type[nn.BatchNorm2d]


def _shortcut(
    in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
) -> nn.Sequential | None:
    """torchvision's ``downsample`` (1x1 strided conv + BN) where the block changes the
    shape, else None (identity shortcut)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        norm_layer(out_channels),
    )


class ResidualBlock(nn.Module):
    """A torchvision residual block, ``relu(residual_branch(x) + shortcut(x))``: the shortcut
    is the identity, or ``downsample`` where the block changes the shape.

    Subclasses are built as ``Block(in_channels, width, stride, norm_layer)``:

    Args:
        in_channels: channels of the input.
        width: inner width; the output has ``expansion * width`` channels.
        stride: stride of the block's strided 3x3 convolution (and of the shortcut
            projection).
        norm_layer: ``nn.BatchNorm2d`` or `FrozenBatchNorm2d`.
    """

    expansion: int
    relu: nn.ReLU
    downsample: nn.Sequential | None

    def residual_branch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The convolutions, before the addition and the last ReLU."""
        raise NotImplementedError(f"{type(self).__name__} must implement residual_branch()")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, expansion * width, ceil(H / stride),
        ceil(W / stride))``."""
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        return self.relu(self.residual_branch(hidden_states) + shortcut)


class BasicBlock(ResidualBlock):
    """torchvision basic block (ResNet-18 / 34): 3x3 (strided) -> 3x3, ``width`` output
    channels (expansion 1)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, width, stride, norm_layer)

    def residual_branch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """torchvision v1.5 bottleneck block: 1x1 -> 3x3 (strided) -> 1x1, ``4 * width`` output
    channels."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm_layer)

    def residual_branch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


_BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


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


class ResNetBackbone(nn.Module):
    """ResNet trunk of any depth (torchvision layout) returning the four stage outputs.

    A plain ``nn.Module`` meant to live inside a model's ``PreTrainedModel``, built from
    that model's config: a `ResNetReIDConfig` (or one deriving from it), which validated
    every field it reads; the backbone trusts them. The fields:

    - ``num_channels``: input channels (3 for RGB).
    - ``last_stride``: 1 or 2, the stride of layer4's first block. 1 keeps stage 4 at H/16
      (16x8 for a 256x128 input; the PCB / BoT trick), 2 is the ImageNet network (H/32).
    - ``frozen_batch_norm``: bool. If true every batch norm of the trunk (stem, blocks and
      shortcuts) is a `FrozenBatchNorm2d`: always in eval mode, even after ``model.train()``,
      running statistics never updated, affine parameters never trained.
    - ``depths``, ``hidden_sizes``, ``layer_type``, ``stem_channels``, ``stem_activation``:
      the architecture.

    Attributes:
        stage_channels: output channels of layer1..layer4 (``hidden_sizes``).
        gradient_checkpointing: when true and in training mode (with autograd on), every
            block runs under non-reentrant ``torch.utils.checkpoint``: its activations are
            recomputed in the backward pass instead of stored. Gradients and batch-norm
            running statistics equal those of the plain forward.
    """

    def __init__(self, config: ResNetReIDConfig) -> None:
        super().__init__()
        self.config = config
        self.num_channels: int = config.num_channels
        self._architecture = _Architecture(
            config.layer_type,
            tuple(config.depths),
            tuple(config.hidden_sizes),
            config.stem_channels,
        )
        self.stage_channels: tuple[int, ...] = self._architecture.hidden_sizes
        norm_layer: NormLayer = (
            FrozenBatchNorm2d if config.frozen_batch_norm else nn.BatchNorm2d
        )
        block_class = _BLOCKS[config.layer_type]
        self.gradient_checkpointing = False

        stem_channels = config.stem_channels
        self.conv1 = nn.Conv2d(
            self.num_channels, stem_channels, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = norm_layer(stem_channels)
        self.stem_activation = nn.ReLU(inplace=True) if config.stem_activation else nn.Identity()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        strides = (1, 2, 2, config.last_stride)
        for index, (depth, out_channels, stride) in enumerate(
            zip(config.depths, config.hidden_sizes, strides, strict=True), start=1
        ):
            width = out_channels // block_class.expansion
            blocks = []
            for block_index in range(depth):
                blocks.append(
                    block_class(in_channels, width, stride if block_index == 0 else 1, norm_layer)
                )
                in_channels = out_channels
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
            The outputs of layer1..layer4 with ``stage_channels`` (C1..C4) channels:
            ``(B, C1, H/4, W/4)``, ``(B, C2, H/8, W/8)``, ``(B, C3, H/16, W/16)`` and
            ``(B, C4, H/16, W/16)`` with ``last_stride = 1`` or ``(B, C4, H/32, W/32)`` with 2
            (sizes rounded up for H, W not divisible by 32; ResNet-50: C = 256, 512, 1024,
            2048). Each keeps the memory format the convolutions produce (channels-last in,
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
        hidden_states = self.maxpool(self.stem_activation(self.bn1(self.conv1(hidden_states))))
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
# The reading, layout detection, renaming and checked loading live in `.loading`; this
# module supplies the ResNet rename rules, the layout markers and the architecture checks.

_NORM = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
_HF_BLOCK = r"encoder\.stages\.(?P<s>\d+)\.layers\.(?P<b>\d+)\."


def _hf_target(template: str) -> Callable[[re.Match[str]], str]:
    """Fill ``template`` with a match's named groups, HF's 0-based stage ``s`` and inner
    layer ``c`` shifted to torchvision's 1-based ``layer{1..4}`` / ``conv{1..3}``."""

    def build(match: re.Match[str]) -> str:
        fields = match.groupdict()
        for counter in ("s", "c"):
            if counter in fields:
                fields[counter] = str(int(fields[counter]) + 1)
        return template.format(**fields)

    return build


#: Hugging Face ResNetModel key (after the prefix) -> our key. A bottleneck layer holds
#: ``layer.{0,1,2}``, a basic one (``ResNetBasicLayer``) ``layer.{0,1}``.
_HF_RULES: tuple[RenameRule, ...] = tuple(
    rename_rule(pattern, _hf_target(template))
    for pattern, template in (
        (r"embedder\.embedder\.convolution\.weight", "conv1.weight"),
        (r"embedder\.embedder\.normalization\." + _NORM, "bn1.{p}"),
        (_HF_BLOCK + r"shortcut\.convolution\.weight", "layer{s}.{b}.downsample.0.weight"),
        (_HF_BLOCK + r"shortcut\.normalization\." + _NORM, "layer{s}.{b}.downsample.1.{p}"),
        (_HF_BLOCK + r"layer\.(?P<c>[0-2])\.convolution\.weight", "layer{s}.{b}.conv{c}.weight"),
        (_HF_BLOCK + r"layer\.(?P<c>[0-2])\.normalization\." + _NORM, "layer{s}.{b}.bn{c}.{p}"),
    )
)

#: Our own keys are torchvision's (`ResNetBackbone` uses its names).
_RULES: dict[ResNetSourceFormat, tuple[RenameRule, ...]] = {
    "huggingface": _HF_RULES,
    "torchvision": (rename_rule(r"(.+)", r"\1"),),
}

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

#: (ResNetConfig field, value): the choices of transformers' ResNet that torchvision's
#: layout fixes; the architecture fields are compared with the backbone's own.
_HF_FIXED_FIELDS = (
    ("hidden_act", "relu"),
    ("downsample_in_first_stage", False),
)

#: Our architecture field -> `transformers.ResNetConfig`'s name for it, where they differ.
_HF_FIELD_NAMES = {"stem_channels": "embedding_size"}

#: Our block keys, for reading a checkpoint's architecture off its (renamed) keys.
_BLOCK_KEY = re.compile(r"layer(?P<s>[1-4])\.(?P<b>\d+)\.(?P<name>.+)")


def load_resnet_pretrained(
    backbone: ResNetBackbone,
    source: str | os.PathLike[str] | StateDict,
    *,
    strict: bool = True,
) -> LoadReport:
    """Load pretrained ResNet weights into ``backbone`` in place.

    The checkpoint must have the backbone's architecture (``layer_type``, ``depths``,
    ``hidden_sizes``, ``stem_channels``): ``microsoft/resnet-18`` / ``-34`` / ``-50`` /
    ``-101`` and torchvision's ``resnet18`` / ``34`` / ``50`` / ``101`` files load into a
    backbone configured as that network.

    Args:
        backbone: the `ResNetBackbone` to fill (any ``last_stride`` and ``stem_activation``:
            neither holds weights).
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
            ``strict=False`` also tolerates a checkpoint with more or fewer blocks per stage
            (the blocks both have load, the rest is reported), never other widths or block
            types.

    Returns:
        A `LoadReport` with ``source_format`` ``"huggingface"`` or ``"torchvision"`` (this
        backbone's own ``state_dict()`` is torchvision layout) and ``resized`` empty.

    Raises:
        FileNotFoundError: ``source`` is neither an existing path nor a Hub id, or a folder
            lacks the expected files.
        OSError: the Hub download failed (no network, unknown repository, offline mode
            without a cached copy).
        ValueError: unrecognised or ambiguous key layout; a checkpoint of another
            architecture (an HF config, or the keys and shapes of a state dict, whose block
            type, depths, widths or stem width differ from the backbone's; the message gives
            both); an HF config that is not torchvision-style (``hidden_act``,
            ``downsample_in_first_stage``, ``downsample_in_bottleneck``); shape mismatches;
            an unreadable file; or (with ``strict``) missing/unexpected keys. Nothing is
            loaded when it raises.
    """
    if not isinstance(backbone, ResNetBackbone):
        raise ValueError(f"backbone must be a ResNetBackbone, got {type(backbone).__name__}")
    state_dict, _, description = read_checkpoint(
        source,
        example_repo="microsoft/resnet-50",
        read_config=partial(_check_hf_config, backbone=backbone, strict=strict),
    )
    source_format, prefix = detect_layout(state_dict, description, _FORMAT_MARKERS, "ResNet")
    converted = apply_rename_rules(
        state_dict, prefix, _RULES[source_format], _IGNORED_HEADS[source_format]
    )
    _check_architecture(converted, backbone._architecture, description, strict)
    return load_converted(
        backbone,
        converted,
        source_format=source_format,
        strict=strict,
        description=description,
        backbone_name=f"ResNet backbone ({backbone._architecture.describe()})",
        # Older torchvision files lack the counters, and they hold no weights.
        optional=lambda key: key.endswith("num_batches_tracked"),
    )


def _check_architecture(
    converted: ConvertedState,
    expected: _Architecture,
    description: str,
    strict: bool,
) -> None:
    """Raise if the checkpoint's keys and shapes show another architecture than
    ``expected``: another block type, stage width or stem width always, other depths only
    with ``strict``. What the keys do not show (a stage with no keys) is not compared."""
    blocks: dict[int, set[int]] = {stage: set() for stage in range(1, 5)}
    names: set[str] = set()
    for key in converted.tensors:
        match = _BLOCK_KEY.fullmatch(key)
        if match is not None:
            blocks[int(match["s"])].add(int(match["b"]))
            names.add(match["name"].split(".")[0])
    if not names:
        return  # no block keys: strict loading reports them missing
    layer_type = "bottleneck" if names & {"conv3", "bn3"} else "basic"
    # A stage's output channels: those of its first block's last convolution.
    last_conv = "conv3" if layer_type == "bottleneck" else "conv2"
    hidden_sizes = tuple(
        _out_channels(converted.tensors.get(f"layer{stage}.0.{last_conv}.weight"))
        for stage in range(1, 5)
    )
    stem = _out_channels(converted.tensors.get("conv1.weight"))
    found = _Architecture(
        layer_type,
        tuple(max(indices) + 1 if indices else 0 for indices in blocks.values()),
        hidden_sizes,
        expected.stem_channels if stem is None else stem,
    )
    widths = zip(found.hidden_sizes, expected.hidden_sizes, strict=True)
    shapes_differ = (
        found.layer_type != expected.layer_type
        or found.stem_channels != expected.stem_channels
        or any(size not in (None, wanted) for size, wanted in widths)
    )
    depths = zip(found.depths, expected.depths, strict=True)
    depths_differ = any(depth not in (0, wanted) for depth, wanted in depths)
    if shapes_differ or (strict and depths_differ):
        raise ValueError(
            f"{description} holds a ResNet with {found.describe()}, but the backbone is "
            f"configured with {expected.describe()}; set the config's layer_type, depths, "
            "hidden_sizes and stem_channels to the checkpoint's, or load a checkpoint of the "
            "configured architecture"
        )


def _out_channels(weight: torch.Tensor | None) -> int | None:
    """Output channels of a convolution weight, None if unknown (the shape check reports a
    malformed tensor)."""
    return None if weight is None or weight.ndim == 0 else weight.shape[0]


def _check_hf_config(folder: Path, backbone: ResNetBackbone, strict: bool) -> PreTrainedConfig:
    """``folder``'s ResNet config, after checking that it describes the backbone's
    architecture (the depths only with ``strict``) in torchvision's style."""
    config = read_hf_config(folder, ResNetConfig, "ResNet")
    architecture = backbone._architecture
    # (ResNetConfig field, how messages name it, the backbone's value)
    expected: list[tuple[str, str, object]] = [
        (_HF_FIELD_NAMES.get(name, name), name, value)
        for name, value in architecture._asdict().items()
        if strict or name != "depths"  # as for state dicts: other depths load partially
    ]
    fixed = [*_HF_FIXED_FIELDS, ("num_channels", backbone.num_channels)]
    if architecture.layer_type == "bottleneck":  # transformers' basic layer ignores it
        fixed.append(("downsample_in_bottleneck", False))
    expected += [(name, name, value) for name, value in fixed]
    differences = []
    for hf_name, name, value in expected:
        found = getattr(config, hf_name, None)
        if isinstance(found, list):  # JSON arrays; the backbone's are tuples
            found = tuple(found)
        if found != value:
            label = hf_name if hf_name == name else f"{hf_name} (our {name})"
            differences.append(f"{label}: checkpoint {found!r}, expected {value!r}")
    if differences:
        raise ValueError(
            f"{folder} does not match the backbone, configured with {architecture.describe()}: "
            + "; ".join(differences)
        )
    return config
