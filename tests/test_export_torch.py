"""PyTorch export and serving with a dynamic batch: torch.export, ONNX in onnxruntime, tracing.

A bare ``nn.GRU``/``nn.LSTM`` exports with a dynamic batch; the wrapped one must too.
Each path is exported at one batch size and run at another, against the eager model.
"""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from reference_impl import torch as ri

# strategies that are deterministic in eval mode (noisy: the base state in eval)
EVAL_DETERMINISTIC = {
    "zero": {},
    "uniform": {"resample": False, "seed": 1},
    "xavier": {"resample": False, "seed": 2},
    "learnable": {"init": "uniform", "seed": 3},
    "noisy": {"base": "learnable", "noise_std": 0.3, "seed": 4},
}
LAYERS = {"gru": nn.GRU, "lstm": nn.LSTM}
TOL = 1e-5


def model(cell: str, strategy: str) -> nn.Module:
    torch.manual_seed(0)
    layer = LAYERS[cell](3, 8, num_layers=2, batch_first=True)
    wrapped = ri.InitialStateRNN(layer, strategy=strategy, **EVAL_DETERMINISTIC[strategy])
    if strategy == "learnable":  # a learned state that is not the zero default
        with torch.no_grad():
            for p in wrapped.initial_state.parameters():
                p.add_(0.5)
    return wrapped.eval()


def inputs(batch: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 5, 3)).astype("f4"))


def max_diff(out, ref) -> float:
    return float((out[0] - ref[0]).abs().max())


@pytest.mark.parametrize("strategy", list(EVAL_DETERMINISTIC))
@pytest.mark.parametrize("cell", list(LAYERS))
def test_torch_export_with_dynamic_batch(cell, strategy):
    check_export(cell, strategy, strict=False)


@pytest.mark.parametrize("strategy", ["learnable", "noisy"])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_torch_export_strict_with_dynamic_batch(cell, strategy):
    check_export(cell, strategy, strict=True)


def check_export(cell, strategy, strict):
    m = model(cell, strategy)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        m, (inputs(4, 0),), dynamic_shapes={"x": {0: batch}}, strict=strict
    )
    for b in (1, 9):
        x = inputs(b, b)
        with torch.no_grad():
            assert max_diff(program.module()(x), m(x)) <= TOL


@pytest.mark.parametrize("strategy", list(EVAL_DETERMINISTIC))
@pytest.mark.parametrize("cell", list(LAYERS))
def test_jit_trace_at_one_batch_runs_at_another(cell, strategy):
    m = model(cell, strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, (inputs(4, 0),))
    for b in (1, 9):
        x = inputs(b, b)
        out = traced(x)
        with torch.no_grad():
            assert out[0].shape == (b, 5, 8)
            assert max_diff(out, m(x)) <= TOL


@pytest.mark.parametrize(("cell", "strategy"), [("gru", "learnable"), ("lstm", "noisy")])
def test_onnx_dynamo_export_serves_any_batch_in_onnxruntime(cell, strategy, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = model(cell, strategy)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            m, (inputs(4, 0),), dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False
        )
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for b in (1, 9):  # one exported file, several batch sizes
        x = inputs(b, b)
        served = session.run(None, {name: x.numpy()})[0]
        with torch.no_grad():
            assert served.shape == (b, 5, 8)
            assert float(np.abs(served - m(x)[0].numpy()).max()) <= TOL


def test_batch_size_validation_still_rejects_bad_python_input():
    init = ri.InitialState("learnable", hidden_size=4)
    with pytest.raises(TypeError, match="batch_size must be an integer; got 2.5"):
        init.init(2.5)
    with pytest.raises(ValueError, match="batch_size must be a non-negative integer; got -1"):
        init.init(-1)
    assert init.init(0).shape == (1, 0, 4)  # an empty batch, as nn.GRU runs it
    with pytest.raises(TypeError, match="batch_size must be an integer; got True"):
        init.init(True)
    # a tensor is a size only while tracing or exporting; eagerly it is refused
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        init.init(torch.tensor(3))
    assert init.init(np.int64(3)).shape == (1, 3, 4)
