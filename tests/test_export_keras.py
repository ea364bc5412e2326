"""Keras export and serving: SavedModel served in a fresh process, TFLite at a fixed batch.

A model with a learned (or noisy) initial state is exported with ``model.export`` and
loaded with ``tf.saved_model.load`` in a new Python process that never imports this
package; the TFLite converter takes it at a fixed batch (it refuses a dynamic batch
for a bare Keras GRU too) and the TFLite interpreter runs it.
"""

import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from reference_impl import tensorflow as ri

STRATEGIES = {
    "learnable": {"init": "uniform", "seed": 3},
    "noisy": {"base": "learnable", "noise_std": 0.3, "seed": 4},
}
LAYERS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}
TOL = 1e-5


def build(cell: str, strategy: str, batch_size: int | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 3), batch_size=batch_size)
    wrapped = ri.InitialStateRNN(
        LAYERS[cell](8, return_sequences=True), strategy=strategy, **STRATEGIES[strategy]
    )
    return keras.Model(inp, keras.layers.Dense(1)(wrapped(inp)))


def data(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 6, 3)).astype("float32")


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("cell", list(LAYERS))
def test_saved_model_serves_in_a_fresh_process(cell, strategy, tmp_path):
    model = build(cell, strategy)
    xs = {b: data(b, b) for b in (1, 7)}
    for b, x in xs.items():
        np.save(tmp_path / f"x{b}.npy", x)
        np.save(tmp_path / f"ref{b}.npy", model.predict(x, verbose=0))
    model.export(str(tmp_path / "served"), verbose=False)
    script = textwrap.dedent(
        f"""
        import os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load({str(tmp_path / "served")!r})
        for b in (1, 7):
            x = np.load({str(tmp_path)!r} + f"/x{{b}}.npy")
            ref = np.load({str(tmp_path)!r} + f"/ref{{b}}.npy")
            print(b, float(np.abs(served.serve(x).numpy() - ref).max()))
        print("package imported:", "reference_impl" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    ).stdout.splitlines()
    diffs = {int(line.split()[0]): float(line.split()[1]) for line in out[:2]}
    assert set(diffs) == {1, 7}  # one exported model, two batch sizes
    assert max(diffs.values()) <= TOL
    assert out[2] == "package imported: False"


@pytest.mark.parametrize(("cell", "strategy"), [("gru", "learnable"), ("lstm", "noisy")])
def test_tflite_at_a_fixed_batch(cell, strategy):
    model = build(cell, strategy, batch_size=4)
    x = data(4, 0)
    ref = model.predict(x, verbose=0)
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's move to LiteRT
        interpreter = tf.lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == (4, 6, 3)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    assert float(np.abs(interpreter.get_tensor(out["index"]) - ref).max()) <= TOL
