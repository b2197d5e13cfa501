"""ONNX export of the five architectures (tiny configs): parity with PyTorch, dynamic batch,
preprocessing metadata, and the ``reid-transformers export`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from reid_transformers.deployment.export import (  # noqa: E402
    compare_with_onnxruntime,
    default_processor,
    export_onnx,
    metadata_path_for,
    quantize_onnx,
    read_onnx_metadata,
)
from reid_transformers.models import (  # noqa: E402
    AAformerConfig,
    AAformerModel,
    HATConfig,
    HATModel,
    LATransformerConfig,
    LATransformerModel,
    PANConfig,
    PANModel,
    PRCTConfig,
    PRCTModel,
)

from .test_aaformer import TINY as AAFORMER_TINY  # noqa: E402
from .test_cli import run  # noqa: E402
from .test_hat import TINY as HAT_TINY  # noqa: E402
from .test_la_transformer import TINY as LA_TINY  # noqa: E402
from .test_pan import TINY as PAN_TINY  # noqa: E402
from .test_prct import TINY as PRCT_TINY  # noqa: E402

SMALL_TRUNK = {"depths": [1, 1, 1, 1], "layer_type": "basic", "hidden_sizes": [16, 32, 64, 128]}

ARCHITECTURES = {
    "la_transformer": (LATransformerConfig, LATransformerModel, LA_TINY),
    "aaformer": (AAformerConfig, AAformerModel, AAFORMER_TINY),
    "pan": (PANConfig, PANModel, {**PAN_TINY, **SMALL_TRUNK}),
    "hat": (HATConfig, HATModel, {**HAT_TINY, **SMALL_TRUNK}),
    "prct": (PRCTConfig, PRCTModel, {**PRCT_TINY, **SMALL_TRUNK}),
}
PARAMS = list(ARCHITECTURES)


def tiny_model(name: str):
    config_class, model_class, settings = ARCHITECTURES[name]
    torch.manual_seed(0)
    return model_class(config_class(**settings)).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export per architecture, shared by the tests that only read it."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            model = tiny_model(name)
            with torch.no_grad():
                probe = torch.randn(3, 3, *model.config.image_size)
                before = model(pixel_values=probe).embeddings
            folder = tmp_path_factory.mktemp(name)
            done[name] = (model, export_onnx(model, folder / f"{name}.onnx"), probe, before)
        return done[name]

    return get


@pytest.mark.parametrize("name", PARAMS)
def test_onnxruntime_matches_pytorch_at_batch_1_7_and_32(exports, name):
    model, result, _, _ = exports(name)
    parity = compare_with_onnxruntime(model, result.path, (1, 7, 32))
    assert set(parity.max_abs_diff) == {1, 7, 32}
    assert parity.within(atol=1e-4, min_cosine=0.99999), parity


@pytest.mark.parametrize("name", PARAMS)
def test_graph_has_named_io_a_dynamic_batch_and_checks(exports, name):
    model, result, _, _ = exports(name)
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert graph_input.name == "pixel_values" and graph_output.name == "embeddings"
    input_dims = graph_input.type.tensor_type.shape.dim
    output_dims = graph_output.type.tensor_type.shape.dim
    # The batch is a symbol, every other size a fixed number.
    assert input_dims[0].dim_param and not input_dims[0].HasField("dim_value")
    assert [d.dim_value for d in input_dims[1:]] == [3, *model.config.image_size]
    assert output_dims[0].dim_param == input_dims[0].dim_param
    assert output_dims[1].dim_value == result.metadata["embedding_dim"]


@pytest.mark.parametrize("name", PARAMS)
def test_export_leaves_the_pytorch_model_as_it_was(exports, name):
    model, _, probe, before = exports(name)
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=probe).embeddings, before)


def test_metadata_is_the_processors_in_onnx_and_json(exports):
    model, result, _, _ = exports("pan")
    processor = default_processor(model)
    stored = read_onnx_metadata(result.path)
    assert stored == result.metadata
    assert json.loads(metadata_path_for(result.path).read_text()) == stored
    assert result.metadata_path == result.path.with_suffix(".json")
    assert stored["architecture"] == "pan"
    assert stored["input_size"] == list(model.config.image_size)
    assert stored["image_mean"] == pytest.approx(list(processor.image_mean))
    assert stored["image_std"] == pytest.approx(list(processor.image_std))
    assert stored["rescale_factor"] == pytest.approx(1 / 255)
    assert stored["resample"] == "bilinear"
    assert stored["color_order"] == "RGB" and stored["layout"] == "NCHW"
    assert stored["distance"] == "cosine"
    assert stored["exporter"] == result.exporter
    assert stored["quantization"] == "none"


INTEGER_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_export_is_quantised_recorded_and_close_to_pytorch(tmp_path):
    model = tiny_model("pan")
    result = export_onnx(model, tmp_path / "pan.int8.onnx", quantize="int8")
    assert result.metadata["quantization"] == "int8"
    assert read_onnx_metadata(result.path) == result.metadata
    assert json.loads(result.metadata_path.read_text()) == result.metadata
    # Convolutions and linear layers hold int8 weights; no float convolution is left.
    assert INTEGER_OPS <= op_types(result.path)
    assert "Conv" not in op_types(result.path)
    parity = compare_with_onnxruntime(model, result.path, (1, 7))
    # Quantisation moves embeddings, but only a little: far from float32 parity, close in angle.
    assert not parity.within(atol=1e-4, min_cosine=0.99999)
    assert min(parity.min_cosine.values()) >= 0.99, parity


def test_quantize_onnx_turns_an_export_into_its_int8_version(exports, tmp_path):
    model, result, _, _ = exports("la_transformer")
    quantized = quantize_onnx(result.path, tmp_path / "la.int8.onnx")
    assert quantized.metadata == {**result.metadata, "quantization": "int8"}
    assert read_onnx_metadata(quantized.path) == quantized.metadata
    # Weight products become integer ones; attention's activation products stay float.
    assert "MatMulInteger" in op_types(quantized.path) - op_types(result.path)
    assert min(compare_with_onnxruntime(model, quantized.path, (3,)).min_cosine.values()) >= 0.99
    with pytest.raises(ValueError, match="is quantised already \\(int8\\); expected a float32"):
        quantize_onnx(quantized.path, tmp_path / "twice.onnx")
    with pytest.raises(ValueError, match=r"must end in \.onnx, got .*la\.int8"):
        quantize_onnx(result.path, tmp_path / "la.int8")
    assert not (tmp_path / "twice.onnx").exists()


def test_export_rejects_bad_arguments(tmp_path):
    model = tiny_model("pan")
    with pytest.raises(ValueError, match=r"must end in \.onnx, got .*model\.pt"):
        export_onnx(model, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="example_batch_size must be an int >= 2, got 1"):
        export_onnx(model, tmp_path / "model.onnx", example_batch_size=1)
    with pytest.raises(TypeError, match="got int"):
        export_onnx(3, tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=r"quantize must be None or one of .*int8.*got 'int4'"):
        export_onnx(model, tmp_path / "model.onnx", quantize="int4")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_onnx_metadata(tmp_path / "missing.onnx")


# ---------------------------------------------------------------------- command line


def test_export_command_writes_a_matching_model_and_its_metadata(tmp_path, capsys):
    model = tiny_model("pan")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    default_processor(model).save_pretrained(folder)
    output = tmp_path / "out" / "pan.onnx"
    code, out, err = run(capsys, "export", "--model", folder, "--output", output)
    assert code == 0, err
    assert f"Wrote {output} (pan, input (B, 3, 64, 32), embeddings (B, 96)" in out
    assert "onnxruntime vs PyTorch, batch 7: max abs difference" in out
    assert read_onnx_metadata(output)["architecture"] == "pan"
    assert output.with_suffix(".json").is_file()
    session_inputs = np.random.default_rng(0).standard_normal((2, 3, 64, 32), np.float32)
    import onnxruntime

    got = onnxruntime.InferenceSession(str(output)).run(None, {"pixel_values": session_inputs})
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(session_inputs)).embeddings.numpy()
    np.testing.assert_allclose(got[0], expected, atol=1e-4)

    # An existing output is kept unless --overwrite.
    code, _, err = run(capsys, "export", "--model", folder, "--output", output)
    assert code == 2 and "already exists; add --overwrite" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    # So is an unrelated JSON file of the metadata's name.
    other = tmp_path / "other.onnx"
    other.with_suffix(".json").write_text("{}")
    code, _, err = run(capsys, "export", "--model", folder, "--output", other)
    assert code == 2 and "other.json already exists" in err and not other.exists()


def test_export_command_quantize_int8_writes_an_int8_model_despite_strict_parity(
    tmp_path, capsys
):
    model = tiny_model("pan")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    default_processor(model).save_pretrained(folder)
    output = tmp_path / "pan-int8.onnx"
    # A tolerance no int8 graph meets is not an error with --quantize: the figures are printed.
    code, out, err = run(
        capsys, "export", "--model", folder, "--output", output, "--quantize", "int8",
        "--atol", "1e-9",
    )
    assert code == 0, err
    assert "onnxruntime vs PyTorch, batch 7: max abs difference" in out
    assert read_onnx_metadata(output)["quantization"] == "int8"
    code, _, err = run(capsys, "export", "--model", folder, "--output", tmp_path / "x.onnx",
                       "--quantize", "int4")
    assert code == 2 and "invalid choice: 'int4'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--model", "{missing}", "--output", "m.onnx"), "does not exist"),
        (("--model", "{missing}", "--output", "m.pt"), "--output must end in .onnx, got m.pt"),
    ],
)
def test_export_command_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = [arg.format(missing=tmp_path / "no" / "such") for arg in argv]
    code, _, err = run(capsys, "export", *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not Path("m.onnx").exists()
