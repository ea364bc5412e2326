"""Overhead of reference_impl.tensorflow against the bare Keras layer, on CPU.

Times ``InitialStateRNN(GRU)`` for every strategy, and ``RNN(NoisyCell(GRUCell))``,
against a bare ``GRU`` started from Keras's zero state: forward, and forward plus
backward (gradients of every trainable weight), each compiled with ``tf.function``.
All variants share the same GRU weights and inputs and are timed interleaved, in a
shuffled order each round, so that a change of machine load hits them all alike; a
second bare GRU ("bare (control)") shows how large the measurement noise is.

Run: ``python benchmarks/bench_tensorflow.py`` (``--reps`` for more rounds).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from reference_impl import STRATEGIES  # noqa: E402
from reference_impl import tensorflow as ri  # noqa: E402

BATCH, STEPS, FEATURES, UNITS = 64, 100, 32, 128
TARGET = 1.03


def make_variants() -> dict[str, keras.layers.Layer]:
    """The layers to time, each built and holding the same GRU weights."""
    x = np.zeros((BATCH, STEPS, FEATURES), "float32")

    def gru() -> keras.layers.GRU:
        return keras.layers.GRU(UNITS, return_sequences=True)

    variants: dict[str, keras.layers.Layer] = {"bare": gru(), "bare (control)": gru()}
    for strategy in STRATEGIES:
        seed = {} if strategy == "zero" else {"seed": 0}
        variants[strategy] = ri.InitialStateRNN(gru(), strategy, **seed)
    noisy_cell = ri.NoisyCell(keras.layers.GRUCell(UNITS), noise_std=0.1, seed=0)
    variants["NoisyCell in RNN"] = keras.layers.RNN(noisy_cell, return_sequences=True)
    for layer in variants.values():
        layer(x)  # build
    weights = variants["bare"].get_weights()
    variants["bare (control)"].set_weights(weights)
    for strategy in STRATEGIES:
        variants[strategy].layer.set_weights(weights)
    noisy_cell.cell.set_weights(weights)
    return variants


def compile_steps(layer: keras.layers.Layer) -> dict[str, tf.types.experimental.Function]:
    @tf.function
    def forward(x):
        return tf.reduce_mean(layer(x, training=True) ** 2)

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer(x, training=True) ** 2)
        grads = tape.gradient(loss, layer.trainable_weights)
        return loss, grads

    return {"forward": forward, "fwd+bwd": forward_backward}


def run(reps: int, warmup: int) -> None:
    tf.config.set_visible_devices([], "GPU")  # CPU timings, also on a GPU machine
    # Each step function is traced once; TF's "retracing" warning counts them all.
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).normal(size=(BATCH, STEPS, FEATURES)), tf.float32)
    variants = make_variants()
    steps = {name: compile_steps(layer) for name, layer in variants.items()}
    modes = ("forward", "fwd+bwd")

    def once(name: str, mode: str) -> float:
        start = time.perf_counter()
        out = steps[name][mode](x)
        # Fetch a result so the time covers the whole computation.
        (out[0] if isinstance(out, tuple) else out).numpy()
        return time.perf_counter() - start

    for name in variants:
        for mode in modes:
            for _ in range(warmup):
                once(name, mode)

    times = {(n, m): [] for n in variants for m in modes}
    order = [(n, m) for n in variants for m in modes]
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for name, mode in order:
            times[(name, mode)].append(once(name, mode))

    print(
        f"Keras {keras.__version__} / TensorFlow {tf.__version__}, CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores); "
        f"GRU({UNITS}), batch {BATCH}, {STEPS} steps, {FEATURES} features; "
        f"{reps} interleaved rounds, medians"
    )
    header = f"{'variant':<18}" + "".join(
        f"{m + ' ms':>13}{'ratio':>8}{'paired':>8}" for m in modes
    )
    print(header)
    print("-" * len(header))
    misses = []
    for name in variants:
        row = f"{name:<18}"
        for mode in modes:
            t = times[(name, mode)]
            base = times[("bare", mode)]
            ratio = statistics.median(t) / statistics.median(base)
            # The median of the round-by-round ratios is less sensitive to drifts in load.
            paired = statistics.median(a / b for a, b in zip(t, base, strict=True))
            row += f"{1e3 * statistics.median(t):>13.2f}{ratio:>8.3f}{paired:>8.3f}"
            if name in STRATEGIES and paired > TARGET:
                misses.append(f"{name} {mode} {paired:.3f}")
        print(row)
    print(
        f"\nratio: median time / median time of the bare GRU; paired: median over rounds "
        f"of the same ratio. Target for InitialStateRNN strategies: <= {TARGET}."
    )
    print("misses: " + (", ".join(misses) if misses else "none"))
    control = statistics.median(
        a / b
        for a, b in zip(
            times[("bare (control)", "fwd+bwd")], times[("bare", "fwd+bwd")], strict=True
        )
    )
    print(f"noise floor: the control's paired ratio to an identical GRU is {control:.3f}")
    parts(x, statistics.median(times[("bare", "fwd+bwd")]))


def median_time(fn: tf.types.experimental.Function, arg: tf.Tensor, reps: int = 200) -> float:
    for _ in range(5):
        fn(arg)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn(arg)
        for t in tf.nest.flatten(out):
            if t is not None:
                t.numpy()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def parts(x: tf.Tensor, bare_fwd_bwd: float) -> None:
    """What the ratios are made of: each part timed alone."""
    print("\nparts, each alone (tf.function, median; includes ~0.2 ms of call overhead):")
    for strategy in STRATEGIES:
        init = ri.InitialState(strategy, units=UNITS, **({} if strategy == "zero" else {"seed": 0}))

        @tf.function
        def state_fwd_bwd(x, init=init):
            with tf.GradientTape() as tape:
                tape.watch(x)
                (h,) = init(x, training=True)
                loss = tf.reduce_sum(h)
            return tape.gradient(loss, init.trainable_weights or [x])

        t = median_time(state_fwd_bwd, x)
        print(f"  initial state {strategy:<10} fwd+bwd {1e6 * t:8.1f} us")
    draws = tf.function(
        lambda s: tf.reduce_sum(tf.random.stateless_normal((STEPS, BATCH, UNITS), seed=s))
    )
    t = median_time(draws, tf.constant([1, 2]), reps=30)
    print(
        f"  {STEPS} x ({BATCH}, {UNITS}) Gaussian draws, what NoisyCell adds per call: "
        f"{1e3 * t:.2f} ms = {t / bare_fwd_bwd:.0%} of the bare GRU's fwd+bwd"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", "--reps", dest="reps", type=int, default=60, help="interleaved rounds"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant")
    args = parser.parse_args()
    run(args.reps, args.warmup)


if __name__ == "__main__":
    main()
