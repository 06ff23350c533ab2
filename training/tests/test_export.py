import tomllib

import numpy as np
import onnx
import pytest
import torch

import train
from fmnist import data, export
from fmnist.model import CNN


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = CNN(widths=(4, 8, 8), depth=1).eval()
    # Non-trivial BN statistics, so the folding done by the exporter is exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    export.export_onnx(model, path)
    return model, path


def test_export_signature_and_checker(tiny):
    _, path = tiny
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == export.OPSET
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "image" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # No exporter stack traces (they hold absolute paths of the exporting machine).
    assert not any(n.metadata_props for n in m.graph.node)
    assert not m.graph.metadata_props
    blob = open(path, "rb").read()
    assert b"stack_trace" not in blob and b"pkg.torch" not in blob


def test_onnxruntime_agrees_with_torch(tiny):
    model, path = tiny
    x = torch.randn(37, 1, 28, 28).numpy()
    labels = np.zeros(37, dtype=np.int64)
    check = export.check_against_torch(path, model, x, labels)
    assert check["max_abs_logit_diff"] <= 1e-4
    sess = export.session(path)
    for n in (1, 3):   # dynamic batch
        assert export.ort_logits(sess, x[:n]).shape == (n, 10)


def test_check_fails_on_a_different_model(tiny):
    model, path = tiny
    other = CNN(widths=(4, 8, 8), depth=1).eval()
    with pytest.raises(export.ExportCheckError, match="logit difference"):
        export.check_against_torch(path, other, torch.randn(8, 1, 28, 28).numpy(), np.zeros(8, dtype=np.int64))


def test_manifest_has_exactly_the_schema(tmp_path):
    p = tmp_path / "model.toml"
    train.write_model_toml(p, "ab" * 32, 1.2345, 0.55, 0.1, "1")
    t = tomllib.loads(p.read_text())
    assert set(t) == {"name", "version", "onnx_file", "sha256", "preprocessing", "labels",
                      "input", "output", "calibration", "review"}
    assert t["labels"] == data.LABELS
    assert t["input"] == {"name": "image", "shape": [1, 28, 28], "mean": 0.286, "std": 0.353}
    assert t["output"] == {"name": "logits"}
    assert t["calibration"] == {"temperature": 1.2345}
    assert t["review"] == {"min_confidence": 0.55, "min_margin": 0.1, "min_confidence_per_class": {}}
    assert p.read_text().startswith("# written by training/train.py; do not edit by hand\n")


def test_fixture_png_round_trip(tmp_path):
    img = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    train.write_png_gray(tmp_path / "a.png", img)
    np.testing.assert_array_equal(train.read_png_gray(tmp_path / "a.png"), img)
