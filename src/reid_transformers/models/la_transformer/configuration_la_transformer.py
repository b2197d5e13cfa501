"""LA-Transformer configuration."""

from __future__ import annotations

from ...configuration_utils import ViTReIDConfig, check_choice, check_positive, check_range

CLASSIFIER_ACTIVATIONS = ("none", "relu")
TEST_FEATURES = ("local", "gelt")


class LATransformerConfig(ViTReIDConfig):
    """Locally Aware Transformer (Sharma et al., 2021) on a ViT backbone.

    Args:
        gelt_lambda: weight of the global (class) token in the globally enhanced local tokens,
            ``L_i = (rowmean_i + gelt_lambda * cls) / (1 + gelt_lambda)``. The released code's
            ``(cls + 8 * rowmean) / 9`` is 0.125 (default); the paper's text says 0.8.
        classifier_hidden_size: width of each row classifier's bottleneck (256).
        classifier_activation: ``"none"`` (released code) or ``"relu"`` (paper) after the
            bottleneck's BatchNorm.
        classifier_dropout: dropout before each row classifier's last layer.
        test_feature: rows that form the retrieval embedding: ``"local"`` row means (code) or
            ``"gelt"`` rows (paper).

    The default input is 224x224 (14 patch rows, so 14 row classifiers); 256x128 gives 16.
    Other fields: see :class:`~reid_transformers.configuration_utils.ViTReIDConfig`.
    """

    model_type = "la_transformer"

    image_size: int | list[int] | tuple[int, int] = (224, 224)
    gelt_lambda: float | int = 0.125
    classifier_hidden_size: int = 256
    classifier_activation: str = "none"
    classifier_dropout: float | int = 0.5
    test_feature: str = "local"

    def __post_init__(self, **kwargs) -> None:
        check_positive(self, "classifier_hidden_size")
        check_choice(self, "classifier_activation", CLASSIFIER_ACTIVATIONS)
        check_choice(self, "test_feature", TEST_FEATURES)
        check_range(self, "classifier_dropout", 0.0, 1.0, high_inclusive=False)
        if isinstance(self.gelt_lambda, bool) or not isinstance(self.gelt_lambda, (int, float)) \
                or self.gelt_lambda < 0:
            raise ValueError(f"gelt_lambda must be a number >= 0, got {self.gelt_lambda!r}")
        super().__post_init__(**kwargs)

    @property
    def num_rows(self) -> int:
        """Patch rows at the configured ``image_size``: one classifier each."""
        return (self.image_size[0] - self.patch_size) // self.patch_stride + 1
