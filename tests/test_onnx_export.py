"""ONNX export (``facezoo.export.export_onnx``, ``facezoo export onnx``) checked under onnxruntime."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install 'facezoo[test]')")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript (pip install 'facezoo[test]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install 'facezoo[test]')")

import onnx  # noqa: E402
from hub_helpers import calibrate, small_model  # noqa: E402

from facezoo.cli import main  # noqa: E402
from facezoo.errors import ConfigError  # noqa: E402
from facezoo.export import MissingDependencyError, export_onnx  # noqa: E402
from facezoo.layers import gaussian_kernel  # noqa: E402
from facezoo.models import create_model  # noqa: E402


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"input": x.numpy()})[0]


def _assert_matches_torch(path, model, size=(112, 112)):
    """onnxruntime == torch at batch 1 and 3 (float32 tolerance on O(1) embeddings)."""
    for batch in (1, 3):
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            want = model(x).numpy()
        got = _run(path, x)
        assert got.shape == want.shape == (batch, 512)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def _graph_io(path):
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    return graph, inp, out


@pytest.mark.parametrize(
    "name, input_size",
    [
        ("iresnet18_gdc", None),
        ("iresnet18_gwp", None),
        ("iresnet18_gap_k7", (128, 96)),
    ],
)
def test_every_head_matches_torch_under_onnxruntime(tmp_path, name, input_size):
    """GDC, GWP, GAP here; the flatten head is the AdaFace checkpoint's, below (each export takes seconds)."""
    model = calibrate(small_model(name)).train()
    size = input_size or (112, 112)
    info = export_onnx(model, tmp_path / "model.onnx", input_size=input_size)  # exported (and compared) in eval mode
    assert model.training  # the caller's mode is restored
    model.eval()
    assert info["input_size"] == size and info["onnxruntime"] == ort.__version__ and info["batch"] == 3
    assert info["max_abs_diff"] < 1e-3 and info["max_abs_output"] > 0.1
    graph, inp, out = _graph_io(tmp_path / "model.onnx")
    assert inp.name == "input" and out.name == "embedding"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, *size]  # symbolic batch axis
    assert out.type.tensor_type.shape.dim[0].dim_param == dims[0].dim_param
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    if name == "iresnet18_gwp":  # the Gaussian is a constant inside the graph
        kernel = (gaussian_kernel(7) / 49).reshape(-1).numpy()
        constants = [onnx.numpy_helper.to_array(t).reshape(-1) for t in graph.initializer]
        assert any(c.shape == kernel.shape and np.allclose(c, kernel, rtol=1e-6) for c in constants)
    _assert_matches_torch(tmp_path / "model.onnx", model, size)


def test_cli_exports_an_adaface_layout_checkpoint(tmp_path, capsys):
    """The flatten head, through ``facezoo export onnx`` with an AdaFace IR-18 Lightning checkpoint."""
    from test_models_adaface import _lightning_ckpt, _reference  # AdaFace's own IR-18 code, in the tests

    ckpt = tmp_path / "adaface_ir18.ckpt"
    torch.save(_lightning_ckpt(_reference()), ckpt)
    rc = main(
        [
            "export",
            "onnx",
            "iresnet18",
            "--layout",
            "adaface",
            "--checkpoint",
            str(ckpt),
            "--output",
            str(tmp_path / "adaface.onnx"),
            "--opset",
            "18",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "opset 18" in out and "dynamic batch" in out
    diff, largest = map(float, re.search(r"max abs diff (\S+) \(largest output (\S+)\)", out).groups())
    assert diff < 1e-4 * max(1.0, largest)
    assert onnx.load(str(tmp_path / "adaface.onnx")).opset_import[0].version == 18
    model = create_model("iresnet18", checkpoint=ckpt, layout="adaface").eval()
    _assert_matches_torch(tmp_path / "adaface.onnx", model)


def test_fixed_size_head_refuses_another_input_size(tmp_path):
    with pytest.raises(ConfigError, match=r"input_size 128x128: iresnet18 needs 112x112 input"):
        export_onnx(small_model("iresnet18"), tmp_path / "m.onnx", input_size=(128, 128))
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'facezoo\[onnx\]'"):
        export_onnx(small_model("iresnet18_gwp"), tmp_path / "m.onnx")
    assert main(["export", "onnx", "iresnet18_gwp", "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'facezoo[onnx]'" in err[0]
    assert not (tmp_path / "m.onnx").exists()
