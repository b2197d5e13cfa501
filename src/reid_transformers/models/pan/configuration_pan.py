"""PAN configuration."""

from __future__ import annotations

from ...configuration_utils import ResNetReIDConfig, as_int_tuple

FUSIONS = ("concat", "add")
PART_MASKS = ("learned", "stripes")
CHANNEL_ATTENTIONS = ("shared", "per_scale", "none")
#: Trunk levels the part-aware attention reads: stages 1, 2 and 3.
NUM_PAM_LEVELS = 3


class PANConfig(ResNetReIDConfig):
    """Part-aware Attention Network on a ResNet trunk (ResNet-50 by default; the trunk fields
    ``depths``, ``hidden_sizes``, ``layer_type``, ``stem_channels`` and ``stem_activation``
    are those of `ResNetReIDConfig`).

    Sources: [paper] the ACCV 2020 paper; [our choice] where the paper is silent (no released
    code is followed). The paper's Table 2 parameter counts (751 identities) fix the size of the
    part-feature learning module (PLM): with the defaults it has 0.08 M parameters and the
    model 34.06 M (PAN_c, D = 256; the paper: 33.9 M).

    Args:
        image_size: input ``(height, width)``; 384x128 [paper].
        last_stride: stride of the trunk's last stage; 1 keeps stage 4 at 1/16 resolution
            [paper].
        frozen_batch_norm: keep the trunk's BatchNorms frozen (eval mode, fixed affine)
            [our choice; default off].
        part_scales: granularities of the PLM; ``(1, 2, 3)`` gives ``1 + 2 + 3 = 6`` parts
            [paper].
        part_masks: where the parts come from. ``"learned"``: each scale predicts its spatial
            masks from the stage-4 map [paper]. ``"stripes"``: fixed horizontal stripes, ``k``
            equal bands for scale ``k``, each part the mean over its band (the
            horizontal-pooling ablation [paper]); ``part_scales=(1,)`` makes it one global
            average-pooled part.
        spatial_hidden_size: width of each scale's spatial-attention branch
            ``Conv1x1(2048 -> hidden)-BN-ReLU-Conv1x1(hidden -> k)-BN-ReLU`` (8) [our choice,
            sized to the paper's parameter counts; only with learned masks].
        channel_attention: the squeeze-and-excitation gate on the stage-4 channels [paper]:
            ``"shared"`` by all scales (default [our choice], as the parameter counts leave
            room for one), ``"per_scale"`` (one gate per scale),
            or ``"none"`` (no gate, an ablation [our choice]).
        channel_reduction: reduction of the gate's bottleneck, ``2048 / channel_reduction``
            hidden units (256 -> 8) [our choice: the usual 16 alone would add 0.5 M
            parameters, more than the paper's counts leave for the whole PLM].
        part_aware_attention: add the part-aware attention (PAM) terms ``Z_l`` of trunk
            stages 1-3 to each part [paper]; ``False`` embeds the PLM's part vectors directly
            (the without-PAM ablation [paper]), and ``pam_dim`` and ``fusion`` are unused.
        pam_dim: ``D`` of the PAM projections ``phi`` and ``psi``: one int for all three
            levels (256; Table 2 also has 128) [paper], or three, one per stage, e.g.
            ``(256, 512, 1024)`` [our choice].
        fusion: ``"concat"`` (PAN_c: ``[P; Z1; Z2; Z3]``, 3840-d) or ``"add"`` (PAN_a: every
            ``Z`` projected to 2048 and summed with ``P``) [paper].
        embedding_size: per-part embedding width, ``Linear-BN-ReLU`` (256) [paper].
        label_smoothing: of the per-part identity cross-entropies; 0 is the paper's
            "classical cross-entropy" [paper].
        triplet_margin: batch-hard triplet margin on the concatenated part embeddings; ``None``
            for the soft margin (0.3) [our choice: the paper gives no margin].
        triplet_weight: ``lambda1`` (1) [paper].
        orthogonal_weight: ``lambda2`` of the mask orthogonality regulariser (1e-3) [paper];
            only learned masks have it.
    """

    model_type = "pan"

    image_size: int | list[int] | tuple[int, int] = (384, 128)
    part_scales: list[int] | tuple[int, ...] = (1, 2, 3)
    part_masks: str = "learned"
    spatial_hidden_size: int = 8
    channel_attention: str = "shared"
    channel_reduction: int = 256
    part_aware_attention: bool = True
    pam_dim: int | list[int] | tuple[int, ...] = 256
    fusion: str = "concat"
    embedding_size: int = 256
    label_smoothing: float | int = 0.0
    triplet_margin: float | int | None = 0.3
    triplet_weight: float | int = 1.0
    orthogonal_weight: float | int = 1e-3

    def __post_init__(self, **kwargs) -> None:
        self.part_scales = as_int_tuple(
            self.part_scales, "part_scales", expected="positive part counts like (1, 2, 3)"
        )
        self.check_positive("spatial_hidden_size", "channel_reduction", "embedding_size")
        self.pam_dim = self._checked_pam_dim(self.pam_dim)
        self.check_choice("part_masks", PART_MASKS)
        self.check_choice("channel_attention", CHANNEL_ATTENTIONS)
        self.check_choice("fusion", FUSIONS)
        self.check_bool("part_aware_attention")
        self.check_probability("label_smoothing")
        self.check_positive_number("triplet_margin", none_means="soft margin")
        self.check_non_negative("triplet_weight", "orthogonal_weight")
        super().__post_init__(**kwargs)
        if min(self.image_size) < 32:
            raise ValueError(f"image_size {self.image_size} is below the trunk's 32-pixel stride")

    @staticmethod
    def _checked_pam_dim(value: object) -> int | tuple[int, ...]:
        """An int stays an int (as written in config.json); a list or tuple (a JSON list when
        loaded) becomes a tuple of ``NUM_PAM_LEVELS`` ints."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        return as_int_tuple(
            value, "pam_dim", lengths=(NUM_PAM_LEVELS,),
            expected=f"a positive integer or {NUM_PAM_LEVELS} of them (one per trunk stage "
            "1-3, e.g. (256, 512, 1024))",
        )

    @property
    def num_parts(self) -> int:
        """Parts over all scales: the sum of ``part_scales``."""
        return sum(self.part_scales)

    @property
    def pam_dims(self) -> tuple[int, ...]:
        """``pam_dim`` per PAM level (stages 1, 2, 3)."""
        if isinstance(self.pam_dim, int):
            return (self.pam_dim,) * NUM_PAM_LEVELS
        return tuple(self.pam_dim)
