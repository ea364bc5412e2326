"""One trial of the experiment grid in Keras 3 (TensorFlow backend): :func:`run_trial`.

The model is the package's :class:`reference_impl.tensorflow.InitialStateRNN` around a
``keras.layers.GRU`` or ``LSTM`` with ``hidden`` units, then a ``Dense(1)`` read-out at
every step; MSE loss, Adam, early stopping on the validation MSE. Sizes come from
:func:`reference_impl.experiments.common.budget_settings`, the batch order from
:func:`~reference_impl.experiments.common.epoch_batches`, so a trial here runs the same
experiment as the PyTorch and Flax trainers.

Speed: TensorFlow runs on one thread (set when this module is imported, unless the
process already started TensorFlow), the training step is one ``tf.function`` with
fixed shapes (a last partial batch is padded with rows of weight 0, so the loss and the
gradient are those of the partial batch), and one compiled model is kept per structure
(task shapes, cell, strategy, sizes) and reused: a new trial assigns its own
seed-determined initial weights, resets the optimizer and the strategy's variables, and
runs without tracing again.

Pairing: for one seed every strategy starts from the same recurrent and read-out
weights (``keras.utils.set_random_seed(seed)``, then the bare layer and the read-out
are built before the strategy wraps them) and sees the same batches.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import functools  # noqa: E402
import time  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _one_thread() -> None:
    # Must run before TensorFlow executes anything; later it raises RuntimeError and
    # the process keeps whatever it has.
    if os.environ.get("REFERENCE_IMPL_TF_THREADS", "1") != "1":
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


_one_thread()

import keras  # noqa: E402

from reference_impl import tensorflow as ri  # noqa: E402
from reference_impl.experiments import common  # noqa: E402

__all__ = ["run_trial"]

if keras.backend.backend() != "tensorflow":  # pragma: no cover - set by the environment
    raise ImportError(
        f"train_keras needs Keras's TensorFlow backend; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}"
    )


def _layer(cell: str, hidden: int) -> keras.layers.Layer:
    cls = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[cell]
    # return_state: the stateful variant carries the final state into the next chunk.
    return cls(hidden, return_sequences=True, return_state=True)


def _bare_weights(
    cell: str, hidden: int, seed: int, inputs: int = 1, outputs: int = 1
) -> list[np.ndarray]:
    """The recurrent and read-out weights a trial starts from: a function of the seed only."""
    keras.utils.set_random_seed(seed)
    layer, head = _layer(cell, hidden), keras.layers.Dense(outputs)
    layer.build((None, None, inputs))
    head.build((None, None, hidden))
    return [keras.ops.convert_to_numpy(v) for v in layer.trainable_weights + head.trainable_weights]


class _Model:
    """One compiled model for a structure; trials reuse it with their own weights."""

    def __init__(
        self,
        cell: str,
        strategy: str,
        hidden: int,
        lr: float,
        batch: int,
        steps: int,
        inputs: int = 1,
        targets: int = 1,
        classes: int = 0,
        loss_steps: tuple[int, int] | None = None,
    ) -> None:
        self.cell, self.strategy, self.hidden = cell, strategy, hidden
        self.inputs, self.outputs = inputs, classes or targets
        self.classes, self.loss_steps = classes, loss_steps
        self.components = 2 if cell == "lstm" else 1
        self.layer = _layer(cell, hidden)
        self.head = keras.layers.Dense(self.outputs)
        self.layer.build((None, steps, inputs))
        self.head.build((None, steps, hidden))
        # Options here are placeholders: every trial assigns its own variables.
        self.rnn = ri.InitialStateRNN(
            self.layer, strategy=strategy, **common.STRATEGY_OPTIONS[strategy]
        )
        self.bare = self.layer.trainable_weights + self.head.trainable_weights
        self.trainable = self.rnn.trainable_weights + self.head.trainable_weights
        # epsilon as in torch.optim.Adam and optax.adam (Keras defaults to 1e-7)
        self.optimizer = keras.optimizers.Adam(lr, epsilon=1e-8)
        self.optimizer.build(self.trainable)
        self.states_spec = [tf.TensorSpec((batch, hidden), tf.float32)] * self.components
        x_spec = tf.TensorSpec((batch, steps, inputs), tf.float32)
        y_spec = tf.TensorSpec((batch, steps, targets), tf.float32)
        w_spec = tf.TensorSpec((batch,), tf.float32)
        self.train_step = tf.function(
            self._train_step, input_signature=[x_spec, y_spec, w_spec], reduce_retracing=True
        )
        self.train_step_from = tf.function(
            self._train_step_from,
            input_signature=[x_spec, y_spec, w_spec, self.states_spec],
        )
        any_x = tf.TensorSpec((None, None, inputs), tf.float32)
        any_states = [tf.TensorSpec((None, hidden), tf.float32)] * self.components
        self.forward = tf.function(self._forward, input_signature=[any_x, any_states])
        self.memory = None
        if cell == "lstm":
            self.memory_rnn = keras.layers.RNN(_WithMemory(self.layer.cell), return_sequences=True)
            self.memory = tf.function(self._memory, input_signature=[any_x, any_states])

    # ------------------------------------------------------------------ compiled parts

    def _loss(self, pred: Any, y: Any, w: Any) -> Any:
        if self.classes or self.loss_steps is not None:
            if self.classes:
                labels = tf.cast(y[..., 0], tf.int32)
                err = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, pred)
            else:
                err = tf.reduce_mean(tf.square(pred - y), axis=2)
            if self.loss_steps is not None:
                err = err[:, self.loss_steps[0] : self.loss_steps[1]]
            per_row = tf.reduce_mean(err, axis=1)
            return tf.reduce_sum(w * per_row) / tf.reduce_sum(w)
        per_row = tf.reduce_mean(tf.square(pred - y), axis=[1, 2])
        return tf.reduce_sum(w * per_row) / tf.reduce_sum(w)

    def _train_step(self, x: Any, y: Any, w: Any) -> Any:
        with tf.GradientTape() as tape:
            seq, *_ = self.rnn(x, training=True)
            loss = self._loss(self.head(seq), y, w)
        grads = tape.gradient(loss, self.trainable)
        self.optimizer.apply(grads, self.trainable)
        return loss

    def _train_step_from(self, x: Any, y: Any, w: Any, states: Any) -> Any:
        with tf.GradientTape() as tape:
            seq, *final = self.rnn(x, initial_state=list(states), training=True)
            loss = self._loss(self.head(seq), y, w)
        grads = tape.gradient(loss, self.trainable)
        self.optimizer.apply(grads, self.trainable)
        return [tf.stop_gradient(s) for s in final]

    def _forward(self, x: Any, states: Any) -> Any:
        seq, *final = self.rnn(x, initial_state=list(states), training=False)
        return self.head(seq), seq, final

    def _memory(self, x: Any, states: Any) -> Any:
        # Keras's LSTM returns h at every step, not c: run its cell once more with c out.
        return self.memory_rnn(x, initial_state=list(states))

    # ------------------------------------------------------------------ per trial

    def reset(self, cfg: common.TrialConfig) -> None:
        """Give the model the trial's initial weights, a fresh optimizer and strategy."""
        bare = _bare_weights(self.cell, self.hidden, cfg.seed, self.inputs, self.outputs)
        for var, value in zip(self.bare, bare, strict=True):
            var.assign(value)
        # A fresh wrapper with the trial's options holds the strategy's initial
        # variables (h0, c0, sigma, the seed generator's state); copy them over.
        fresh_layer = _layer(self.cell, self.hidden)
        fresh_layer.build((None, None, self.inputs))
        fresh = ri.InitialStateRNN(fresh_layer, strategy=self.strategy, **cfg.strategy_options())
        for var, value in zip(
            self.rnn.initial_state.variables, fresh.initial_state.variables, strict=True
        ):
            var.assign(value)
        for var in self.optimizer.variables:  # iterations and moments; not the rate
            if var.name != "learning_rate":
                var.assign(tf.zeros_like(var))
        # The test set's uniform/xavier start: a stream of its own, fixed per seed.
        self.generator_test = [
            keras.ops.convert_to_numpy(keras.random.SeedGenerator(cfg.seed + _TEST_STREAM).state)
            for _ in self._generators()
        ]

    def _generators(self) -> list[Any]:
        gen = self.rnn.initial_state.seed_generator
        return [] if gen is None else [gen.state]

    def own_start(self, n: int, fixed: bool) -> list[tf.Tensor]:
        """The strategy's start at evaluation (no noise) for ``n`` sequences.

        ``fixed``: uniform/xavier draw from a state fixed by the seed (so every
        evaluation of the test set sees the same draw), and the training generator
        then goes on where it was; otherwise they draw from the training generator.
        """
        saved = [keras.ops.convert_to_numpy(v) for v in self._generators()]
        if fixed:
            for var, value in zip(self._generators(), self.generator_test, strict=True):
                var.assign(value)
        start = self.rnn.initial_state.get_initial_state(n, training=False)
        for var, value in zip(self._generators(), saved, strict=True):
            var.assign(value)
        return [tf.convert_to_tensor(s) for s in start]

    def get_params(self) -> list[np.ndarray]:
        return [np.array(keras.ops.convert_to_numpy(v)) for v in self.trainable]

    def set_params(self, values: list[np.ndarray]) -> None:
        for var, value in zip(self.trainable, values, strict=True):
            var.assign(value)


class _WithMemory(keras.layers.Layer):
    """An LSTM cell that outputs its memory ``c`` (evaluation only, shares the cell)."""

    def __init__(self, cell: keras.layers.LSTMCell) -> None:
        super().__init__()
        self.cell = cell
        self.state_size = cell.state_size
        self.output_size = cell.units

    def call(self, inputs: Any, states: Any, training: bool = False) -> Any:
        _, new = self.cell(inputs, states, training=False)
        return new[1], new


_MODELS: dict[tuple, _Model] = {}
_TEST_STREAM = 7919  # offset of the seed of the test set's start draws


def _model(
    cfg: common.TrialConfig, settings: dict[str, Any], steps: int, task: Any = None
) -> _Model:
    shapes: tuple = ()
    if task is not None and (
        task.train_x.shape[-1] != 1
        or task.train_y.shape[-1] != 1
        or task.classes
        or task.loss_steps is not None
    ):
        loss_steps = None if task.loss_steps is None else tuple(task.loss_steps)
        shapes = (task.train_x.shape[-1], task.train_y.shape[-1], task.classes, loss_steps)
    key = (
        cfg.cell,
        cfg.base_strategy,
        settings["hidden"],
        settings["lr"],
        settings["batch_size"],
        steps,
        *shapes,
    )
    if key not in _MODELS:
        _MODELS[key] = _Model(cfg.cell, cfg.base_strategy, *key[2:])
    model = _MODELS[key]
    model.reset(cfg)
    return model


def _zeros(n: int, hidden: int, components: int) -> list[tf.Tensor]:
    return [tf.zeros((n, hidden), tf.float32) for _ in range(components)]


def _pad(x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` padded with zero rows to ``batch`` rows, and the weights (1 real, 0 padded)."""
    n = x.shape[0]
    w = np.zeros(batch, np.float32)
    w[:n] = 1.0
    if n == batch:
        return x, w
    pad = np.zeros((batch - n, *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad]), w


# --------------------------------------------------------------------------- the trial


def _train_epoch(
    model: _Model, cfg: common.TrialConfig, task: Any, rng: np.random.Generator, batch: int
) -> None:
    for idx in common.epoch_batches(rng, task.train_x.shape[0], batch):
        x, w = _pad(task.train_x[idx], batch)
        y, _ = _pad(task.train_y[idx], batch)
        if cfg.kind == "windows":
            model.train_step(x, y, w)
        elif cfg.strategy == "stateful":
            states = _zeros(batch, model.hidden, model.components)
            for c in range(x.shape[1]):
                states = model.train_step_from(x[:, c], y[:, c], w, states)
        else:
            for c in range(x.shape[1]):
                model.train_step(x[:, c], y[:, c], w)


def _predict(
    model: _Model,
    cfg: common.TrialConfig,
    x: np.ndarray,
    noise: list[np.ndarray] | None = None,
    fixed: bool = True,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions for a split in eval mode, and every step's state components.

    ``noise``: one array per component, ``(N, hidden)`` for windows or ``(S, C, hidden)``
    for chunks, added to the start of every sequence (every chunk). ``fixed``: see
    :meth:`_Model.own_start` (the test set: fixed; validation: fresh draws).
    """
    hidden, comps = model.hidden, model.components
    if cfg.kind == "windows":
        starts = model.own_start(x.shape[0], fixed=fixed)
        if noise is not None:
            starts = [s + n for s, n in zip(starts, noise, strict=True)]
        pred, seq, _ = model.forward(x, starts)
        states = [np.asarray(seq)]
        if model.memory is not None:
            states.append(np.asarray(model.memory(x, starts)))
        return np.asarray(pred), states
    s, c, length = x.shape[:3]
    if cfg.strategy != "stateful":
        flat = x.reshape(s * c, length, 1)
        flat_noise = None if noise is None else [n.reshape(s * c, hidden) for n in noise]
        pred, states = _predict(model, _WINDOWS, flat, flat_noise, fixed)
        return pred.reshape(x.shape), [st.reshape(s, c, length, hidden) for st in states]
    preds, seqs = [], [[] for _ in range(comps)]
    carried = _zeros(s, hidden, comps)
    for k in range(c):
        starts = (
            carried if noise is None else [a + n[:, k] for a, n in zip(carried, noise, strict=True)]
        )
        pred, seq, carried = model.forward(x[:, k], starts)
        preds.append(np.asarray(pred))
        seqs[0].append(np.asarray(seq))
        if model.memory is not None:
            seqs[1].append(np.asarray(model.memory(x[:, k], starts)))
    return np.stack(preds, 1), [np.stack(q, 1) for q in seqs]


class _Windows:
    kind = "windows"
    strategy = "zero"


_WINDOWS = _Windows()


def _val_mse(model: _Model, cfg: common.TrialConfig, task: Any) -> float:
    pred, _ = _predict(model, cfg, task.val_x, fixed=False)
    if task.classes or task.loss_steps is not None:
        curve = common.per_step_error(pred, task.val_y, task.classes)
        return common.window_mean(curve, task.loss_steps)
    return float(np.mean(common.per_step_mse(pred, task.val_y)))


class _Fit(NamedTuple):
    """What training reports besides the weights (which the model ends with)."""

    val_by_epoch: list[float]
    best_epoch: int
    seconds: float
    checkpoints: list[dict[str, float]]
    epochs: int


def _fit(cfg: common.TrialConfig, settings: dict[str, Any], task: Any) -> tuple[_Model, _Fit]:
    """Train by :func:`~reference_impl.experiments.common.training_plan`; the model ends
    with its best validation checkpoint's weights."""
    batch = int(settings["batch_size"])
    model = _model(cfg, settings, task.train_x.shape[-2], task)
    rng = common.batch_rng(cfg.seed)
    plan = common.training_plan(settings, task.train_x.shape[0])
    t0 = time.perf_counter()
    val_by_epoch: list[float] = []
    checkpoints: list[dict[str, float]] = []
    best, best_epoch, best_params = np.inf, -1, model.get_params()
    trained = 0
    for epoch in range(plan.epochs):
        trained = epoch + 1
        _train_epoch(model, cfg, task, rng, batch)
        if not plan.evaluates(epoch):
            continue
        val = _val_mse(model, cfg, task)
        val_by_epoch.append(val)
        if epoch in plan.checkpoints:
            pred, _ = _predict(model, cfg, task.test_x)
            curve = common.per_step_error(pred, task.test_y, task.classes)
            checkpoints.append(common.checkpoint_record(plan.checkpoints[epoch], val, curve))
        if val < best:
            best, best_epoch, best_params = val, epoch, model.get_params()
        elif plan.stops(epoch, best_epoch):
            break
    model.set_params(best_params)
    return model, _Fit(val_by_epoch, best_epoch, time.perf_counter() - t0, checkpoints, trained)


def _evaluate(
    model: _Model, cfg: common.TrialConfig, task: Any, per_sequence: bool = False
) -> tuple[dict[str, list[float]], list[float]]:
    """The test curve, the perturbed-start curves, and the rms of each state component."""
    pred, states = _predict(model, cfg, task.test_x)
    curves = {"test": common.per_step_error(pred, task.test_y, task.classes).tolist()}
    if per_sequence:
        curves.update(common.sequence_curves(pred, task.test_y))
    rms = [common.state_rms(s) for s in states]
    start_shape = (*task.test_x.shape[: 1 if cfg.kind == "windows" else 2], model.hidden)
    for i, scale in enumerate(common.PERTURB_SCALES):
        # One draw per scale, shared by h and c, each scaled by its own rms.
        base = common.perturb_noise(cfg.seed, i, start_shape)
        p, _ = _predict(model, cfg, task.test_x, [np.float32(scale * r) * base for r in rms])
        curves[f"perturbed@{scale}"] = common.per_step_error(p, task.test_y, task.classes).tolist()
    return curves, rms


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")


def _run(cfg: common.TrialConfig, settings: dict[str, Any], task: Any) -> dict[str, Any]:
    model, fit = _fit(cfg, settings, task)
    curves, rms = _evaluate(model, cfg, task, settings.get("per_sequence", False))
    curves["val_by_epoch"] = fit.val_by_epoch
    scalars = {
        **common.summarize(curves),
        "epochs": fit.epochs,
        "best_epoch": fit.best_epoch,
        "train_seconds": fit.seconds,
        "state_rms": rms[0],
    }
    return {
        "curves": curves,
        "scalars": scalars,
        "checkpoints": fit.checkpoints,
        "framework_version": f"keras {keras.__version__} (tensorflow {tf.__version__})",
        "device": _device(),
    }


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one Keras trial; see the experiment contract for the keys.

    Raises ValueError for an unknown task, strategy, cell or budget, or a strategy
    this trainer does not run (``washout``, ``data_driven``: PyTorch only).
    """
    cfg = common.TrialConfig.from_dict(config)
    if cfg.framework != "keras":
        raise ValueError(f"train_keras runs framework 'keras'; got {cfg.framework!r}")
    if cfg.strategy in ("washout", "data_driven"):
        raise ValueError(f"strategy {cfg.strategy!r} runs in the PyTorch trainer only")
    settings = common.budget_settings(cfg.budget, cfg.task)
    return _run(cfg, settings, _data(cfg.task, cfg.seed, cfg.budget))


@functools.lru_cache(maxsize=64)
def _data(task: str, seed: int, budget: str) -> Any:
    from reference_impl.experiments.tasks import load_task

    return load_task(task, seed=seed, budget=budget)
