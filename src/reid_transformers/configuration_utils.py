"""Configuration pieces shared by the re-ID architectures.

transformers 5 turns every ``PreTrainedConfig`` subclass into a keyword-only dataclass
whose annotated class attributes are the fields, so shared fields live in base classes and
each architecture's config adds its own. Validation runs in ``__post_init__`` and raises
``ValueError`` naming the field and what it accepts.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedConfig


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
    drop_path_rate: float | int = 0.0

    def __post_init__(self, **kwargs) -> None:
        self.image_size = as_pair(self.image_size, "image_size")
        check_positive(
            self, "patch_size", "patch_stride", "num_channels", "hidden_size",
            "num_hidden_layers", "num_attention_heads", "intermediate_size",
        )
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
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            check_range(self, name, 0.0, 1.0, high_inclusive=False)
        check_range(self, "layer_norm_eps", 0.0, 1.0)
        super().__post_init__(**kwargs)
