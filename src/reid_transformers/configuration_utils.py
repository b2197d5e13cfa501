"""Configuration pieces shared by the re-ID architectures.

transformers 5 turns every ``PreTrainedConfig`` subclass into a keyword-only dataclass
whose annotated class attributes are the fields, so shared fields live in base classes and
each architecture's config adds its own. Validation runs in ``__post_init__`` and raises
``ValueError`` naming the field and what it accepts.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedConfig

#: Values of ``config.attention_scale``, the factor of the attention logits: ``"head_dim"``,
#: ``head_dim ** -0.5`` (Vaswani et al.; every ViT); ``"width"``, ``hidden_size ** -0.5``, the
#: token width (HAT's released code, whose attention is scaled by its width, not its heads).
ATTENTION_SCALES = ("head_dim", "width")


def check_positive(config: PreTrainedConfig, *names: str) -> None:
    """Every named field must be a positive int."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_choice(config: PreTrainedConfig, name: str, allowed: Iterable[str]) -> None:
    """The named field must be one of ``allowed``."""
    allowed = tuple(allowed)
    if getattr(config, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {getattr(config, name)!r}")


def check_range(
    config: PreTrainedConfig, name: str, low: float, high: float, *, high_inclusive: bool = True
) -> None:
    """The named field must be a number in ``[low, high]`` (or ``[low, high)``)."""
    value = getattr(config, name)
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        low <= value <= high if high_inclusive else low <= value < high
    )
    if not inside:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


def as_pair(value: int | Iterable[int], name: str) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(256, 128)`` stays; anything else is a ``ValueError``."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        height, width = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return height, width


class ConfigView:
    """A model config with some fields replaced, for sub-modules built at another width.

    Reads of the replaced fields return the replacement; every other read goes to the live
    config, so later changes to it (``model.set_attn_implementation(...)``) still reach the
    sub-modules. Read-only. HAT builds each calibration transformer's layers from a view
    with that level's ``hidden_size``.

    Example::

        view = ConfigView(config, hidden_size=256, head_dim=64)
        view.hidden_size  # 256
        view.layer_norm_eps  # config.layer_norm_eps
    """

    def __init__(self, config: PreTrainedConfig, **overrides: object) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name: str) -> object:
        if name in ("_config", "_overrides"):  # not set yet (copy / unpickling)
            raise AttributeError(name)
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._config, name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ConfigView is read-only; set {name!r} on the model's config")

    def __repr__(self) -> str:
        return f"ConfigView({type(self._config).__name__}, {self._overrides})"


class ReIDConfig(PreTrainedConfig):
    """Fields every re-ID model has.

    Args:
        num_identities: classes of the identity classifier heads; 0 makes the model a pure
            feature extractor (no heads, no loss).
        initializer_range: standard deviation of the truncated-normal init of new layers.
    """

    num_identities: int = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs) -> None:
        if isinstance(self.num_identities, bool) or not isinstance(self.num_identities, int) \
                or self.num_identities < 0:
            raise ValueError(
                f"num_identities must be an integer >= 0 (0 = feature extractor), got "
                f"{self.num_identities!r}"
            )
        check_range(self, "initializer_range", 0.0, 1.0)
        super().__post_init__(**kwargs)


class ViTReIDConfig(ReIDConfig):
    """Fields of the shared ViT backbone (see ``backbones/vit.py``).

    Defaults are ViT-B/16 as trained in timm (layer-norm eps 1e-6; the Hugging Face
    ``google/vit-base-patch16-224`` config says 1e-12, but this config, not the checkpoint,
    decides). ``patch_stride < patch_size`` gives overlapping patches.

    Args:
        image_size: input ``(height, width)``, or one int for a square.
        patch_size: side of the square patches of the patch projection (16).
        patch_stride: their stride; below ``patch_size`` the patches overlap (16).
        num_channels: input channels (3).
        hidden_size: token width ``D`` (768).
        num_hidden_layers: transformer blocks (12).
        num_attention_heads: heads per block (12); must divide ``hidden_size``.
        intermediate_size: feed-forward width (3072).
        hidden_act: feed-forward activation, a transformers ``ACT2FN`` name (``"gelu"``).
        layer_norm_eps: of every LayerNorm (1e-6, timm's).
        qkv_bias: bias of the fused query/key/value projection (True).
        hidden_dropout_prob: dropout after the embeddings, the attention projection and the
            feed-forward block (0).
        attention_probs_dropout_prob: dropout on the attention weights (0).
        activation_dropout: dropout after the feed-forward activation (0; timm's ViT has none
            there).
        drop_path_rate: stochastic depth at the last block, rising linearly from 0 (0).
        attention_scale: factor of the attention logits, ``"head_dim"`` (``head_dim ** -0.5``,
            standard) or ``"width"`` (``hidden_size ** -0.5``).
    """

    image_size: int | list[int] | tuple[int, int] = (256, 128)
    patch_size: int = 16
    patch_stride: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    activation_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.0
    attention_scale: str = "head_dim"

    def __post_init__(self, **kwargs) -> None:
        self.image_size = as_pair(self.image_size, "image_size")
        check_positive(
            self, "patch_size", "patch_stride", "num_channels", "hidden_size",
            "num_hidden_layers", "num_attention_heads", "intermediate_size",
        )
        check_choice(self, "attention_scale", ATTENTION_SCALES)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.patch_stride > self.patch_size:
            raise ValueError(
                f"patch_stride ({self.patch_stride}) must be <= patch_size ({self.patch_size})"
            )
        if min(self.image_size) < self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is smaller than one patch ({self.patch_size})"
            )
        for name in (
            "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout",
            "drop_path_rate",
        ):
            check_range(self, name, 0.0, 1.0, high_inclusive=False)
        check_range(self, "layer_norm_eps", 0.0, 1.0)
        super().__post_init__(**kwargs)


#: Fields `ResNetReIDConfig.check_trunk_fields` reads.
_TRUNK_FIELDS = (
    "num_channels", "last_stride", "frozen_batch_norm", "depths", "hidden_sizes", "layer_type",
    "stem_channels", "stem_activation",
)


class ResNetReIDConfig(ReIDConfig):
    """Fields of the shared ResNet trunk (see ``backbones/resnet.py``).

    The defaults are torchvision's ResNet-50 "v1.5" (the stride of a downsampling block sits
    on its 3x3 convolution) with the re-ID last stride 1. The architecture fields are spelled
    as in `transformers.ResNetConfig`, so the values of a ``microsoft/resnet-*`` config carry
    over unchanged, except its stem width ``embedding_size``, here ``stem_channels`` (in the
    re-ID models "embedding" is the output feature, and PAN / PRCT already use
    ``embedding_size`` for it). All four with ``stem_channels=64``:

    - ResNet-18: ``layer_type="basic"``, ``depths=(2, 2, 2, 2)``,
      ``hidden_sizes=(64, 128, 256, 512)``;
    - ResNet-34: ``layer_type="basic"``, ``depths=(3, 4, 6, 3)``, the same ``hidden_sizes``;
    - ResNet-50: ``layer_type="bottleneck"``, ``depths=(3, 4, 6, 3)``,
      ``hidden_sizes=(256, 512, 1024, 2048)``;
    - ResNet-101: ``layer_type="bottleneck"``, ``depths=(3, 4, 23, 3)``, the same
      ``hidden_sizes``.

    Args:
        image_size: input ``(height, width)``, or one int for a square. The trunk is fully
            convolutional and runs at any size; this is the size the model is trained and
            exported at. [our choice: the usual 256x128 person crop; a model config sets its
            paper's size]
        num_channels: input channels, 3 for RGB. [released code]
        last_stride: 1 or 2, the stride of the first block of the last stage. 1 keeps stage 4
            at H/16 (16x8 for a 256x128 input), the PCB / BoT re-ID trick; 2 is the ImageNet
            network (H/32). [paper: PCB / BoT]
        frozen_batch_norm: if true, every batch norm of the trunk always normalises with its
            running statistics and never learns, even in training mode (for small batches).
            [our choice]
        depths: number of residual blocks in each of the four stages. [released code:
            torchvision]
        hidden_sizes: output channels of each of the four stages; a bottleneck block's inner
            width is a quarter of it, so with ``layer_type="bottleneck"`` each must be
            divisible by 4. [released code: torchvision]
        layer_type: ``"bottleneck"`` (1x1 -> 3x3 -> 1x1 convolutions, ResNet-50 and deeper)
            or ``"basic"`` (two 3x3 convolutions, ResNet-18 / 34). [released code:
            torchvision]
        stem_channels: output channels of the stem's 7x7 convolution (``embedding_size`` in
            `transformers.ResNetConfig`). [released code: torchvision]
        stem_activation: ReLU after the stem's batch norm, as torchvision's ResNet. The HAT
            released code omits it; ``False`` reproduces that. [released code: torchvision;
            HAT released code for ``False``]
    """

    image_size: int | list[int] | tuple[int, int] = (256, 128)
    num_channels: int = 3
    last_stride: int = 1
    frozen_batch_norm: bool = False
    depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048)
    layer_type: str = "bottleneck"
    stem_channels: int = 64
    stem_activation: bool = True

    def __post_init__(self, **kwargs) -> None:
        self.image_size = as_pair(self.image_size, "image_size")
        self.check_trunk_fields(self)
        self.depths = tuple(self.depths)
        self.hidden_sizes = tuple(self.hidden_sizes)
        super().__post_init__(**kwargs)

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of the four stages (``hidden_sizes`` as a tuple)."""
        return tuple(self.hidden_sizes)

    @staticmethod
    def check_trunk_fields(config: PreTrainedConfig) -> None:
        """Validate the trunk fields of ``config`` (any object with them, e.g. a model config
        or a `ConfigView`); ``ValueError`` naming the field, the value and what is accepted.
        ``image_size`` is not read: the trunk runs at any input size."""
        missing = [name for name in _TRUNK_FIELDS if not hasattr(config, name)]
        if missing:
            raise ValueError(
                f"{type(config).__name__} lacks the ResNet trunk fields {missing}; derive the "
                "config from ResNetReIDConfig"
            )
        check_positive(config, "num_channels", "stem_channels")
        last_stride = config.last_stride
        if type(last_stride) is not int or last_stride not in (1, 2):  # bool is an int subclass
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        for name in ("frozen_batch_norm", "stem_activation"):
            if not isinstance(getattr(config, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(config, name)!r}")
        check_choice(config, "layer_type", ("bottleneck", "basic"))
        for name in ("depths", "hidden_sizes"):
            value = getattr(config, name)
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 4
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
            ):
                raise ValueError(
                    f"{name} must be four positive integers (one per stage), got {value!r}"
                )
        if config.layer_type == "bottleneck" and any(size % 4 for size in config.hidden_sizes):
            raise ValueError(
                f"hidden_sizes must be divisible by 4 with layer_type 'bottleneck' (a "
                f"bottleneck's inner width is a quarter of its output), got "
                f"{config.hidden_sizes!r}"
            )
