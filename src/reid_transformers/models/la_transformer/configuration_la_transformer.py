"""LA-Transformer configuration."""

from __future__ import annotations

from ...configuration_utils import ViTReIDConfig

CLASSIFIER_ACTIVATIONS = ("none", "relu")
TEST_FEATURES = ("local", "gelt")
CLASSIFICATIONS = ("rows", "cls")
CLASSIFIER_INPUTS = ("gelt", "global")


class LATransformerConfig(ViTReIDConfig):
    """Locally Aware Transformer (Sharma et al., 2021) on a ViT backbone.

    Args:
        image_size: input ``(height, width)``; 224x224 [paper, released code] gives 14 patch
            rows and so 14 row classifiers; 256x128 gives 16.
        gelt_lambda: weight of the global (class) token in the globally enhanced local tokens,
            ``L_i = (rowmean_i + gelt_lambda * cls) / (1 + gelt_lambda)``. The released code's
            ``(cls + 8 * rowmean) / 9`` is 0.125 (default) [released code]; the paper's text
            says 0.8 [paper].
        classifier_hidden_size: width of each classifier's bottleneck, 256 [released code].
        classifier_activation: ``"none"`` [released code] or ``"relu"`` [paper] after the
            bottleneck's BatchNorm.
        classifier_dropout: dropout before each classifier's last layer, 0.5 [released code].
        test_feature: rows that form the retrieval embedding: ``"local"`` row means
            [released code] or ``"gelt"`` rows [paper].
        classification: ``"rows"`` (default): one classifier per patch row, LA-Transformer
            itself [paper, released code]. ``"cls"``: the paper's single-classifier ViT
            baseline (Table 2): one classifier on the [CLS] token, and the retrieval
            embedding is the L2-normalised [CLS] feature [paper]; the classifier has the row
            classifiers' layout [our choice: the released code has no baseline].
            ``gelt_lambda`` and ``test_feature`` do not apply then.
        classifier_input: what the row classifiers see: ``"gelt"`` (default), the globally
            enhanced local tokens [paper, released code], or ``"global"``: every row
            classifier sees the [CLS] token, the paper's "LA Global" ablation (Table 2)
            [paper]. Needs ``classification="rows"``.
        drop_path_rate: stochastic depth, 0 [released code].

    Other fields: see :class:`~reid_transformers.configuration_utils.ViTReIDConfig` (ViT-B/16
    [paper, released code]).
    """

    model_type = "la_transformer"

    image_size: int | list[int] | tuple[int, int] = (224, 224)
    gelt_lambda: float | int = 0.125
    classifier_hidden_size: int = 256
    classifier_activation: str = "none"
    classifier_dropout: float | int = 0.5
    test_feature: str = "local"
    classification: str = "rows"
    classifier_input: str = "gelt"

    def __post_init__(self, **kwargs) -> None:
        self.check_positive("classifier_hidden_size")
        self.check_choice("classifier_activation", CLASSIFIER_ACTIVATIONS)
        self.check_choice("test_feature", TEST_FEATURES)
        self.check_choice("classification", CLASSIFICATIONS)
        self.check_choice("classifier_input", CLASSIFIER_INPUTS)
        self.check_probability("classifier_dropout")
        self.check_non_negative("gelt_lambda")
        if self.classification == "cls":
            # Both ask for row features that the single-classifier baseline never forms.
            for name, row_only in (("classifier_input", "global"), ("test_feature", "gelt")):
                if getattr(self, name) == row_only:
                    raise ValueError(
                        f"{name}={row_only!r} needs classification='rows' (row classifiers), "
                        f"got classification='cls'"
                    )
        super().__post_init__(**kwargs)
