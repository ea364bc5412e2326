"""Overhead of reference_impl.tensorflow against the bare Keras layer, on CPU.

Times ``InitialStateRNN(GRU)`` for every strategy, and ``RNN(NoisyCell(GRUCell))``,
against a bare ``GRU`` started from Keras's zero state: forward, and forward plus
backward (gradients of every trainable weight), each compiled with ``tf.function``.
All variants share the same GRU weights and inputs and are timed interleaved, in a
shuffled order each round, so that a change of machine load hits them all alike; a
second bare GRU ("bare (control)") shows how large the measurement noise is, and the
per-step Gaussian draws alone (what a bare ``RNN(NoisyCell)`` adds) are timed beside
them. The ``noisy_cell`` table times per-step noise in training (forward plus
backward): ``RNN(GRUCell)``, ``InitialStateRNN(RNN(NoisyCell(GRUCell)), "zero")``
(noise of all steps drawn before the loop) and the version often copied from the web,
an eager Python loop over a ``GRUCell`` adding ``keras.random.normal`` noise to the
state each step under ``tf.GradientTape``. Every round is written, with the machine
and the versions, to ``results/bench-tensorflow.csv``; a summary is printed.

Run: ``python benchmarks/bench_tensorflow.py [--rounds N] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from reference_impl import STRATEGIES, benchmarking  # noqa: E402
from reference_impl import tensorflow as ri  # noqa: E402

BATCH, STEPS, FEATURES, UNITS = 64, 100, 32, 128
BASE = "bare GRU"
NOISY = "NoisyCell in RNN"
DRAWS = "per-step draws alone"
CELL, PREDRAWN, WEB = "RNN(GRUCell)", "NoisyCell, pre-drawn", "eager loop, web-style"
MODES = ("forward", "fwd+bwd")
OUT = Path(__file__).resolve().parent.parent / "results" / "bench-tensorflow.csv"


def make_variants() -> dict[str, keras.layers.Layer]:
    """The layers to time, each built and holding the same GRU weights."""
    x = np.zeros((BATCH, STEPS, FEATURES), "float32")

    def gru() -> keras.layers.GRU:
        return keras.layers.GRU(UNITS, return_sequences=True)

    variants: dict[str, keras.layers.Layer] = {BASE: gru(), "bare (control)": gru()}
    for strategy in STRATEGIES:
        seed = {} if strategy == "zero" else {"seed": 0}
        variants[strategy] = ri.InitialStateRNN(gru(), strategy, **seed)
    cells = [keras.layers.GRUCell(UNITS) for _ in range(3)]
    noisy_cell = ri.NoisyCell(cells[0], noise_std=0.1, seed=0)
    variants[NOISY] = keras.layers.RNN(noisy_cell, return_sequences=True)
    variants[CELL] = keras.layers.RNN(cells[1], return_sequences=True)
    predrawn = ri.NoisyCell(cells[2], noise_std=0.1, seed=0)
    rnn = keras.layers.RNN(predrawn, return_sequences=True)
    variants[PREDRAWN] = ri.InitialStateRNN(rnn, "zero")
    for layer in variants.values():
        layer(x)  # build
    weights = variants[BASE].get_weights()
    variants["bare (control)"].set_weights(weights)
    for strategy in STRATEGIES:
        variants[strategy].layer.set_weights(weights)
    for cell in cells:
        cell.set_weights(weights)
    return variants


def web_style_step(x: tf.Tensor) -> object:
    """Per-step noise as often copied: an eager loop over a cell under a GradientTape."""
    cell = keras.layers.GRUCell(UNITS)
    cell.build((BATCH, FEATURES))

    def step() -> object:
        with tf.GradientTape() as tape:
            h, outputs = tf.zeros((BATCH, UNITS)), []
            for t in range(STEPS):
                h = h + keras.random.normal((BATCH, UNITS), stddev=0.1)
                out, (h,) = cell(x[:, t], [h], training=True)
                outputs.append(out)
            loss = tf.reduce_mean(tf.stack(outputs, axis=1) ** 2)
        tape.gradient(loss, cell.trainable_weights)
        return loss.numpy()

    return cell, step


def compile_steps(layer: keras.layers.Layer, x: tf.Tensor) -> dict[str, object]:
    @tf.function
    def forward(x):
        return tf.reduce_mean(layer(x, training=True) ** 2)

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer(x, training=True) ** 2)
        grads = tape.gradient(loss, layer.trainable_weights)
        return loss, grads

    # Fetch a result so the time covers the whole computation.
    return {
        "forward": lambda: forward(x).numpy(),
        "fwd+bwd": lambda: forward_backward(x)[0].numpy(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, help="default results/bench-tensorflow[-gpu].csv")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    if args.device == "cpu":
        tf.config.set_visible_devices([], "GPU")  # CPU timings, also on a GPU machine
    elif not gpus:
        parser.error("--device gpu: TensorFlow sees no GPU")
    args.out = args.out or (OUT if args.device == "cpu" else OUT.with_name(f"{OUT.stem}-gpu.csv"))
    # Each step function is traced once; TF's "retracing" warning counts them all.
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).normal(size=(BATCH, STEPS, FEATURES)), tf.float32)
    variants = make_variants()
    steps = {name: compile_steps(layer, x) for name, layer in variants.items()}
    web_cell, web_step = web_style_step(x)
    web_cell.set_weights(variants[BASE].get_weights())
    draws = tf.function(
        lambda s: tf.reduce_sum(tf.random.stateless_normal((STEPS, BATCH, UNITS), seed=s))
    )
    seed = tf.constant([1, 2])
    fns = {(name, mode): fn for name, by_mode in steps.items() for mode, fn in by_mode.items()}
    for name in (CELL, PREDRAWN):  # the noisy_cell table times training only
        del fns[(name, "forward")]
    fns[(DRAWS, "fwd+bwd")] = lambda: draws(seed).numpy()
    fns[(WEB, "fwd+bwd")] = web_step
    flat = benchmarking.interleaved_rounds(
        {f"{n}|{m}": fn for (n, m), fn in fns.items()}, args.rounds
    )

    tables, baselines = {}, {}
    for mode in MODES:
        names = [BASE, "bare (control)", *STRATEGIES]
        tables[("InitialStateRNN", mode)] = {n: flat[f"{n}|{mode}"] for n in names}
        names = [BASE, NOISY] + ([DRAWS] if mode == "fwd+bwd" else [])
        tables[("NoisyCell", mode)] = {n: flat[f"{n}|{mode}"] for n in names}
    names = [BASE, CELL, PREDRAWN, WEB]
    tables[("noisy_cell", "fwd+bwd")] = {n: flat[f"{n}|fwd+bwd"] for n in names}
    # The draws are one call for all steps: the floor of the pre-drawn version too.
    tables[("noisy_cell", "fwd+bwd")]["the draw alone"] = flat[f"{DRAWS}|fwd+bwd"]
    baselines = {key: BASE for key in tables}

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    gpu = ""
    if args.device == "gpu":
        gpu = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    prov = benchmarking.provenance(versions, device=args.device, gpu=gpu)
    shape = f"GRU {UNITS} units, batch {BATCH}, {STEPS} steps, {FEATURES} features"
    rows = benchmarking.write_results(args.out, "tensorflow", tables, baselines, prov, shape)
    where = f"{args.device} ({prov['cpu']}, GPU: {prov['gpu']})"
    print(f"Keras {keras.__version__} / TensorFlow {tf.__version__}, {where}: {shape}")
    print(f"tf.function steps, {args.rounds} interleaved rounds")
    for (table, mode), times in tables.items():
        print(f"\n{table}, {mode}")
        print("\n".join(benchmarking.summary(times, BASE)))
    print(f"{rows} rows written to {args.out}")


if __name__ == "__main__":
    main()
