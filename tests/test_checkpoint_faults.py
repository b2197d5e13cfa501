"""Damaged checkpoints: a truncated or garbled ``model.safetensors`` and weights that are not
finite must fail at load time with an error naming the file (and the parameter), for every
architecture, through ``AutoModel.from_pretrained``, ``load_checkpoint`` and the
``reid-transformers evaluate`` command (one line on stderr, exit code 2).

Every fault is written into the file at a known place: the safetensors header is parsed to find
the bytes of one tensor, so the damage never depends on luck.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as transformers_logging

from reid_transformers.cli import PROG, main
from reid_transformers.data import make_synthetic_reid
from reid_transformers.modeling_utils import (
    CorruptCheckpointError,
    check_finite_weights,
    check_saved_weights,
)
from reid_transformers.models.auto import checkpoint_source, load_checkpoint

# Modules, not their test classes: a class imported here would be collected and run again.
from . import test_aaformer, test_hat, test_la_transformer, test_pan, test_prct

# Each architecture's tiny model and processor, as its own test suite builds them.
ARCHITECTURES = {
    "la_transformer": test_la_transformer.TestLATransformer,
    "aaformer": test_aaformer.TestAAformer,
    "pan": test_pan.TestPAN,
    "hat": test_hat.TestHAT,
    "prct": test_prct.TestPRCT,
}
WEIGHTS = "model.safetensors"


# ---------------------------------------------------------------------- helpers
def save_checkpoint(folder: Path, architecture: str = "la_transformer", **save_options) -> Path:
    suite = ARCHITECTURES[architecture]()
    suite.make_model().save_pretrained(folder, **save_options)
    suite.processor().save_pretrained(folder)
    return folder


def tensor_layout(path: Path) -> tuple[int, dict]:
    """Where the data section starts, and the header's entry of every tensor."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header.pop("__metadata__", None)
    return 8 + length, header


def overwrite_tensor(path: Path, value: float, name: str | None = None) -> str:
    """Fill one float32 tensor's bytes in the file with ``value`` (the header stays valid);
    by default the largest one, so that it is a weight every forward uses. Returns its name."""
    start, header = tensor_layout(path)
    if name is None:
        name = max(
            (key for key, entry in header.items() if entry["dtype"] == "F32"),
            key=lambda key: header[key]["data_offsets"][1] - header[key]["data_offsets"][0],
        )
    begin, end = header[name]["data_offsets"]
    raw = bytearray(path.read_bytes())
    raw[start + begin : start + end] = struct.pack("<f", value) * ((end - begin) // 4)
    path.write_bytes(bytes(raw))
    return name


def truncate(path: Path) -> None:
    """Cut the file in the middle of its data section (what an interrupted copy leaves)."""
    raw = path.read_bytes()
    start, _ = tensor_layout(path)
    path.write_bytes(raw[: start + (len(raw) - start) // 2])


@pytest.fixture
def quiet_loading():
    """transformers' "Loading weights" bar off, so stderr holds only what the command says."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    yield
    if enabled:
        transformers_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    return make_synthetic_reid(
        tmp_path_factory.mktemp("synthetic") / "data", num_identities=4, num_cameras=2,
        image_size=(64, 32), num_distractors=1, num_junk=0, progress=False,
    )


def run_evaluate(capsys, checkpoint: Path, root: Path) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["evaluate", "--model", str(checkpoint), "--dataset", "market1501",
                 "--data-dir", str(root), "--no-progress"])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------- from_pretrained
def test_an_intact_checkpoint_still_loads_and_reproduces(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt")
    model = AutoModel.from_pretrained(folder).eval()
    original = ARCHITECTURES["la_transformer"]().make_model().eval()
    pixels = torch.randn(2, 3, 32, 16)
    torch.testing.assert_close(model(pixels).embeddings, original(pixels).embeddings)


def test_a_truncated_weights_file_is_named(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt")
    truncate(folder / WEIGHTS)
    with pytest.raises(CorruptCheckpointError) as raised:
        AutoModel.from_pretrained(folder)
    message = str(raised.value)
    assert str(folder / WEIGHTS) in message
    assert "not a complete safetensors file" in message and "\n" not in message
    # Both an OSError (what transformers raises for unreadable files) and a ValueError.
    assert isinstance(raised.value, OSError) and isinstance(raised.value, ValueError)


def test_a_garbled_header_is_named(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt")
    path = folder / WEIGHTS
    raw = bytearray(path.read_bytes())
    raw[8:40] = b"\xff" * 32  # the start of the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_non_finite_weights_are_rejected_for_every_architecture(tmp_path, architecture):
    folder = save_checkpoint(tmp_path / "ckpt", architecture)
    name = overwrite_tensor(folder / WEIGHTS, float("nan"))
    with pytest.raises(CorruptCheckpointError) as raised:
        AutoModel.from_pretrained(folder)
    message = str(raised.value)
    assert str(folder / WEIGHTS) in message and name in message
    assert "not finite" in message


def test_random_bytes_over_a_tensor_are_caught(tmp_path):
    """Garbage (here: seeded random bytes over the largest tensor) decodes to some NaN or
    infinite floats: one in 256 random float32 patterns has an all-ones exponent."""
    folder = save_checkpoint(tmp_path / "ckpt")
    path = folder / WEIGHTS
    name = overwrite_tensor(path, 0.0)  # find the largest tensor
    start, header = tensor_layout(path)
    begin, end = header[name]["data_offsets"]
    raw = bytearray(path.read_bytes())
    raw[start + begin : start + end] = np.random.default_rng(0).bytes(end - begin)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=f"{name}"):
        AutoModel.from_pretrained(folder)


def test_infinite_weights_are_rejected_and_every_bad_parameter_is_counted(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt")
    _, header = tensor_layout(folder / WEIGHTS)
    names = sorted(key for key, entry in header.items() if entry["dtype"] == "F32")[:3]
    for name in names:
        overwrite_tensor(folder / WEIGHTS, float("inf"), name)
    with pytest.raises(CorruptCheckpointError, match=r"3 parameters") as raised:
        AutoModel.from_pretrained(folder)
    assert all(name in str(raised.value) for name in names)


def test_the_damaged_shard_of_a_sharded_checkpoint_is_named(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt", max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2, "the checkpoint should be sharded for this test"
    name = overwrite_tensor(shards[1], float("nan"))
    with pytest.raises(CorruptCheckpointError) as raised:
        AutoModel.from_pretrained(folder)
    message = str(raised.value)
    assert str(shards[1]) in message and name in message
    assert str(shards[0]) not in message
    truncate(shards[2])
    with pytest.raises(CorruptCheckpointError) as raised:
        AutoModel.from_pretrained(folder)
    assert str(shards[2]) in str(raised.value) and str(shards[1]) not in str(raised.value)


def test_fine_tuning_with_new_heads_still_loads(tmp_path):
    """Heads the checkpoint lacks are not loaded, and so not checked (nor reported)."""
    folder = save_checkpoint(tmp_path / "ckpt")
    config = AutoConfig.from_pretrained(folder, num_identities=7)
    model = AutoModel.from_pretrained(folder, config=config, ignore_mismatched_sizes=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(logits.shape[-1] == 7 for logits in model(torch.randn(2, 3, 32, 16)).logits)


def test_check_finite_weights_names_parameters_and_skips_unloaded_ones():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    check_finite_weights(model)  # a fresh model is finite
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[1].running_var.fill_(float("inf"))
    with pytest.raises(CorruptCheckpointError) as raised:
        check_finite_weights(model)
    message = str(raised.value)
    assert "2 parameters: 0.weight, 1.running_var" in message
    assert "the state dict given to from_pretrained" in message
    with pytest.raises(CorruptCheckpointError, match="weights files a.bin, b.bin"):
        check_finite_weights(model, ["a.bin", "b.bin"])
    many = torch.nn.Sequential(*(torch.nn.Linear(1, 1) for _ in range(7)))
    with torch.no_grad():
        for layer in many:
            layer.bias.fill_(float("nan"))
    with pytest.raises(CorruptCheckpointError, match=r"7 parameters: 0\.bias, .*4\.bias and 2 "):
        check_finite_weights(many)
    model[0].to_empty(device="meta")  # not loaded yet: nothing to check
    model[1].running_var.fill_(1.0)
    check_finite_weights(model)


def test_a_state_dict_with_nan_is_rejected():
    suite = ARCHITECTURES["la_transformer"]()
    model = suite.make_model()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    state["vit.layernorm.weight"][0] = float("nan")
    with pytest.raises(CorruptCheckpointError, match="state dict.*vit.layernorm.weight"):
        type(model).from_pretrained(None, config=model.config, state_dict=state)


# ---------------------------------------------------------------------- checkpoint workflows
def test_checkpoint_source_checks_every_shard_the_index_lists(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt", max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert checkpoint_source(folder) == str(folder)
    check_saved_weights(folder)
    truncate(shards[-1])
    with pytest.raises(CorruptCheckpointError, match=str(shards[-1])):
        checkpoint_source(folder)
    shards[0].unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks the shard\\(s\\) {shards[0].name} "):
        checkpoint_source(folder)
    index = folder / "model.safetensors.index.json"
    index.write_text('{"metadata": {}}')
    with pytest.raises(CorruptCheckpointError, match=f"weights index {index} .*'weight_map'"):
        checkpoint_source(folder)


def test_checkpoint_source_rejects_a_truncated_file_before_loading(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt")
    truncate(folder / WEIGHTS)
    with pytest.raises(CorruptCheckpointError, match=str(folder / WEIGHTS)):
        checkpoint_source(folder)


def test_load_checkpoint_passes_the_named_error_through(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt")
    name = overwrite_tensor(folder / WEIGHTS, float("nan"))
    with pytest.raises(CorruptCheckpointError) as raised:
        load_checkpoint(folder, device="cpu")
    assert str(folder / WEIGHTS) in str(raised.value) and name in str(raised.value)


# ---------------------------------------------------------------------- the command line
@pytest.mark.usefixtures("quiet_loading")
def test_evaluate_names_a_truncated_weights_file_in_one_line(capsys, tmp_path, dataset_root):
    folder = save_checkpoint(tmp_path / "ckpt")
    truncate(folder / WEIGHTS)
    code, err = run_evaluate(capsys, folder, dataset_root)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"{PROG} evaluate: error: weights file {folder / WEIGHTS}")


@pytest.mark.usefixtures("quiet_loading")
def test_evaluate_names_non_finite_weights_in_one_line(capsys, tmp_path, dataset_root):
    folder = save_checkpoint(tmp_path / "ckpt")
    name = overwrite_tensor(folder / WEIGHTS, float("nan"))
    code, err = run_evaluate(capsys, folder, dataset_root)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"{PROG} evaluate: error: weights file {folder / WEIGHTS}")
    assert name in line


def test_the_installed_command_prints_one_line_for_a_damaged_checkpoint(tmp_path, dataset_root):
    folder = save_checkpoint(tmp_path / "ckpt")
    overwrite_tensor(folder / WEIGHTS, float("nan"))
    # The progress bars of dataset and weight loading are not what this test is about.
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "reid_transformers.cli", "evaluate", "--model", str(folder),
         "--dataset", "market1501", "--data-dir", str(dataset_root), "--no-progress"],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        f"{PROG} evaluate: error: weights file {folder / WEIGHTS}"
    )
