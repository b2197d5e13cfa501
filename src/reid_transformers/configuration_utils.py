"""Configuration pieces shared by the re-ID architectures.

transformers 5 turns every ``PreTrainedConfig`` subclass into a keyword-only dataclass
whose annotated class attributes are the fields, so shared fields live in base classes and
each architecture's config adds its own. Validation runs once, in ``__post_init__``, and
raises ``ValueError`` naming the field, the value and what it accepts; the modules built
from a config trust it. The ``check_*`` methods of `ReIDConfig` are the one set of field
validators every config uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from . import utils
from .utils import is_integer

#: Values of ``config.attention_scale``, the factor of the attention logits: ``"head_dim"``,
#: ``head_dim ** -0.5`` (Vaswani et al.; every ViT); ``"width"``, ``hidden_size ** -0.5``, the
#: token width (HAT's released code, whose attention is scaled by its width, not its heads).
ATTENTION_SCALES = ("head_dim", "width")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(
    config: PreTrainedConfig, names: Iterable[str], valid: Callable[[object], bool], expected: str
) -> None:
    """Raise ``ValueError("{name} must be {expected}, got {value!r}")`` for the first named
    field whose value is not ``valid``."""
    for name in names:
        value = getattr(config, name)
        if not valid(value):
            raise ValueError(f"{name} must be {expected}, got {value!r}")


def as_pair(value: int | Iterable[int], name: str) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(256, 128)`` stays; anything else is a ``ValueError``."""
    pair = (value, value) if is_integer(value) else value
    try:
        height, width = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return height, width


def as_int_tuple(
    value: object, name: str, *, expected: str, lengths: Iterable[int] | None = None,
    minimum: int = 1,
) -> tuple[int, ...]:
    """A list or tuple of ints ``>= minimum`` (of one of ``lengths`` if given, else not
    empty) as a tuple; else a ``ValueError``: ``{name} must be {expected}, got {value!r}``."""
    items = tuple(value) if isinstance(value, (list, tuple)) else ()
    length_ok = len(items) in tuple(lengths) if lengths is not None else bool(items)
    if not length_ok or any(not is_integer(v) or v < minimum for v in items):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return items


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
        num_identities (`int`, *optional*, defaults to 0):
            Classes of the identity classifier heads, the training identities; 0 makes the
            model a pure feature extractor (no heads, no loss).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated-normal init of new layers, token tables
            included. [released code: timm's ViT value]
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to `(256, 128)`):
            Input ``(height, width)``, or one int for a square; stored as a pair. The size
            the model is trained and exported at (each model config sets its paper's).
            [our choice: the usual person crop]
        num_channels (`int`, *optional*, defaults to 3):
            Input channels, 3 for RGB.
    """

    num_identities: int = 0
    initializer_range: float = 0.02
    image_size: int | list[int] | tuple[int, int] = (256, 128)
    num_channels: int = 3

    def __post_init__(self, **kwargs) -> None:
        _require(
            self, ("num_identities",), lambda v: is_integer(v) and v >= 0,
            "an integer >= 0 (0 = feature extractor)",
        )
        self.check_range("initializer_range", 0.0, 1.0)
        self.image_size = as_pair(self.image_size, "image_size")
        self.check_positive("num_channels")
        super().__post_init__(**kwargs)

    # The field validators of every config: each raises ``ValueError("{name} must be
    # {what}, got {value!r}")`` for the first named field that is not valid.

    def check_positive(self, *names: str) -> None:
        """Every named field must be a positive int."""
        for name in names:
            utils.check_int(name, getattr(self, name), minimum=1)

    def check_non_negative(self, *names: str) -> None:
        """Every named field must be a number >= 0 (loss weights, mixing factors)."""
        _require(self, names, lambda v: _is_number(v) and v >= 0, "a number >= 0")

    def check_positive_number(self, name: str, *, none_means: str | None = None) -> None:
        """The named field must be a number > 0; ``None`` too when ``none_means`` says what it
        stands for (e.g. ``"soft margin"``)."""
        value = getattr(self, name)
        if value is None and none_means is not None:
            return
        try:
            utils.check_positive_number(name, value)
        except ValueError as error:
            if none_means is None:
                raise
            raise ValueError(f"{error}; or None ({none_means})") from None

    def check_range(
        self, name: str, low: float, high: float, *, high_inclusive: bool = True
    ) -> None:
        """The named field must be a number in ``[low, high]`` (or ``[low, high)``)."""
        utils.check_in_range(name, getattr(self, name), low, high, high_inclusive=high_inclusive)

    def check_probability(self, *names: str) -> None:
        """Every named field must be a rate in ``[0, 1)`` (dropout, label smoothing)."""
        for name in names:
            self.check_range(name, 0.0, 1.0, high_inclusive=False)

    def check_bool(self, *names: str) -> None:
        """Every named field must be ``True`` or ``False`` (not merely truthy)."""
        _require(self, names, lambda v: isinstance(v, bool), "a bool")

    def check_choice(self, name: str, allowed: Iterable[str]) -> None:
        """The named field must be one of ``allowed``."""
        utils.check_choice(name, getattr(self, name), allowed)

    def check_activation(self, name: str) -> None:
        """The named field must name a transformers activation (a key of ``ACT2FN``)."""
        _require(
            self, (name,), lambda v: isinstance(v, str) and v in ACT2FN,
            f"a transformers activation, one of {sorted(ACT2FN)}",
        )


class TransformerReIDConfig(ReIDConfig):
    """Fields of the shared pre-norm transformer layers (``backbones/vit.py``'s `ViTLayer`
    and `ViTEncoder`): the ViT models' backbone and PRCT's Part Aggregation Transformer.

    The defaults are ViT-B/16 [paper: Dosovitskiy et al. 2021] as trained in timm [released
    code: timm]; a model config overrides what its paper changes.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Token width ``D``.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Transformer layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Heads per layer; must divide ``hidden_size``.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Hidden width of the feed-forward block.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation, a transformers ``ACT2FN`` name (``"gelu"`` is the exact
            erf GELU, as timm's ``nn.GELU``).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every LayerNorm. [released code: timm; the Hugging Face
            ``google/vit-base-patch16-224`` config says 1e-12, but this config, not the
            checkpoint, decides]
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Bias of the fused query/key/value projection.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the embeddings, the attention output projection and the
            feed-forward block, in ``[0, 1)``.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention weights, in ``[0, 1)``.
        activation_dropout (`float`, *optional*, defaults to 0.0):
            Dropout after the feed-forward activation, in ``[0, 1)`` (timm's ViT has none
            there).
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth at the last layer, rising linearly from 0 at the first, in
            ``[0, 1)``.
        attention_scale (`str`, *optional*, defaults to `"head_dim"`):
            Factor of the attention logits, one of `ATTENTION_SCALES`: ``"head_dim"``
            (``head_dim ** -0.5``, standard) or ``"width"`` (``hidden_size ** -0.5``).
    """

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
        self.check_positive(
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"
        )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        self.check_activation("hidden_act")
        self.check_range("layer_norm_eps", 0.0, 1.0)
        self.check_bool("qkv_bias")
        self.check_probability(
            "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout",
            "drop_path_rate",
        )
        self.check_choice("attention_scale", ATTENTION_SCALES)
        super().__post_init__(**kwargs)


class ViTReIDConfig(TransformerReIDConfig):
    """Fields of the shared ViT backbone (``backbones/vit.py``): the patch embedding on top
    of the transformer fields of `TransformerReIDConfig` (ViT-B/16 by default). The patch
    grid of an ``H x W`` image has ``(H - patch_size) // patch_stride + 1`` rows (likewise
    columns).

    Args:
        patch_size (`int`, *optional*, defaults to 16):
            Side of the square patches of the patch projection. [paper: ViT-B/16]
        patch_stride (`int`, *optional*, defaults to 16):
            Their stride, at most ``patch_size``; below it the patches overlap (TransReID's
            overlapping patches). [paper: ViT-B/16]

    Inherited fields, documented where they are declared: ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``hidden_act``,
    ``layer_norm_eps``, ``qkv_bias``, ``hidden_dropout_prob``,
    ``attention_probs_dropout_prob``, ``activation_dropout``, ``drop_path_rate`` and
    ``attention_scale`` (`TransformerReIDConfig`); ``num_identities``, ``initializer_range``,
    ``image_size`` (must hold at least one patch) and ``num_channels`` (`ReIDConfig`).
    """

    patch_size: int = 16
    patch_stride: int = 16

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.check_positive("patch_size", "patch_stride")
        if self.patch_stride > self.patch_size:
            raise ValueError(
                f"patch_stride ({self.patch_stride}) must be <= patch_size ({self.patch_size})"
            )
        if min(self.image_size) < self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is smaller than one patch ({self.patch_size})"
            )

    @property
    def num_patch_rows(self) -> int:
        """Patch rows at the configured ``image_size``."""
        return (self.image_size[0] - self.patch_size) // self.patch_stride + 1


class ResNetReIDConfig(ReIDConfig):
    """Fields of the shared ResNet trunk (``backbones/resnet.py``).

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

    The trunk is fully convolutional and runs at any input size; ``image_size`` (see
    `ReIDConfig`) is the size the model is trained and exported at.

    Args:
        last_stride (`int`, *optional*, defaults to 1):
            1 or 2, the stride of the first block of the last stage. 1 keeps stage 4 at H/16
            (16x8 for a 256x128 input), the PCB / BoT re-ID trick; 2 is the ImageNet
            network (H/32). [paper: PCB / BoT]
        frozen_batch_norm (`bool`, *optional*, defaults to `False`):
            If true, every batch norm of the trunk always normalises with its running
            statistics and never learns, even in training mode (for small batches).
            [our choice]
        depths (`tuple[int, int, int, int]`, *optional*, defaults to `(3, 4, 6, 3)`):
            Number of residual blocks in each of the four stages. [released code:
            torchvision]
        hidden_sizes (`tuple[int, int, int, int]`, *optional*, defaults to
            `(256, 512, 1024, 2048)`):
            Output channels of each of the four stages; a bottleneck block's inner width is
            a quarter of it, so with ``layer_type="bottleneck"`` each must be divisible by 4.
            [released code: torchvision]
        layer_type (`str`, *optional*, defaults to `"bottleneck"`):
            ``"bottleneck"`` (1x1 -> 3x3 -> 1x1 convolutions, ResNet-50 and deeper) or
            ``"basic"`` (two 3x3 convolutions, ResNet-18 / 34). [released code: torchvision]
        stem_channels (`int`, *optional*, defaults to 64):
            Output channels of the stem's 7x7 convolution (``embedding_size`` in
            `transformers.ResNetConfig`). [released code: torchvision]
        stem_activation (`bool`, *optional*, defaults to `True`):
            ReLU after the stem's batch norm, as torchvision's ResNet. The HAT released code
            omits it; ``False`` reproduces that. [released code: torchvision; HAT released
            code for ``False``]

    Inherited fields, documented on `ReIDConfig`: ``num_identities``, ``initializer_range``,
    ``image_size`` and ``num_channels``.
    """

    last_stride: int = 1
    frozen_batch_norm: bool = False
    depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048)
    layer_type: str = "bottleneck"
    stem_channels: int = 64
    stem_activation: bool = True

    def __post_init__(self, **kwargs) -> None:
        self.check_positive("stem_channels")
        _require(self, ("last_stride",), lambda v: is_integer(v) and v in (1, 2), "1 or 2")
        self.check_bool("frozen_batch_norm", "stem_activation")
        self.check_choice("layer_type", ("bottleneck", "basic"))
        for name in ("depths", "hidden_sizes"):
            value = as_int_tuple(
                getattr(self, name), name, lengths=(4,),
                expected="four positive integers (one per stage)",
            )
            setattr(self, name, value)
        if self.layer_type == "bottleneck" and any(size % 4 for size in self.hidden_sizes):
            raise ValueError(
                f"hidden_sizes must be divisible by 4 with layer_type 'bottleneck' (a "
                f"bottleneck's inner width is a quarter of its output), got "
                f"{self.hidden_sizes!r}"
            )
        super().__post_init__(**kwargs)

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of the four stages (``hidden_sizes`` as a tuple)."""
        return tuple(self.hidden_sizes)
