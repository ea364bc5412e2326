"""One trial of the experiment grid in Flax linen (JAX): :func:`run_trial`.

The model is the package's :class:`reference_impl.flax.linen.InitialStateRNN` around an
``nn.GRUCell`` or ``nn.OptimizedLSTMCell`` (the fused LSTM cell, the same equations as
``nn.LSTMCell``) with ``hidden`` features, then an ``nn.Dense(1)`` read-out at every
step; MSE loss, Adam (optax), early stopping on the validation MSE. Sizes come from
:func:`reference_impl.experiments.common.budget_settings`, the batch order from
:func:`~reference_impl.experiments.common.epoch_batches`, so a trial here runs the same
experiment as the PyTorch and Keras trainers.

Speed: JAX runs on one CPU thread (``XLA_FLAGS`` set when this module is imported,
unless JAX was imported before), and a whole training epoch is one compiled call (a
``lax.scan`` over its batches, and over the chunks of each batch for "chunks" tasks).
The compiled functions are cached per structure (cell, strategy, sizes; JAX adds the
array shapes): the seed goes in as data (parameters, rng keys), so every seed of a
structure shares one compilation. A last partial batch is padded with rows of weight 0,
so its loss and gradient are those of the partial batch and the shapes never change.

Randomness: the parameters come from ``jax.random.key(seed)``; the ``initial_state``
(uniform, xavier) and ``noise`` (noisy) rng streams from keys folded from it.

Pairing: for one seed every strategy starts from the same recurrent and read-out
weights (the bare cell and the read-out are initialized from keys derived from the seed
alone, and replace what the wrapped model's ``init`` drew) and sees the same batches.
"""

from __future__ import annotations

import os
import sys

_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
if "jax" not in sys.modules and os.environ.get("REFERENCE_IMPL_JAX_THREADS", "1") == "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    _missing = [f for f in _THREAD_FLAGS if f.split("=")[0] not in _flags]
    if _missing:
        os.environ["XLA_FLAGS"] = " ".join([_flags, *_missing]).strip()

import functools  # noqa: E402
import time  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from reference_impl.experiments import common  # noqa: E402
from reference_impl.flax import linen as ri  # noqa: E402

__all__ = ["run_trial"]

# Streams folded from the trial's key: one number each, so they never collide.
_PARAMS, _CELL, _HEAD, _TRAIN, _VAL, _TEST = range(6)


def _cell(kind: str, hidden: int) -> nn.Module:
    if kind == "gru":
        return nn.GRUCell(features=hidden)
    return nn.OptimizedLSTMCell(features=hidden)


class _Net(nn.Module):
    """The wrapped recurrent layer and the read-out; returns (prediction, h, final carry)."""

    kind: str
    strategy: str
    hidden: int
    options: tuple = ()
    outputs: int = 1

    @nn.compact
    def __call__(
        self, x: jax.Array, initial_carry: Any = None, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array, Any]:
        rnn = ri.InitialStateRNN(
            _cell(self.kind, self.hidden), strategy=self.strategy, name="rnn", **dict(self.options)
        )
        carry, seq = rnn(
            x, initial_carry=initial_carry, return_carry=True, deterministic=deterministic
        )
        return nn.Dense(self.outputs, name="head")(seq), seq, carry


def _options(cfg: common.TrialConfig) -> tuple:
    # Flax draws from rng streams, not a seed: the keys below are derived from the seed.
    return tuple(sorted((k, v) for k, v in cfg.strategy_options().items() if k != "seed"))


class _Compiled:
    """The compiled functions of one structure; trials pass their seed's data in."""

    def __init__(
        self,
        kind: str,
        strategy: str,
        hidden: int,
        lr: float,
        options: tuple,
        inputs: int = 1,
        outputs: int = 1,
        classes: int = 0,
        loss_steps: tuple[int, int] | None = None,
    ):
        self.kind, self.strategy, self.hidden = kind, strategy, hidden
        self.inputs, self.outputs = inputs, outputs
        self.classes, self.loss_steps = classes, loss_steps
        self.net = _Net(kind, strategy, hidden, options, outputs)
        self.state = ri.InitialState(strategy, cell=kind, features=hidden, **dict(options))
        self.tx = optax.adam(lr)
        self.epoch = jax.jit(self._epoch, static_argnames=("chunks", "stateful"))
        self.forward = jax.jit(self._forward)
        self.start = jax.jit(self._start, static_argnums=1)
        self.memory = jax.jit(self._memory)
        x = jax.ShapeDtypeStruct((1, 1, inputs), jnp.float32)
        # What the wrapped model's init makes, in shapes only (nothing is computed).
        self.expected = jax.eval_shape(self.net.init, jax.random.key(0), x)["params"]

    # ------------------------------------------------------------------ training

    def _loss(self, params, x, y, w, key, carry):
        k1, k2 = jax.random.split(key)
        pred, _, final = self.net.apply(
            {"params": params},
            x,
            initial_carry=carry,
            deterministic=False,
            rngs={ri.INITIAL_STATE_RNG: k1, ri.NOISE_RNG: k2},
        )
        if self.classes or self.loss_steps is not None:
            if self.classes:
                labels = y[..., 0].astype(jnp.int32)
                err = optax.softmax_cross_entropy_with_integer_labels(pred, labels)
            else:
                err = jnp.mean((pred - y) ** 2, axis=2)
            if self.loss_steps is not None:
                err = err[:, self.loss_steps[0] : self.loss_steps[1]]
            per_row = jnp.mean(err, axis=1)
        else:
            per_row = jnp.mean((pred - y) ** 2, axis=(1, 2))
        return jnp.sum(w * per_row) / jnp.sum(w), final

    def _step(self, params, opt_state, x, y, w, key, carry):
        grads, final = jax.grad(self._loss, has_aux=True)(params, x, y, w, key, carry)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jax.lax.stop_gradient(final)

    def _epoch(self, params, opt_state, xb, yb, wb, key, *, chunks: bool, stateful: bool):
        """One epoch: ``xb`` is (batches, B, T, 1) or (batches, B, C, L, 1)."""
        keys = jax.random.split(key, xb.shape[0])

        def batch(carry, inputs):
            params, opt_state = carry
            x, y, w, k = inputs
            if not chunks:
                params, opt_state, _ = self._step(params, opt_state, x, y, w, k, None)
                return (params, opt_state), None
            start = self._zeros(x.shape[0]) if stateful else None

            def chunk(carry, inputs):
                params, opt_state, state = carry
                xc, yc, kc = inputs
                params, opt_state, final = self._step(params, opt_state, xc, yc, w, kc, state)
                return (params, opt_state, final if stateful else state), None

            ks = jax.random.split(k, x.shape[1])
            xs, ys = jnp.swapaxes(x, 0, 1), jnp.swapaxes(y, 0, 1)
            (params, opt_state, _), _ = jax.lax.scan(
                chunk, (params, opt_state, start), (xs, ys, ks)
            )
            return (params, opt_state), None

        (params, opt_state), _ = jax.lax.scan(batch, (params, opt_state), (xb, yb, wb, keys))
        return params, opt_state

    def _zeros(self, n: int) -> Any:
        z = jnp.zeros((n, self.hidden), jnp.float32)
        return (z, z) if self.kind == "lstm" else z

    # ------------------------------------------------------------------ evaluation

    def _forward(self, params, x, carry):
        return self.net.apply({"params": params}, x, initial_carry=carry, deterministic=True)

    def _start(self, params, n: int, key):
        """The strategy's start at evaluation (no noise) for ``n`` sequences."""
        state_params = params["rnn"].get("initial_state", {})
        return self.state.apply(
            {"params": state_params}, (n,), deterministic=True, rngs={ri.INITIAL_STATE_RNG: key}
        )

    def _memory(self, params, x, carry):
        """The LSTM memory ``c`` at every step (the layer returns only ``h``)."""
        cell = _cell(self.kind, self.hidden)
        cell_params = {"params": params["rnn"]["rnn"]["cell"]}

        def step(carry, xt):
            carry, _ = cell.apply(cell_params, carry, xt)
            return carry, carry[0]

        _, cs = jax.lax.scan(step, carry, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(cs, 0, 1)

    # ------------------------------------------------------------------ per trial

    def init_params(self, seed: int) -> Any:
        """Parameters of a trial: the bare cell and the read-out from the seed alone.

        The parts are initialized one by one (cheaper than the whole model's ``init``,
        which runs the recurrent scan) and checked against the whole model's layout.
        """
        root = jax.random.key(seed)
        cell = _cell(self.kind, self.hidden)
        carry = cell.initialize_carry(jax.random.key(0), (1, 1))
        x = jnp.zeros((1, self.inputs))
        cell_params = cell.init(jax.random.fold_in(root, _CELL), carry, x)
        head = nn.Dense(self.outputs).init(
            jax.random.fold_in(root, _HEAD), jnp.zeros((1, self.hidden))
        )
        rnn = {"rnn": {"cell": cell_params["params"]}}
        state = self.state.init(jax.random.fold_in(root, _PARAMS), (1,))
        if "params" in state:
            rnn["initial_state"] = state["params"]
        params = {"rnn": rnn, "head": head["params"]}
        got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
        want = jax.tree.map(lambda a: (a.shape, a.dtype), self.expected)
        if got != want:  # pragma: no cover - a Flax layout change
            raise RuntimeError(f"parameter layout {got} differs from the model's {want}")
        return params


@functools.cache
def _compiled(
    kind: str, strategy: str, hidden: int, lr: float, options: tuple, *shapes: Any
) -> _Compiled:
    return _Compiled(kind, strategy, hidden, lr, options, *shapes)


def _shapes(task: Any) -> tuple:
    """What a reader's data changes in the structure (nothing for the suite's tasks):
    input features, outputs of the read-out, classes, the steps the loss counts."""
    n_in, n_y = task.train_x.shape[-1], task.train_y.shape[-1]
    if n_in == 1 and n_y == 1 and not task.classes and task.loss_steps is None:
        return ()
    loss_steps = None if task.loss_steps is None else tuple(task.loss_steps)
    return (n_in, task.classes or n_y, task.classes, loss_steps)


def _components(carry: Any, kind: str) -> list[Any]:
    """(h, c) of a carry (Flax LSTM carries are (c, h))."""
    return [carry[1], carry[0]] if kind == "lstm" else [carry]


def _carry(parts: list[Any], kind: str) -> Any:
    return (parts[1], parts[0]) if kind == "lstm" else parts[0]


def _batches(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's batches stacked (batches, B, ...); a last partial batch padded, weight 0."""
    idx = common.epoch_batches(rng, x.shape[0], batch)
    table = np.zeros((len(idx), batch), np.int64)
    w = np.zeros((len(idx), batch), np.float32)
    for i, b in enumerate(idx):
        table[i, : b.size], w[i, : b.size] = b, 1.0
    mask = w.reshape(w.shape + (1,) * (x.ndim - 1))
    return x[table] * mask, y[table] * mask, w


# --------------------------------------------------------------------------- the trial


def _predict(
    comp: _Compiled,
    params: Any,
    cfg: common.TrialConfig,
    x: np.ndarray,
    key: jax.Array,
    noise: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions for a split in eval mode, and every step's state components (h, c).

    ``noise``: one array per component (h, then c), ``(N, hidden)`` for windows or
    ``(S, C, hidden)`` for chunks, added to the start of every sequence (every chunk).
    ``key``: the draw of uniform/xavier.
    """
    hidden = comp.hidden
    if cfg.kind == "windows" or cfg.strategy != "stateful":
        shape = x.shape
        flat = x.reshape(-1, shape[-2], shape[-1])
        starts = _components(comp.start(params, flat.shape[0], key), comp.kind)
        if noise is not None:
            starts = [s + n.reshape(-1, hidden) for s, n in zip(starts, noise, strict=True)]
        carry = _carry(starts, comp.kind)
        pred, seq, _ = comp.forward(params, flat, carry)
        states = [np.asarray(seq)]
        if comp.kind == "lstm":
            states.append(np.asarray(comp.memory(params, flat, carry)))
        pred = np.asarray(pred)
        return pred.reshape(*shape[:-1], pred.shape[-1]), [
            s.reshape(*shape[:-1], hidden) for s in states
        ]
    s, c = x.shape[:2]
    preds, seqs = [], [[] for _ in range(2 if comp.kind == "lstm" else 1)]
    carried = _components(comp._zeros(s), comp.kind)
    for k in range(c):
        starts = (
            carried if noise is None else [a + n[:, k] for a, n in zip(carried, noise, strict=True)]
        )
        carry = _carry(starts, comp.kind)
        pred, seq, final = comp.forward(params, x[:, k], carry)
        preds.append(np.asarray(pred))
        seqs[0].append(np.asarray(seq))
        if comp.kind == "lstm":
            seqs[1].append(np.asarray(comp.memory(params, x[:, k], carry)))
        carried = _components(final, comp.kind)
    return np.stack(preds, 1), [np.stack(q, 1) for q in seqs]


class _Fit(NamedTuple):
    """What training reports besides the parameters."""

    val_by_epoch: list[float]
    best_epoch: int
    seconds: float
    checkpoints: list[dict[str, float]]
    epochs: int


def _fit(
    cfg: common.TrialConfig, settings: dict[str, Any], task: Any
) -> tuple[_Compiled, Any, _Fit]:
    """Train by :func:`~reference_impl.experiments.common.training_plan`; returns the
    compiled structure, the best validation checkpoint's parameters, and a :class:`_Fit`.
    """
    batch, hidden = int(settings["batch_size"]), int(settings["hidden"])
    comp = _compiled(
        cfg.cell, cfg.base_strategy, hidden, float(settings["lr"]), _options(cfg), *_shapes(task)
    )
    root = jax.random.key(cfg.seed)
    params = comp.init_params(cfg.seed)
    opt_state = comp.tx.init(params)
    rng = common.batch_rng(cfg.seed)
    chunks, stateful = cfg.kind == "chunks", cfg.strategy == "stateful"
    plan = common.training_plan(settings, task.train_x.shape[0])
    t0 = time.perf_counter()
    val_by_epoch: list[float] = []
    checkpoints: list[dict[str, float]] = []
    best, best_epoch, best_params = np.inf, -1, params
    trained = 0
    for epoch in range(plan.epochs):
        trained = epoch + 1
        xb, yb, wb = _batches(rng, task.train_x, task.train_y, batch)
        key = jax.random.fold_in(jax.random.fold_in(root, _TRAIN), epoch)
        params, opt_state = comp.epoch(
            params, opt_state, xb, yb, wb, key, chunks=chunks, stateful=stateful
        )
        if not plan.evaluates(epoch):
            continue
        val = _val_mse(comp, params, cfg, task, epoch)
        val_by_epoch.append(val)
        if epoch in plan.checkpoints:
            test_key = jax.random.fold_in(jax.random.key(cfg.seed), _TEST)
            pred, _ = _predict(comp, params, cfg, task.test_x, test_key)
            curve = common.per_step_error(pred, task.test_y, task.classes)
            checkpoints.append(common.checkpoint_record(plan.checkpoints[epoch], val, curve))
        if val < best:
            best, best_epoch, best_params = val, epoch, params
        elif plan.stops(epoch, best_epoch):
            break
    fit = _Fit(val_by_epoch, best_epoch, time.perf_counter() - t0, checkpoints, trained)
    return comp, best_params, fit


def _val_mse(comp: _Compiled, params: Any, cfg: common.TrialConfig, task: Any, epoch: int) -> float:
    """Validation MSE (all steps); uniform/xavier draw a fresh start every epoch."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), _VAL), epoch)
    pred, _ = _predict(comp, params, cfg, task.val_x, key)
    if task.classes or task.loss_steps is not None:
        curve = common.per_step_error(pred, task.val_y, task.classes)
        return common.window_mean(curve, task.loss_steps)
    return float(np.mean(common.per_step_mse(pred, task.val_y)))


def _evaluate(
    comp: _Compiled, params: Any, cfg: common.TrialConfig, task: Any, per_sequence: bool = False
) -> tuple[dict[str, list[float]], list[float]]:
    """The test curve, the perturbed-start curves, and the rms of each state component.

    uniform/xavier draw their start from one key of the seed, so the clean and the
    perturbed runs start from the same draw and two evaluations agree.
    """
    key = jax.random.fold_in(jax.random.key(cfg.seed), _TEST)
    pred, states = _predict(comp, params, cfg, task.test_x, key)
    curves = {"test": common.per_step_error(pred, task.test_y, task.classes).tolist()}
    if per_sequence:
        curves.update(common.sequence_curves(pred, task.test_y))
    rms = [common.state_rms(s) for s in states]
    start_shape = (*task.test_x.shape[: 1 if cfg.kind == "windows" else 2], comp.hidden)
    for i, scale in enumerate(common.PERTURB_SCALES):
        # One draw per scale, shared by h and c, each scaled by its own rms.
        base = common.perturb_noise(cfg.seed, i, start_shape)
        noise = [np.float32(scale * r) * base for r in rms]
        p, _ = _predict(comp, params, cfg, task.test_x, key, noise)
        curves[f"perturbed@{scale}"] = common.per_step_error(p, task.test_y, task.classes).tolist()
    return curves, rms


def _run(cfg: common.TrialConfig, settings: dict[str, Any], task: Any) -> dict[str, Any]:
    comp, params, fit = _fit(cfg, settings, task)
    curves, rms = _evaluate(comp, params, cfg, task, settings.get("per_sequence", False))
    curves["val_by_epoch"] = fit.val_by_epoch
    scalars = {
        **common.summarize(curves),
        "epochs": fit.epochs,
        "best_epoch": fit.best_epoch,
        "train_seconds": fit.seconds,
        "state_rms": rms[0],
    }
    dev = jax.devices()[0]
    return {
        "curves": curves,
        "scalars": scalars,
        "checkpoints": fit.checkpoints,
        "framework_version": f"flax {flax.__version__} (jax {jax.__version__})",
        "device": "cpu" if dev.platform == "cpu" else dev.device_kind,
    }


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one Flax trial; see the experiment contract for the keys.

    Raises ValueError for an unknown task, strategy, cell or budget, or a strategy
    this trainer does not run (``washout``, ``data_driven``: PyTorch only).
    """
    cfg = common.TrialConfig.from_dict(config)
    if cfg.framework != "flax":
        raise ValueError(f"train_flax runs framework 'flax'; got {cfg.framework!r}")
    if cfg.strategy in ("washout", "data_driven"):
        raise ValueError(f"strategy {cfg.strategy!r} runs in the PyTorch trainer only")
    settings = common.budget_settings(cfg.budget, cfg.task)
    return _run(cfg, settings, _data(cfg.task, cfg.seed, cfg.budget))


@functools.lru_cache(maxsize=64)
def _data(task: str, seed: int, budget: str) -> Any:
    from reference_impl.experiments.tasks import load_task

    return load_task(task, seed=seed, budget=budget)
