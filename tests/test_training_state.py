"""The state folder of a run (``training/state.py``): round trips, damaged and missing files,
accelerate's pickles never read."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_transformers.data import BatchAugmentation
from reid_transformers.training import TrainerState
from reid_transformers.training import state as state_module
from reid_transformers.training.state import (
    REQUIRED_FILES,
    STATE_FORMAT,
    load_model_and_optimizer,
    load_random_states,
    load_trainer_state,
    read_state_file,
    save_model_and_optimizer,
    save_random_states,
    save_trainer_state,
)


class PicklePayload:
    """Unpickling it creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _model_and_adam(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small model and an Adam optimizer (tuple betas, per-parameter step counters), with
    one step taken so that its state holds tensors."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.Adam(
        [{"params": model[0].parameters(), "lr": 1e-2}, {"params": model[1].parameters()}],
        lr=1e-3, betas=(0.8, 0.95),
    )
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def _complete_state(directory: Path, trainer_values: dict | None = None) -> None:
    model, optimizer = _model_and_adam(seed=0)
    save_model_and_optimizer(directory, model, optimizer)
    save_random_states(directory, 0, BatchAugmentation(seed=0))
    save_trainer_state(directory, trainer_values or TrainerState().state_dict())


def test_model_and_optimizer_round_trip(tmp_path):
    saved_model, saved_optimizer = _model_and_adam(seed=0)
    save_model_and_optimizer(tmp_path, saved_model, saved_optimizer)
    model, optimizer = _model_and_adam(seed=1)
    load_model_and_optimizer(tmp_path, model, optimizer)

    for name, tensor in saved_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    expected, loaded = saved_optimizer.state_dict(), optimizer.state_dict()
    assert loaded["param_groups"] == expected["param_groups"]
    assert isinstance(loaded["param_groups"][0]["betas"], tuple)  # not JSON's list
    for index, values in expected["state"].items():
        for name, value in values.items():
            assert torch.equal(loaded["state"][index][name], value), (index, name)
    # The optimizer's tensors are in safetensors, the rest in JSON.
    assert set(json.loads((tmp_path / "optimizer.json").read_text())) == {"param_groups", "state"}


def _draws(augment: BatchAugmentation) -> tuple:
    return (torch.rand(3), np.random.rand(3).tolist(), random.random(), random.gauss(0, 1),
            augment(torch.zeros(1, 3, 8, 4)))


def test_random_states_round_trip(tmp_path):
    augment = BatchAugmentation(seed=3, padding=2)
    augment(torch.zeros(1, 3, 8, 4))  # the generator exists, and has moved
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    np.random.randn()  # numpy caches the second gaussian
    save_random_states(tmp_path, 2, augment)
    expected = _draws(augment)

    other = BatchAugmentation(seed=99, padding=2)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    load_random_states(tmp_path, 2, other)
    for got, want in zip(_draws(other), expected, strict=True):
        assert torch.equal(got, want) if isinstance(want, torch.Tensor) else got == want
    assert {p.name for p in tmp_path.iterdir()} == {"rng-2.safetensors", "rng-2.json"}


def test_trainer_state_round_trip_and_format_version(tmp_path):
    state = TrainerState(epoch=3, global_step=42, best_map=0.5,
                         best_evaluation={"epoch": 2, "step": 30, "metrics": {"mAP": 0.5}})
    _complete_state(tmp_path, {**state.state_dict(), "accumulation_step": 1})
    saved = load_trainer_state(tmp_path)
    assert saved["format_version"] == STATE_FORMAT and saved["accumulation_step"] == 1
    restored = TrainerState()
    restored.load_state_dict(saved)
    assert restored == state

    (tmp_path / "trainer_state.json").write_text(json.dumps({**saved, "format_version": 7}))
    with pytest.raises(ValueError, match=r"trainer_state.json has format_version 7; this "
                                         r"version reads 1"):
        load_trainer_state(tmp_path)


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_a_missing_file_is_named(tmp_path, missing):
    _complete_state(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ValueError, match=rf"is incomplete: it lacks {missing}; start the run"):
        load_trainer_state(tmp_path)


@pytest.mark.parametrize("name, load", [
    ("trainer_state.json", lambda directory: load_trainer_state(directory)),
    ("optimizer.safetensors",
     lambda directory: load_model_and_optimizer(directory, *_model_and_adam(seed=1))),
    ("optimizer.json",
     lambda directory: load_model_and_optimizer(directory, *_model_and_adam(seed=1))),
    ("model.safetensors",
     lambda directory: load_model_and_optimizer(directory, *_model_and_adam(seed=1))),
    ("rng-0.safetensors",
     lambda directory: load_random_states(directory, 0, BatchAugmentation(seed=0))),
])
def test_a_tampered_file_is_named(tmp_path, name, load):
    _complete_state(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"{name} cannot be loaded \(.*\); the saved state is "
                                         "damaged"):
        load(tmp_path)


def test_a_model_of_other_settings_is_named(tmp_path):
    _complete_state(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"(?s)model.safetensors cannot be loaded .* other model"):
        load_model_and_optimizer(tmp_path, model, optimizer)


def test_read_state_file_names_the_file_and_keeps_the_cause(tmp_path):
    assert read_state_file(tmp_path / "x", lambda path: path.name) == "x"
    with pytest.raises(ValueError, match=r"x cannot be loaded \(KeyError: 'k'\)") as caught:
        read_state_file(tmp_path / "x", lambda path: {}["k"])
    assert isinstance(caught.value.__cause__, KeyError)


def test_the_pickle_payload_proves_a_load(tmp_path):
    """The tests' witness works: loading the payload creates its marker."""
    pickle.loads(pickle.dumps(PicklePayload(tmp_path / "executed")))
    assert (tmp_path / "executed").is_file()


def test_accelerate_pickles_are_refused_unread(tmp_path):
    marker = tmp_path / "executed"
    state = tmp_path / "state"
    state.mkdir()
    torch.save({"weight": torch.zeros(1)}, state / "pytorch_model.bin")
    for name in ("optimizer.bin", "random_states_0.pkl", "scheduler.bin"):
        (state / name).write_bytes(pickle.dumps(PicklePayload(marker)))
    with pytest.raises(ValueError, match=r"lacks trainer_state.json, .*: it was saved by an older "
                                         r"version .* pickles \(optimizer.bin, pytorch_model.bin"):
        load_trainer_state(state)
    assert not marker.exists()


def test_loading_a_state_reads_no_pickle(tmp_path, monkeypatch):
    _complete_state(tmp_path)
    marker = tmp_path / "executed"
    (tmp_path / "extra.pkl").write_bytes(pickle.dumps(PicklePayload(marker)))

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    load_trainer_state(tmp_path)
    load_model_and_optimizer(tmp_path, *_model_and_adam(seed=1))
    load_random_states(tmp_path, 0, BatchAugmentation(seed=0))
    assert not marker.exists()


def test_every_file_is_fsynced(tmp_path, monkeypatch):
    """The trainer swaps the folder in after writing it: every file must be on disk first."""
    synced = []
    real_fsync = state_module.fsync_file
    monkeypatch.setattr(state_module, "fsync_file",
                        lambda path: synced.append(Path(path).name) or real_fsync(path))
    _complete_state(tmp_path)
    # JSON files go through write_atomically, which syncs them itself.
    assert sorted(synced) == ["model.safetensors", "optimizer.safetensors", "rng-0.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REQUIRED_FILES)
