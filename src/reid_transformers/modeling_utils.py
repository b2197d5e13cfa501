"""Base class and heads shared by the re-ID models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .backbones import (
    LoadReport,
    ResNetBackbone,
    ViTBackbone,
    load_resnet_pretrained,
    load_vit_pretrained,
)
from .configuration_utils import ReIDConfig, ResNetReIDConfig, ViTReIDConfig
from .modeling_outputs import ReIDModelOutput

#: Names of bare token / position-table parameters: truncated-normal init, no weight decay
#: under the ``"weights"`` scope.
TOKEN_PARAMETER_NAMES = ("cls_token", "position_embeddings", "embedding_token", "part_tokens")

#: Which parameters weight decay applies to: ``"weights"``, only matrices and kernels (not
#: norms, biases, tokens or position tables); ``"all"``, every parameter, as the released
#: LA-Transformer and HAT code and the TransReID / fast-reid optimizer builders do.
WEIGHT_DECAY_SCOPES = ("weights", "all")

#: How many parameter names an error about non-finite weights lists before "and N more".
_LISTED_PARAMETERS = 5


class CorruptCheckpointError(OSError, ValueError):
    """A checkpoint's weights cannot be used: a weights file that is not a complete
    safetensors file (cut short by an interrupted save, copy or download, or overwritten), or
    weights that are not finite (NaN or infinity). The message names the file and, for
    non-finite weights, the parameters.

    An ``OSError``, as transformers' other errors about unreadable checkpoint files, and a
    ``ValueError``, the bad-input error that the ``reid-transformers`` command reports in one
    line.
    """


def check_safetensors_file(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is a complete safetensors file: its header reads, and the tensors
    it describes cover the file exactly. Only the header is read, not the tensor data.

    Raises:
        CorruptCheckpointError: it is not (the message names the file).
    """
    try:
        with safe_open(os.fspath(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise CorruptCheckpointError(
            f"weights file {path} is not a complete safetensors file ({error}); it was cut "
            f"short or overwritten (an interrupted save, copy or download?): save or download "
            f"the checkpoint again"
        ) from error


def check_saved_weights(folder: str | os.PathLike[str]) -> None:
    """Check the safetensors weights of a checkpoint folder written by ``save_pretrained``
    without loading them: ``model.safetensors``, or else every shard that
    ``model.safetensors.index.json`` lists (see :func:`check_safetensors_file`). A folder with
    neither file passes: saying what a checkpoint lacks is the caller's part.

    Raises:
        CorruptCheckpointError: a damaged weights file or an unreadable index (named).
        FileNotFoundError: shards the index lists are missing (all named).
    """
    folder = Path(folder)
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        check_safetensors_file(single)
        return
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptCheckpointError(
            f"weights index {index} is not a safetensors index (a JSON object with a "
            f"'weight_map' of parameter names to shard files): {error!r}; save the checkpoint "
            f"again"
        ) from error
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {folder} lacks the shard(s) {', '.join(missing)} that {index.name} "
            f"lists; copy or download the whole folder"
        )
    for shard in shards:
        check_safetensors_file(folder / shard)


def _safetensors_keys(files: list[str]) -> dict[str, str]:
    """Parameter name -> the safetensors file holding it (header reads only)."""
    owners = {}
    for file in files:
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as handle:
                owners.update(dict.fromkeys(handle.keys(), file))
    return owners


def check_finite_weights(model: nn.Module, checkpoint_files: list[str] | None = None) -> None:
    """Check that every floating-point parameter and persistent buffer of ``model`` is finite.

    Tensors still on the ``meta`` device (not loaded yet) are skipped. ``checkpoint_files``,
    the files the weights were read from, are named in the error: for safetensors files, the
    one holding each bad parameter.

    Raises:
        CorruptCheckpointError: some values are NaN or infinite; the message names every file
            and up to five parameters per file, with the count.
    """
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
        and tensor.device.type != "meta"
        and not bool(torch.isfinite(tensor).all())
    ]
    if not bad:
        return
    files = [os.fspath(file) for file in checkpoint_files or ()]
    owners = _safetensors_keys(files)
    fallback = (
        f"weights files {', '.join(files)}" if files else "the state dict given to from_pretrained"
    )
    by_source: dict[str, list[str]] = {}
    for name in bad:
        source = f"weights file {owners[name]}" if name in owners else fallback
        by_source.setdefault(source, []).append(name)
    parts = []
    for source, names in by_source.items():
        listed = ", ".join(names[:_LISTED_PARAMETERS])
        if len(names) > _LISTED_PARAMETERS:
            listed += f" and {len(names) - _LISTED_PARAMETERS} more"
        noun = "parameter" if len(names) == 1 else "parameters"
        parts.append(f"{source} holds values that are not finite (NaN or infinity) in "
                     f"{len(names)} {noun}: {listed}")
    raise CorruptCheckpointError(
        "; ".join(parts) + "; the checkpoint is damaged, or was saved after training "
        "diverged: use an earlier checkpoint or save it again"
    )


class BNNeck(nn.Module):
    """BNNeck head (Luo et al., "Bag of Tricks", 2019): ``BatchNorm1d(d)`` -> ``Linear(d, C)``.

    The triplet loss uses the feature before the BatchNorm, the identity cross-entropy the one
    after it. The BatchNorm bias is frozen at 0 (it would shift the normalised feature away
    from the origin the classifier's hyperplanes pass through). ``requires_grad`` is not
    saved with a checkpoint, so :meth:`ReIDPreTrainedModel.freeze_bnneck_biases` must be
    called again after loading; the trainer does it.

    Args:
        dim: feature size ``d``.
        num_identities: classifier outputs ``C``; 0 gives the BatchNorm alone (no logits).
    """

    def __init__(self, dim: int, num_identities: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_identities, bias=False) if num_identities else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, d)`` -> (BN feature ``(B, d)``, logits ``(B, C)`` or ``None``)."""
        normed = self.bn(features)
        logits = self.classifier(normed) if self.classifier is not None else None
        return normed, logits


class ReIDPreTrainedModel(PreTrainedModel):
    """Base of every re-ID model in the package.

    `forward` is the one entry point: it resolves the output flags, checks ``labels`` and
    calls the subclass's :meth:`compute_outputs`, which returns a ``ReIDModelOutput``.
    Subclasses also implement :meth:`unfreezable_blocks` and call ``self.post_init()`` at
    the end of ``__init__``.
    """

    config_class = ReIDConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    #: Attribute holding the shared pretrained trunk (``"vit"``, ``"resnet"``; empty for a
    #: model without one): its ``unfreezable_blocks()`` are the model's, and its parameters
    #: form the trunk's optimizer groups (e.g. a lower learning rate there); everything else
    #: counts as new layers.
    trunk_attribute: str = ""
    #: Parameter-name prefixes of transformer layers added on top of a CNN trunk (HAT trains
    #: them at half the learning rate); empty for models without such layers.
    transformer_parameter_prefixes: tuple[str, ...] = ()
    #: He (fan-out) init of new convolutions, as torchvision's ResNets: ReLU CNN heads need it
    #: to train from scratch. Otherwise convolutions get the truncated normal of linears.
    he_init_convolutions: bool = False
    #: Whether training needs P x K batches (several images per identity, for losses such as
    #: the batch-hard triplet); models trained with classification losses only set False and
    #: may then also train on plain shuffled batches.
    requires_identity_balanced_batches: bool = True

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        # The one step of `from_pretrained` that sees the resolved weights files (local or
        # from the Hub cache). safetensors names no file in its errors, and damaged tensor
        # bytes load silently and give NaN embeddings: check both here, for every re-ID
        # model, and name the file.
        for file in checkpoint_files or ():
            if os.fspath(file).endswith(".safetensors"):
                check_safetensors_file(file)
        loaded = PreTrainedModel._load_pretrained_model(
            model, state_dict, checkpoint_files, load_config, *args, **kwargs
        )
        # Weights the checkpoint lacks are still on the meta device here and are skipped;
        # their initialisation comes later and is finite by construction.
        check_finite_weights(model, checkpoint_files)
        return loaded

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ReIDModelOutput | tuple:
        """Embed a batch of crops; with ``labels``, also compute the training loss.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised crops (see the model's image processor).
            labels: ``(B,)`` integer identities, or None; needs ``num_identities > 0``.
            output_hidden_states: also return the trunk's hidden states (None: the config's
                default).
            output_attentions: also return attention weights, for models with attention
                (eager implementation only; None: the config's default).
            return_dict: False returns ``output.to_tuple()`` (None: the config's default).
            **kwargs: the model's own switches (AAformer's ``output_part_assignments``,
                PAN's ``output_part_masks``); others are ignored.

        Returns:
            The model's `ReIDModelOutput` (its class docstring lists the fields), or its tuple.
        """
        config = self.config
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        if output_attentions is None:
            output_attentions = config.output_attentions
        if labels is not None:
            self._check_labels(labels, pixel_values.shape[0])
        output = self.compute_outputs(
            pixel_values,
            labels,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        return_dict = config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def compute_outputs(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
        output_hidden_states: bool, output_attentions: bool, **kwargs,
    ) -> ReIDModelOutput:
        """The model's computation behind `forward` (same arguments, the flags resolved and
        ``labels`` already checked)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_outputs()")

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        """``labels`` must be ``(batch_size,)`` integer identities, and the model must have
        identity heads (``num_identities > 0``) to use them."""
        if not self.config.num_identities:
            raise ValueError(
                "labels were given but the model has no identity heads (num_identities=0); "
                "load it with num_identities=<number of training identities>"
            )
        if labels.shape != (batch_size,) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"labels must be a ({batch_size},) integer tensor (one identity per image), got "
                f"shape {tuple(labels.shape)} and dtype {labels.dtype}"
            )

    def unfreezable_blocks(self) -> list[nn.Module]:
        """The trunk's blocks, ordered from the top (output side) down.

        Blockwise fine-tuning freezes these and releases them one at a time from the front of
        the list. Embeddings, final norms and heads are never in it: they always train. The
        trunk named by ``trunk_attribute`` gives them.
        """
        if not self.trunk_attribute:
            raise NotImplementedError(f"{type(self).__name__} must implement unfreezable_blocks()")
        return getattr(self, self.trunk_attribute).unfreezable_blocks()

    def load_pretrained_backbone(self, source: str, *, strict: bool = True):
        """Load ImageNet weights (Hub id, local folder or timm/torchvision file) into the
        trunk; returns the loader's report of loaded, missing and resized keys."""
        raise NotImplementedError(f"{type(self).__name__} has no pretrained-backbone loader")

    def optimizer_parameter_groups(
        self,
        learning_rate: float,
        weight_decay: float,
        trunk_lr_factor: float = 1.0,
        transformer_lr_factor: float = 1.0,
        weight_decay_scope: str = "weights",
    ) -> list[dict]:
        """Parameter groups for ``torch.optim``.

        The trunk (``trunk_attribute``) trains at ``learning_rate * trunk_lr_factor``,
        added transformer layers (``transformer_parameter_prefixes``) at
        ``learning_rate * transformer_lr_factor``, every other new layer at ``learning_rate``.
        Weight decay applies to the parameters of ``weight_decay_scope`` (see
        :data:`WEIGHT_DECAY_SCOPES`; default only matrices and kernels, not norms, biases,
        tokens or position tables). Group names are ``{trunk,transformer,new}_{decay,no_decay}``.
        """
        if weight_decay_scope not in WEIGHT_DECAY_SCOPES:
            raise ValueError(
                f"weight_decay_scope must be one of {WEIGHT_DECAY_SCOPES}, got "
                f"{weight_decay_scope!r}"
            )
        factors = {"new": 1.0, "transformer": transformer_lr_factor, "trunk": trunk_lr_factor}
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if self.trunk_attribute and name.startswith(f"{self.trunk_attribute}."):
                part = "trunk"
            elif name.startswith(self.transformer_parameter_prefixes):
                part = "transformer"
            else:
                part = "new"
            decays = weight_decay_scope == "all" or (
                param.ndim >= 2 and name.rpartition(".")[2] not in TOKEN_PARAMETER_NAMES
            )
            groups.setdefault((part, decays), []).append(param)
        return [
            {
                "params": params,
                "lr": learning_rate * factors[part],
                "weight_decay": weight_decay if decays else 0.0,
                "group_name": f"{part}_{'decay' if decays else 'no_decay'}",
            }
            for (part, decays), params in sorted(groups.items())
        ]

    def freeze_bnneck_biases(self) -> None:
        """Re-freeze every BNNeck's BatchNorm bias (needed after ``from_pretrained``)."""
        for module in self.modules():
            if isinstance(module, BNNeck):
                module.bn.bias.requires_grad_(False)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers skips modules without parameters of their own when the model class
        # lives outside the library (a guard for remote code that writes weights in place).
        # Containers such as BNNeck must get their turn after their children, and
        # `_init_weights` only uses `transformers.initialization`, which leaves loaded
        # weights alone, so every module is visited.
        if getattr(module, "_is_hf_initialized", False):
            return
        self._init_weights(module)
        module._is_hf_initialized = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, BNNeck):
            init.ones_(module.bn.weight)
            init.zeros_(module.bn.bias)
            if module.classifier is not None:
                init.normal_(module.classifier.weight, std=0.001)
        elif isinstance(module, nn.Conv2d) and self.he_init_convolutions:
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        else:
            # Bare token and position parameters (ViT's class token and position table,
            # AAformer's part tokens, HAT's per-level ones, PRCT's embedding token).
            for name, param in module.named_parameters(recurse=False):
                if name in TOKEN_PARAMETER_NAMES:
                    init.trunc_normal_(param, std=std)


class ViTReIDPreTrainedModel(ReIDPreTrainedModel):
    """Base of the models on the shared ViT backbone (LA-Transformer, AAformer): builds the
    trunk as ``self.vit = ViTBackbone(config)``, whose blocks are the unfreezable blocks and
    into which ImageNet ViT weights load."""

    config_class = ViTReIDConfig
    trunk_attribute = "vit"
    _no_split_modules = ["ViTLayer"]

    def __init__(self, config: ViTReIDConfig) -> None:
        super().__init__(config)
        self.vit = ViTBackbone(config)

    def load_pretrained_backbone(self, source: str, *, strict: bool = True) -> LoadReport:
        """Load ImageNet ViT weights (Hub id such as ``google/vit-base-patch16-224``, local
        folder or timm state dict) into the trunk; see `load_vit_pretrained`."""
        return load_vit_pretrained(self.vit, source, strict=strict)


class ResNetReIDPreTrainedModel(ReIDPreTrainedModel):
    """Base of the models on the shared ResNet trunk of any depth (PAN, HAT, PRCT; ResNet-50
    by default): builds the trunk as ``self.resnet = ResNetBackbone(config)``, whose stages
    are the unfreezable blocks and into which ImageNet weights load; new convolutions get
    He init."""

    config_class = ResNetReIDConfig
    trunk_attribute = "resnet"
    he_init_convolutions = True

    def __init__(self, config: ResNetReIDConfig) -> None:
        super().__init__(config)
        self.resnet = ResNetBackbone(config)

    def load_pretrained_backbone(self, source: str, *, strict: bool = True) -> LoadReport:
        """Load ImageNet ResNet weights of the config's depth (Hub id such as
        ``microsoft/resnet-50`` or ``microsoft/resnet-18``, local folder or torchvision state
        dict) into the trunk; see `load_resnet_pretrained`."""
        return load_resnet_pretrained(self.resnet, source, strict=strict)
