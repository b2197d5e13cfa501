"""The run's resumable state: the files of ``output_dir/state/``.

A state folder holds safetensors and JSON, never a pickle:

- ``model.safetensors``: the model's weights;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors (keys
  ``"<parameter index>.<name>"``) and the rest of its state dict (parameter groups, numbers);
- ``rng-<rank>.safetensors`` + ``rng-<rank>.json``: one process's torch (CPU, CUDA),
  augmentation, numpy and Python random states;
- ``trainer_state.json``: :data:`STATE_FORMAT`, then epochs, steps, evaluations
  (:class:`TrainerState`) and what the trainer adds (accumulation counter, number of
  processes, fp16 loss scaler).

Every file is fsynced (JSON through ``write_atomically``); the trainer writes them into a
staging folder and swaps it in whole (``replace_directory``), so a killed run leaves either the
previous state or the new one. Reading checks that every file is there before loading any, and
refuses a folder written by accelerate's ``save_state`` (older versions), whose pickles are
never loaded: unpickling a file can run any code.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..data import BatchAugmentation
from ..utils import fsync_file, write_atomically

#: Name of the state folder inside ``output_dir``.
STATE_DIR = "state"
#: Version of the state folder's layout (the module docstring); written in
#: ``trainer_state.json`` and checked when a run resumes.
STATE_FORMAT = 1
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_VALUES_FILE = "optimizer.json"
#: Every file a complete state folder holds (process 0's random states at least).
REQUIRED_FILES = (TRAINER_STATE_FILE, MODEL_FILE, OPTIMIZER_TENSORS_FILE, OPTIMIZER_VALUES_FILE,
                  "rng-0.safetensors", "rng-0.json")
#: What accelerate's ``save_state`` wrote into ``state/`` before: pickles, never loaded.
_PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")

_Read = TypeVar("_Read")


@dataclass
class TrainerState:
    """What a resumed run needs beyond model, optimizer and RNG states (saved as JSON).

    ``best_evaluation`` and ``last_evaluation`` are ``{"epoch", "step", "metrics"}`` of the
    evaluation that chose ``best/`` and of the latest one (epoch 0: the checkpoint a run
    fine-tunes, before training).
    """

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_map: float = -1.0
    best_evaluation: dict[str, Any] | None = None
    last_evaluation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of every field."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_map = float(state["best_map"])
        self.best_evaluation = state.get("best_evaluation")
        self.last_evaluation = state.get("last_evaluation")


# ------------------------------------------------------------------ writing
def save_random_states(directory: Path, rank: int, augment: BatchAugmentation) -> None:
    """Write ``rng-<rank>.safetensors`` and ``rng-<rank>.json``: this process's torch (CPU and
    every CUDA device), ``augment``'s, numpy's and Python's random states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    for device, state in augment.state_dict().items():
        tensors[f"augment.{device}"] = state
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    values = {
        "numpy": [kind, int(position), int(has_gauss), float(cached_gaussian)],
        "python": [version, list(internal), gauss_next],
    }
    _save_tensors(tensors, Path(directory) / f"rng-{rank}.safetensors")
    _write_json(Path(directory) / f"rng-{rank}.json", values)


def save_model_and_optimizer(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Write ``model.safetensors`` (``model``'s weights, shared tensors once),
    ``optimizer.safetensors`` and ``optimizer.json`` (``optimizer``'s state dict, split)."""
    directory = Path(directory)
    save_model(model, str(directory / MODEL_FILE))
    fsync_file(directory / MODEL_FILE)
    tensors, values = _split_optimizer_state(optimizer.state_dict())
    _save_tensors(tensors, directory / OPTIMIZER_TENSORS_FILE)
    _write_json(directory / OPTIMIZER_VALUES_FILE, values)


def save_trainer_state(directory: Path, values: dict[str, Any]) -> None:
    """Write ``trainer_state.json``: ``{"format_version": STATE_FORMAT, **values}``
    (``values`` JSON-serialisable: a :meth:`TrainerState.state_dict` and the trainer's
    counters)."""
    _write_json(Path(directory) / TRAINER_STATE_FILE, {"format_version": STATE_FORMAT, **values})


# ------------------------------------------------------------------ reading
def load_trainer_state(directory: Path) -> dict[str, Any]:
    """The values :func:`save_trainer_state` wrote (``format_version`` included), after
    checking that ``directory`` holds every file of a state folder.

    Raises:
        ValueError: a file is missing (the message names it, and the pickles of an
            accelerate-written folder, which are not read), ``trainer_state.json`` is
            damaged, or its ``format_version`` is not :data:`STATE_FORMAT`.
    """
    directory = Path(directory)
    _check_state_files(directory)
    path = directory / TRAINER_STATE_FILE
    saved = read_state_file(path, _read_json)
    if saved.get("format_version") != STATE_FORMAT:
        raise ValueError(
            f"{path} has format_version {saved.get('format_version')!r}; this version reads "
            f"{STATE_FORMAT}"
        )
    return saved


def load_model_and_optimizer(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load what :func:`save_model_and_optimizer` wrote into ``model`` (on the device its
    parameters are on) and ``optimizer``, which must have the saved run's settings.

    Raises:
        ValueError: naming the file that is damaged or does not fit ``model`` / ``optimizer``.
    """
    directory = Path(directory)
    # The parameters' own device: accelerate's may read "cpu:0", which safetensors refuses.
    device = str(next(model.parameters()).device)
    read_state_file(directory / MODEL_FILE, lambda path: load_model(model, path, device=device))
    tensors = read_state_file(directory / OPTIMIZER_TENSORS_FILE, load_file)
    values = read_state_file(directory / OPTIMIZER_VALUES_FILE, _read_json)
    read_state_file(
        directory / OPTIMIZER_TENSORS_FILE,
        lambda _: optimizer.load_state_dict(
            _join_optimizer_state(tensors, values, optimizer.state_dict())
        ),
    )


def load_random_states(directory: Path, rank: int, augment: BatchAugmentation) -> None:
    """Restore what :func:`save_random_states` wrote for ``rank`` (CUDA states only when this
    machine has as many devices as were saved).

    Raises:
        ValueError: naming the file that is damaged.
    """
    directory = Path(directory)
    tensors = read_state_file(directory / f"rng-{rank}.safetensors", load_file)
    values = read_state_file(directory / f"rng-{rank}.json", _read_json)
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count())
            if f"cuda.{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    augment.load_state_dict(
        {name.removeprefix("augment."): state for name, state in tensors.items()
         if name.startswith("augment.")}
    )
    kind, position, has_gauss, cached_gaussian = values["numpy"]
    np.random.set_state(
        (kind, tensors["numpy"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    version, internal, gauss_next = values["python"]
    random.setstate((version, tuple(internal), gauss_next))


def read_state_file(path: Path, read: Callable[[Path], _Read]) -> _Read:
    """``read(path)``, with an error that names the file if it is damaged.

    Raises:
        ValueError: ``read`` raised; the message names ``path`` and how to go on.
    """
    try:
        return read(path)
    except Exception as error:
        raise ValueError(
            f"{path} cannot be loaded ({type(error).__name__}: {error}); the saved state is "
            "damaged or from other model or optimizer settings: resume with the run's own "
            "arguments, or start again with --overwrite_output_dir"
        ) from error


# ------------------------------------------------------------------ helpers
def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, path)
    fsync_file(path)


def _write_json(path: Path, values: Any) -> None:
    text = json.dumps(values, indent=2) + "\n"
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _check_state_files(directory: Path) -> None:
    """``directory`` must hold :data:`REQUIRED_FILES`; one written by accelerate's
    ``save_state`` holds pickles instead, which are never loaded."""
    names = {path.name for path in directory.iterdir()}
    missing = [name for name in REQUIRED_FILES if name not in names]
    if not missing:
        return
    pickles = sorted(name for name in names if name.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(
            f"{directory} lacks {', '.join(missing)}: it was saved by an older version of "
            f"reid_transformers through accelerate, whose pickles ({', '.join(pickles)}) are "
            "not loaded, because unpickling a file can run any code; start the run again with "
            "--overwrite_output_dir"
        )
    raise ValueError(
        f"{directory} is incomplete: it lacks {', '.join(missing)}; start the run again with "
        "--overwrite_output_dir"
    )


def _split_optimizer_state(
    state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as tensors (``"<param index>.<name>"``) for safetensors and
    everything else (parameter groups, numbers) for JSON."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.contiguous()
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "state": other}


def _join_optimizer_state(
    tensors: dict[str, torch.Tensor], values: dict[str, Any], current: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`_split_optimizer_state`; JSON turned tuples (Adam's betas) into
    lists, which go back to the type the optimizer holds now."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, entries in values["state"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [
        {k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()}
        for saved, now in zip(values["param_groups"], current["param_groups"], strict=False)
    ]
    return {"state": state, "param_groups": groups}
