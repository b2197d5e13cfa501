"""Loading a saved checkpoint: model and image processor, with errors that say what is wrong.

A checkpoint is a folder written by ``model.save_pretrained`` and
``processor.save_pretrained`` (or a Hub id). :func:`checkpoint_source` checks one without
loading it, so a command can refuse a wrong path before it reads any data;
:func:`load_checkpoint` loads it through the transformers Auto classes, which importing this
package registers every architecture with. Evaluation, retrieval and deployment all load
checkpoints through here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoImageProcessor, AutoModel, BaseImageProcessor, PreTrainedModel
from transformers.utils import (
    CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
)

from ..modeling_utils import CorruptCheckpointError, check_saved_weights

__all__ = ["checkpoint_source", "load_checkpoint"]


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
    return resolved


def checkpoint_source(model: str | os.PathLike[str]) -> str:
    """Check where :func:`load_checkpoint` would load ``model`` from, without loading it.

    A local path must be a folder holding ``config.json``, ``preprocessor_config.json`` and
    ``model.safetensors`` (or a sharded safetensors index). A path that does not exist is
    taken as a Hub id if it has that form (``name`` or ``namespace/name``); whether the Hub
    has it is only known when loading.

    Returns:
        The folder or Hub id as a string.

    The weights files' headers are read (not their tensors), so that a damaged file fails here,
    before any dataset is loaded, rather than after.

    Raises:
        FileNotFoundError: the folder does not exist (and is not a Hub id), or lacks files
            (all missing ones are named).
        NotADirectoryError: ``model`` is a file.
        CorruptCheckpointError: a weights file is not a complete safetensors file (named).
    """
    path = Path(model)
    if not path.exists():
        try:
            validate_repo_id(str(model))
        except HFValidationError:
            raise FileNotFoundError(f"checkpoint folder {path} does not exist") from None
        return str(model)
    if not path.is_dir():
        raise NotADirectoryError(f"checkpoint {path} is a file; expected a checkpoint folder")
    missing = [name for name in (CONFIG_NAME, IMAGE_PROCESSOR_NAME) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)):
        missing.append(f"{SAFE_WEIGHTS_NAME} (or {SAFE_WEIGHTS_INDEX_NAME} with its shards)")
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {path} lacks {', '.join(missing)}; write it with "
            f"model.save_pretrained(folder) and processor.save_pretrained(folder)"
        )
    check_saved_weights(path)
    return str(path)


def load_checkpoint(
    model: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, BaseImageProcessor]:
    """The model (in eval mode, on ``device``) and image processor of a saved checkpoint.

    Args:
        model: a folder written by ``model.save_pretrained`` and ``processor.save_pretrained``,
            or a Hub id when no such local path exists (see :func:`checkpoint_source`).
        device: where to put the model; default ``cuda`` if available, else ``cpu``.

    Raises:
        FileNotFoundError: the folder does not exist or lacks files (see
            :func:`checkpoint_source`), or a Hub id could not be loaded (offline, unknown).
        NotADirectoryError: ``model`` is a file.
        ValueError: an unknown or unavailable ``device``, or a local checkpoint that
            transformers cannot read (e.g. a malformed ``config.json``).
        CorruptCheckpointError: a weights file that is damaged (not a complete safetensors
            file) or holds weights that are not finite; the file is named.
    """
    target = _device(device)
    source = checkpoint_source(model)
    local = Path(source).is_dir()
    try:
        loaded = AutoModel.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except CorruptCheckpointError:
        raise  # already names the file, also one downloaded from the Hub
    except OSError as error:
        # transformers' message spans several lines; its first says what failed.
        first_line = str(error).strip().splitlines()[0]
        if local:
            raise ValueError(f"cannot load checkpoint folder {source}: {first_line}") from error
        raise FileNotFoundError(
            f"checkpoint {source!r} is not a local folder, and loading it from the Hub failed: "
            f"{first_line}"
        ) from error
    return loaded.to(target).eval(), processor
