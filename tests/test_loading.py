"""Unit tests of the checkpoint machinery the backbone loaders share (backbones/loading.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from torch import nn

from reid_transformers import backbones
from reid_transformers.backbones import loading
from reid_transformers.backbones.loading import (
    CheckpointUnavailableError,
    ConvertedState,
    LoadReport,
    apply_rename_rules,
    detect_layout,
    load_converted,
    read_checkpoint,
    read_hf_weights,
    read_state_dict_file,
    rename_rule,
    resolve_checkpoint,
    tensor_dict,
)

MARKERS = {"ours": "trunk.weight", "theirs": "stem.proj.weight"}
NO_HEADS = re.compile(r"(?!)")


def _tensor(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def test_public_names_stay_importable_from_the_old_homes() -> None:
    from reid_transformers.backbones import vit

    assert backbones.CheckpointUnavailableError is CheckpointUnavailableError
    assert vit.CheckpointUnavailableError is CheckpointUnavailableError
    assert backbones.LoadReport is LoadReport is vit.LoadReport
    assert issubclass(CheckpointUnavailableError, OSError)


# --------------------------------------------------------------------------- detect_layout


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("trunk.weight", ("ours", "")),
        ("module.trunk.weight", ("ours", "module.")),
        ("model.stem.proj.weight", ("theirs", "model.")),
    ],
)
def test_detect_layout_finds_the_layout_and_its_prefix(key: str, expected: tuple) -> None:
    state = {key: _tensor(1), "classifier.weight": _tensor(1)}
    assert detect_layout(state, "ckpt", MARKERS, "Toy") == expected


def test_detect_layout_needs_a_whole_key_segment() -> None:
    # "maintrunk.weight" ends with the marker text but not at a key boundary.
    with pytest.raises(ValueError, match=r"ckpt is not a recognised Toy checkpoint.*maintrunk"):
        detect_layout({"maintrunk.weight": _tensor(1)}, "ckpt", MARKERS, "Toy")


def test_detect_layout_refuses_two_models() -> None:
    state = {"a.trunk.weight": _tensor(1), "b.trunk.weight": _tensor(1)}
    with pytest.raises(ValueError, match=r"holds more than one Toy.*prefix 'a\.'.*prefix 'b\.'"):
        detect_layout(state, "ckpt", MARKERS, "Toy")


# --------------------------------------------------------------------------- apply_rename_rules


def test_rename_rules_rename_fuse_and_sort_out_the_rest() -> None:
    q, k, v = _tensor(2, 3), _tensor(2, 3), _tensor(2, 3)
    # Each piece has its own rule, which gives its slot in the fused tensor.
    rules = (
        rename_rule(r"blocks\.(\d+)\.w", r"layers.\1.weight"),
        rename_rule(r"blocks\.(\d+)\.q", r"layers.\1.qkv", part=0, parts=3),
        rename_rule(r"blocks\.(\d+)\.k", r"layers.\1.qkv", part=1, parts=3),
        rename_rule(r"blocks\.(\d+)\.v", r"layers.\1.qkv", part=2, parts=3),
        rename_rule(r"custom\.(?P<n>\d+)", lambda m: f"shifted.{int(m['n']) + 1}"),
    )
    state = {
        "m.blocks.0.v": v,
        "m.blocks.0.q": q,
        "m.blocks.0.k": k,
        "m.blocks.0.w": _tensor(1),
        "m.blocks.1.q": _tensor(2, 3),  # no k / v: cannot fill a fused tensor
        "m.custom.4": _tensor(1),
        "m.stray": _tensor(1),
        "head.weight": _tensor(1),  # a head outside the prefix
        "other.blocks.0.w": _tensor(1),  # outside the prefix: never renamed
    }
    converted = apply_rename_rules(state, "m.", rules, re.compile(r"head\..+"))
    assert set(converted.tensors) == {"layers.0.weight", "layers.0.qkv", "shifted.5"}
    torch.testing.assert_close(converted.tensors["layers.0.qkv"], torch.cat([q, k, v]))
    assert converted.sources["layers.0.qkv"] == ["m.blocks.0.v", "m.blocks.0.q", "m.blocks.0.k"]
    assert converted.unexpected == ["m.stray", "other.blocks.0.w", "m.blocks.1.q"]
    assert converted.ignored == ["head.weight"]


# --------------------------------------------------------------------------- load_converted


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


def _converted(**tensors: torch.Tensor) -> ConvertedState:
    return ConvertedState(tensors=dict(tensors), sources={key: [f"ckpt.{key}"] for key in tensors})


def test_load_converted_loads_and_reports() -> None:
    toy = _Toy()
    weight = _tensor(2, 3)
    converted = _converted(**{"linear.weight": weight, "extra.bias": _tensor(1)})
    converted.ignored.append("fc.weight")
    report = load_converted(
        toy,
        converted,
        source_format="toy",
        strict=False,
        description="ckpt",
        backbone_name="toy",
        optional=lambda key: key.endswith("num_batches_tracked"),
    )
    torch.testing.assert_close(toy.linear.weight.data, weight)
    assert report.source_format == "toy" and report.loaded == ("linear.weight",)
    assert report.unexpected == ("ckpt.extra.bias",)  # named as in the checkpoint
    assert report.ignored == ("fc.weight",) and report.resized == {}
    assert "norm.num_batches_tracked" not in report.missing
    assert set(report.missing) == {
        "linear.bias",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
    }


def test_load_converted_checks_shapes_before_loading_anything() -> None:
    toy = _Toy()
    before = {key: value.clone() for key, value in toy.state_dict().items()}
    converted = _converted(**{"linear.weight": _tensor(2, 3), "linear.bias": _tensor(5)})
    with pytest.raises(
        ValueError,
        match=r"ckpt: 1 tensor\(s\).*linear\.bias: checkpoint \(5,\) "
        r"vs backbone \(2,\)",
    ):
        load_converted(
            toy,
            converted,
            source_format="toy",
            strict=False,
            description="ckpt",
            backbone_name="toy",
        )
    for key, value in toy.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_load_converted_strict_names_missing_and_unexpected() -> None:
    toy = _Toy()
    converted = _converted(**{"linear.weight": _tensor(2, 3)})
    converted.unexpected.append("ckpt.stray")
    with pytest.raises(
        ValueError,
        match=r"does not match the toy model \(strict=True\): 6 missing"
        r".*linear\.bias.*1 unexpected key\(s\) \['ckpt\.stray'\].*strict=False",
    ):
        load_converted(
            toy,
            converted,
            source_format="toy",
            strict=True,
            description="ckpt",
            backbone_name="toy model",
        )
    assert not torch.equal(toy.linear.weight.data, converted.tensors["linear.weight"])


# --------------------------------------------------------------------------- reading


def test_resolve_checkpoint_rejects_names_that_are_neither_paths_nor_hub_ids(
    tmp_path: Path,
) -> None:
    for name in (str(tmp_path / "missing" / "x"), "weights.safetensors", "bad name!"):
        with pytest.raises(
            FileNotFoundError,
            match=r"nor a Hugging Face Hub repository id "
            r"like 'org/example'",
        ):
            resolve_checkpoint(name, example_repo="org/example")
    assert resolve_checkpoint(tmp_path, example_repo="org/example") == tmp_path


@pytest.mark.parametrize("offline", [True, False])
def test_resolve_checkpoint_explains_a_failed_download(
    monkeypatch: pytest.MonkeyPatch, offline: bool
) -> None:
    def unavailable(repo_id: str, allow_patterns: list[str]) -> str:
        assert not any(p.endswith((".bin", ".pt", ".pth")) for p in allow_patterns)
        raise LocalEntryNotFoundError("no cached snapshot")

    monkeypatch.setattr(loading, "snapshot_download", unavailable)
    monkeypatch.setattr(loading.hub_constants, "HF_HUB_OFFLINE", offline)
    reason = "HF_HUB_OFFLINE is set" if offline else "LocalEntryNotFoundError: no cached snapshot"
    with pytest.raises(CheckpointUnavailableError, match=re.escape(f"failed ({reason})")):
        resolve_checkpoint("org/absent", example_repo="org/example")


def test_read_state_dict_file_unwraps_and_refuses(tmp_path: Path) -> None:
    weight = _tensor(2)
    wrapped = tmp_path / "train.pth"
    torch.save({"epoch": 3, "model": {"w": weight}}, wrapped)
    torch.testing.assert_close(read_state_dict_file(wrapped)["w"], weight)

    odd = tmp_path / "w.ckpt"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported checkpoint suffix '\.ckpt'"):
        read_state_dict_file(odd)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict_file(tmp_path / "absent.pt")
    not_dict = tmp_path / "list.pt"
    torch.save([weight], not_dict)
    with pytest.raises(ValueError, match=r"holds a list, expected a state dict"):
        read_state_dict_file(not_dict)


def test_tensor_dict_names_bad_entries() -> None:
    with pytest.raises(ValueError, match=r"sd: a state dict maps str keys.*\[\"'b'\", '3'\]"):
        tensor_dict({"a": _tensor(1), "b": 1.0, 3: _tensor(1)}, "sd")


def test_read_hf_weights_reads_shards_and_explains_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        read_hf_weights(tmp_path)
    save_file({"a": _tensor(1)}, tmp_path / "s1.safetensors")
    save_file({"b": _tensor(2)}, tmp_path / "s2.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    assert set(read_hf_weights(tmp_path)) == {"a", "b"}
    index.write_text("[]")
    with pytest.raises(ValueError, match="is not a safetensors shard index"):
        read_hf_weights(tmp_path)


def test_read_checkpoint_reads_the_config_before_the_weights(tmp_path: Path) -> None:
    def refuse(folder: Path) -> None:
        raise ValueError(f"{folder}: wrong architecture")

    # The folder has no weights: the config check must be what fails.
    with pytest.raises(ValueError, match="wrong architecture"):
        read_checkpoint(tmp_path, example_repo="org/example", read_config=refuse)

    save_file({"a": _tensor(1)}, tmp_path / "model.safetensors")
    state, config, description = read_checkpoint(
        tmp_path, example_repo="org/example", read_config=lambda folder: "config"
    )
    assert set(state) == {"a"} and config == "config" and description == str(tmp_path)
    state, config, description = read_checkpoint(
        tmp_path / "model.safetensors", example_repo="org/example", read_config=refuse
    )
    assert set(state) == {"a"} and config is None
    with pytest.raises(ValueError, match="source must be a path.*got int"):
        read_checkpoint(3, example_repo="org/example", read_config=refuse)  # type: ignore[arg-type]
