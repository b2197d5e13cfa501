"""Checkpoint loading shared by the backbone loaders (`load_vit_pretrained`,
`load_resnet_pretrained`).

A loader is four steps, each done once here; a backbone module only supplies its rename
rules, its layout markers and its architecture checks:

1. `read_checkpoint`: a local file or folder, a Hub repository id (`resolve_checkpoint`) or
   an in-memory state dict -> ``(state dict, HF config or None, description)``. Files are
   ``.safetensors`` or ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``;
   folders are Hugging Face checkpoints (single, sharded or legacy ``pytorch_model.bin``).
2. `detect_layout`: which layout the keys are in, and the prefix in front of them.
3. `apply_rename_rules`: checkpoint keys -> the backbone's keys, by a table of `RenameRule`
   (fusing split tensors such as separate q/k/v into one).
4. `load_converted`: check shapes (and, with ``strict``, missing / unexpected keys), load,
   and return a `LoadReport`. Nothing is loaded when a step raises.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias, TypeVar

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, StrictDataclassError
from huggingface_hub.utils import httpx as hub_httpx  # the HTTP client huggingface_hub uses
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedConfig

__all__ = [
    "CheckpointUnavailableError",
    "ConvertedState",
    "LoadReport",
    "RenameRule",
    "apply_rename_rules",
    "detect_layout",
    "load_converted",
    "read_checkpoint",
    "read_hf_config",
    "read_hf_weights",
    "read_state_dict_file",
    "rename_rule",
    "resolve_checkpoint",
    "tensor_dict",
]

StateDict: TypeAlias = Mapping[str, torch.Tensor]
ConfigT = TypeVar("ConfigT")

#: What a Hub download fetches: configs and safetensors only, never pickles.
_HUB_WEIGHT_FILES = ["config.json", "model.safetensors.index.json", "*.safetensors"]
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
#: How many offending keys an error message lists: enough to see the pattern, short to read.
_LIST_LIMIT = 10


class CheckpointUnavailableError(OSError):
    """A checkpoint named by a Hub id could not be fetched (offline, no network, unknown id)."""


@dataclass(frozen=True)
class LoadReport:
    """What a backbone loader (`load_vit_pretrained`, `load_resnet_pretrained`) did.

    Attributes:
        source_format: the checkpoint layout. From `load_vit_pretrained` a `SourceFormat`:
            ``"huggingface"``, ``"timm"`` or ``"reid_transformers"`` (our own
            ``ViTBackbone.state_dict()`` layout, possibly under a prefix); from
            `load_resnet_pretrained` ``"huggingface"`` or ``"torchvision"``.
        loaded: backbone parameter names that received checkpoint values.
        missing: backbone parameter names the checkpoint had no value for (left unchanged).
        unexpected: checkpoint keys (checkpoint naming) that match nothing in the backbone.
        ignored: checkpoint keys of heads the backbone has no use for (HF ``pooler.*`` /
            ``classifier.*``, timm ``head.*`` / ``head_dist.*`` / ``pre_logits.*``,
            torchvision ``fc.*``): unexpected, but expected to be so.
        resized: backbone parameter name -> (checkpoint shape, loaded shape), for the
            position embeddings when the checkpoint's patch grid differs from ours.
    """

    source_format: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


# --------------------------------------------------------------------------- reading


def resolve_checkpoint(source: str | os.PathLike[str], example_repo: str) -> Path:
    """A local checkpoint file or folder, or the folder a Hub repository id downloads to
    (config and safetensors files only, never pickles).

    ``example_repo`` is the Hub id the not-found message offers as an example.

    Raises:
        FileNotFoundError: ``source`` is neither an existing path nor shaped like a Hub id.
        CheckpointUnavailableError: the Hub download failed (offline without a cached copy,
            no network, unknown repository).
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = os.fspath(source)
    # A name ending in a weight-file suffix is a mistyped path, not a repository.
    if not _REPO_ID.fullmatch(text) or text.endswith((".safetensors", *_TORCH_SUFFIXES)):
        raise FileNotFoundError(
            f"{text!r} is not an existing file or folder, nor a Hugging Face Hub repository id "
            f"like {example_repo!r}"
        )
    try:
        folder = snapshot_download(text, allow_patterns=_HUB_WEIGHT_FILES)
    except (OSError, HFValidationError, hub_httpx.HTTPError) as error:
        reason = (
            "HF_HUB_OFFLINE is set"
            if hub_constants.HF_HUB_OFFLINE
            else " ".join(f"{type(error).__name__}: {error}".split())
        )
        raise CheckpointUnavailableError(
            f"{text!r} is not a local file or folder, and fetching it from the Hugging Face Hub "
            f"failed ({reason}). Download it where the Hub is reachable (`hf download {text} "
            f"--local-dir DIR`) and pass DIR instead (training: --pretrained_backbone DIR), or "
            "start from random weights (training: --pretrained_backbone '')"
        ) from error
    return Path(folder)


def read_checkpoint(
    source: str | os.PathLike[str] | StateDict,
    *,
    example_repo: str,
    read_config: Callable[[Path], ConfigT],
) -> tuple[dict[str, torch.Tensor], ConfigT | None, str]:
    """(state dict, config of a checkpoint folder or None, description for messages).

    ``source`` is an in-memory state dict, a state dict file, a Hugging Face checkpoint
    folder or a Hub repository id (see `resolve_checkpoint`). For a folder,
    ``read_config(folder)`` runs before any weights are read, so a loader can refuse a
    checkpoint of another architecture without reading its tensors.

    Raises:
        ValueError: ``source`` has another type, or is not a readable state dict.
        FileNotFoundError, CheckpointUnavailableError: see `resolve_checkpoint` and
            `read_hf_weights`.
    """
    if isinstance(source, Mapping):
        return tensor_dict(source, "the given state dict"), None, "the given state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "source must be a path, a Hub repository id or a state dict, got "
            f"{type(source).__name__}"
        )
    path = resolve_checkpoint(source, example_repo=example_repo)
    if path.is_dir():
        config = read_config(path)
        return read_hf_weights(path), config, str(path)
    return read_state_dict_file(path), None, str(path)


def read_hf_config(
    folder: Path, config_class: type[PreTrainedConfig], kind: str
) -> PreTrainedConfig:
    """``folder/config.json`` as ``config_class``; ``kind`` (``"ViT"``, ``"ResNet"``) names
    the architecture in messages.

    Raises:
        FileNotFoundError: there is no ``config.json``.
        ValueError: it is not valid JSON or not a valid ``config_class``.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; expected a Hugging Face {kind} checkpoint folder "
            "(config.json + model.safetensors)"
        )
    try:
        return config_class.from_json_file(config_file)
    except (json.JSONDecodeError, StrictDataclassError, TypeError, ValueError) as error:
        raise ValueError(f"{config_file} is not a valid {kind} config: {error}") from error


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face checkpoint folder: ``model.safetensors``, else the
    shards a ``model.safetensors.index.json`` lists, else ``pytorch_model.bin``.

    Raises:
        FileNotFoundError: none of the three is there, or a listed shard is missing.
        ValueError: the index is malformed, or a file is unreadable.
    """
    single, index, legacy = (
        folder / "model.safetensors",
        folder / "model.safetensors.index.json",
        folder / "pytorch_model.bin",
    )
    if single.is_file():
        return read_state_dict_file(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
            raise ValueError(f"{index} is not a safetensors shard index: {error}") from error
        state_dict: dict[str, torch.Tensor] = {}
        for shard in shards:
            state_dict.update(read_state_dict_file(folder / shard))
        return state_dict
    if legacy.is_file():
        return read_state_dict_file(legacy)
    raise FileNotFoundError(
        f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict file: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
    ``torch.load(weights_only=True)``, unwrapping a ``{"state_dict"|"model"|"module": ...}``
    training checkpoint.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: another suffix, an unreadable or non-weights-only file, or contents that
            are not a str -> tensor mapping.
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if path.suffix not in _TORCH_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported checkpoint suffix {path.suffix!r}; expected .safetensors or "
            f"one of {_TORCH_SUFFIXES}"
        )
    try:
        # weights_only: a checkpoint is data, never code to run.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True) (it is corrupt, or holds "
            f"objects other than tensors and plain containers): {error}"
        ) from error
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, expected a state dict")
    return tensor_dict(loaded, str(path))


def tensor_dict(state_dict: Mapping[object, object], description: str) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` after checking that it maps str keys to tensors.

    Raises:
        ValueError: naming the first offending entries.
    """
    bad = [
        repr(key)
        for key, value in state_dict.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if bad:
        raise ValueError(
            f"{description}: a state dict maps str keys to tensors; these entries do not "
            f"(first {_LIST_LIMIT}): {bad[:_LIST_LIMIT]}"
        )
    return dict(state_dict)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- converting


def detect_layout(
    state_dict: Mapping[str, torch.Tensor],
    description: str,
    markers: Mapping[str, str],
    architecture: str,
) -> tuple[str, str]:
    """(layout, prefix in front of the trunk's keys): the layout whose marker key some
    checkpoint key ends with. ``markers`` maps each layout to a key only it has; what comes
    before the marker is the prefix a wrapper added (``vit.``, ``module.``, ...).

    Raises:
        ValueError: no key ends with a marker, or markers of several layouts / prefixes are
            found (a checkpoint holding more than one ``architecture``).
    """
    found: set[tuple[str, str]] = set()
    for key in state_dict:
        for layout, marker in markers.items():
            if key == marker or key.endswith("." + marker):
                found.add((layout, key[: len(key) - len(marker)]))
    if not found:
        raise ValueError(
            f"{description} is not a recognised {architecture} checkpoint: no key ends with any "
            f"of {sorted(markers.values())}; first keys: {list(state_dict)[:_LIST_LIMIT]}"
        )
    if len(found) > 1:
        layouts = sorted(f"{fmt} under prefix {prefix!r}" for fmt, prefix in found)
        raise ValueError(
            f"{description} holds more than one {architecture} ({layouts}); extract the one "
            "to load into a state dict of its own"
        )
    return found.pop()


@dataclass(frozen=True)
class RenameRule:
    """Checkpoint key regex (matched whole, prefix removed) -> our key.

    ``target`` builds our key from the match. ``part`` 0, 1, ... marks one piece of a tensor
    the checkpoint stores split (a ViT's separate query / key / value): the pieces are
    concatenated in ``part`` order along dim 0 once all ``parts`` of them are present.
    """

    pattern: re.Pattern[str]
    target: Callable[[re.Match[str]], str]
    part: int | None = None
    parts: int = 1


def rename_rule(
    pattern: str,
    target: str | Callable[[re.Match[str]], str],
    part: int | None = None,
    parts: int = 1,
) -> RenameRule:
    """A `RenameRule`; a str ``target`` is a regex template (``\\1``, ``\\g<name>``)."""
    build = target if callable(target) else lambda match: match.expand(target)
    return RenameRule(re.compile(pattern), build, part, parts)


@dataclass
class ConvertedState:
    """A checkpoint renamed to a backbone's keys (`apply_rename_rules`' result).

    Attributes:
        tensors: our key -> tensor.
        sources: our key -> the checkpoint keys it came from (several for fused parts).
        unexpected: checkpoint keys no rule maps, or pieces of an incomplete split tensor.
        ignored: checkpoint keys of heads the backbone has no use for.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def apply_rename_rules(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str,
    rules: tuple[RenameRule, ...],
    ignored_heads: re.Pattern[str],
) -> ConvertedState:
    """Rename ``state_dict`` to our keys: the first rule matching a key (``prefix`` removed)
    names its target. Keys matching ``ignored_heads`` go to ``ignored`` (also outside the
    prefix: ViTForImageClassification holds ``vit.*`` beside ``classifier.*``); other keys
    no rule matches, and keys outside the prefix, go to ``unexpected``."""
    converted = ConvertedState()
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    parts_of: dict[str, int] = {}
    for key, tensor in state_dict.items():
        inside = key.startswith(prefix)
        name = key[len(prefix) :] if inside else key
        if ignored_heads.fullmatch(name):
            converted.ignored.append(key)
            continue
        matched = (
            next(((r, m) for r in rules if (m := r.pattern.fullmatch(name))), None)
            if inside
            else None
        )
        if matched is None:
            converted.unexpected.append(key)
            continue
        rule, match = matched
        target = rule.target(match)
        converted.sources.setdefault(target, []).append(key)
        if rule.part is None:
            converted.tensors[target] = tensor
        else:
            pieces.setdefault(target, {})[rule.part] = tensor
            parts_of[target] = rule.parts
    for target, found in pieces.items():
        if len(found) == parts_of[target]:
            converted.tensors[target] = torch.cat([found[i] for i in range(len(found))], dim=0)
        else:
            # An incomplete set of pieces cannot fill the fused tensor.
            converted.unexpected.extend(converted.sources.pop(target))
    return converted


# --------------------------------------------------------------------------- loading


def load_converted(
    backbone: nn.Module,
    converted: ConvertedState,
    *,
    source_format: str,
    strict: bool,
    description: str,
    backbone_name: str,
    optional: Callable[[str], bool] = lambda key: False,
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
) -> LoadReport:
    """Load ``converted`` into ``backbone`` in place and report what happened.

    Converted keys the backbone lacks become unexpected (under their checkpoint names);
    backbone keys without a value are missing unless ``optional(key)``. Every shape is
    checked, and with ``strict`` nothing may be missing or unexpected, before anything is
    loaded. ``backbone_name`` names the backbone in the strict message; ``resized`` is
    passed through to the report.

    Raises:
        ValueError: a shape differs, or (``strict``) keys are missing or unexpected;
            nothing is loaded then.
    """
    own = backbone.state_dict()
    tensors, unexpected = dict(converted.tensors), list(converted.unexpected)
    for target in [key for key in tensors if key not in own]:
        unexpected.extend(converted.sources[target])
        del tensors[target]
    missing = [key for key in own if key not in tensors and not optional(key)]
    mismatched = [
        f"{key}: checkpoint {tuple(tensor.shape)} vs backbone {tuple(own[key].shape)}"
        for key, tensor in tensors.items()
        if tensor.shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"{description}: {len(mismatched)} tensor(s) have the wrong shape for this backbone "
            f"(first {_LIST_LIMIT}): {mismatched[:_LIST_LIMIT]}"
        )
    if strict and (missing or unexpected):
        raise ValueError(
            f"{description} does not match the {backbone_name} (strict=True): {len(missing)} "
            f"missing key(s) {missing[:_LIST_LIMIT]}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:_LIST_LIMIT]} (at most {_LIST_LIMIT} of each shown); pass "
            "strict=False to load the matching part"
        )
    backbone.load_state_dict(tensors, strict=False)
    return LoadReport(
        source_format=source_format,
        loaded=tuple(sorted(tensors)),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        ignored=tuple(converted.ignored),
        resized=dict(resized or {}),
    )
