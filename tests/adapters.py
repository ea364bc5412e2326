"""One small adapter per framework, so the conformance suite is written once.

Each adapter drives the framework's public API (``InitialState``, ``InitialStateRNN``,
``NoisyCell``) and hands back numpy arrays in one neutral layout:

* a state is ``{"h": (directions, batch, features), "c": ...}`` (``c`` for an LSTM);
* stored or learnable vectors are ``{"h": (directions, features), ...}``, and
  ``{"std_raw": ()}`` when sigma is learnable;
* outputs of a layer (or stack) are ``(batch, time, directions * features)``.

Framework specifics (PyTorch's ``(layers * directions, batch, features)``, Keras's
state lists, Flax's ``(c, h)`` carries, linen's variables and rng streams, NNX's
``Rngs``) live here only. ``tests/conftest.py`` loads an adapter on first use, so a
test file that does not use them imports no framework.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

NAMES = {"gru": ("h",), "rnn": ("h",), "lstm": ("h", "c")}


def _np(tree: Any) -> Any:
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


# --------------------------------------------------------------------------- PyTorch


class Torch:
    name = "torch"

    def __init__(self) -> None:
        import torch
        from torch import nn

        from reference_impl import torch as ri

        self.torch, self.nn, self.ri = torch, nn, ri
        self.layers = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
        self.cells = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}

    def initial_state(self, strategy, cell, features, directions, seed=None, **options):
        module = self.ri.InitialState(
            strategy,
            hidden_size=features,
            cell=cell,
            bidirectional=directions == 2,
            seed=seed,
            **options,
        )
        return _TorchState(self, module, cell)

    def model(self, cell, features, layers, directions, strategy, seed=0, **options):
        self.torch.manual_seed(0)
        rnn = self.layers[cell](
            2, features, num_layers=layers, bidirectional=directions == 2, batch_first=True
        )
        module = self.ri.InitialStateRNN(rnn, strategy, seed=seed, **options)
        return _TorchModel(self, module, cell, layers, directions)

    def noisy_cell(self, cell, features, sigma, seed=0):
        return _TorchNoisy(self, cell, features, sigma, seed)

    def stream(self, cell, features, strategy, seed=0, **options):
        self.torch.manual_seed(0)
        rnn = self.layers[cell](2, features, batch_first=True)
        return _TorchStream(
            self, self.ri.InitialStateRNN(rnn, strategy, seed=seed, **options), cell
        )

    def bare_run(self, cell, features, directions, x):
        """The bare layer's outputs from its own (zero) start, or its error."""
        rnn = self.layers[cell](2, features, bidirectional=directions == 2, batch_first=True)
        with self.torch.no_grad():
            return rnn(self.torch.as_tensor(x, dtype=self.torch.float32))[0].numpy()


class _TorchState:
    def __init__(self, fw, module, cell):
        self.fw, self.module, self.names = fw, module, NAMES[cell]

    def draw(self, batch, training=False):
        self.module.train(training)
        out = self.module.init(batch)
        parts = out if isinstance(out, tuple) else (out,)
        return {
            n: p.detach().numpy().astype(np.float64) for n, p in zip(self.names, parts, strict=True)
        }

    def vectors(self):
        return {
            k.removesuffix("0"): v.detach().numpy().astype(np.float64)
            for k, v in self.module.state_dict().items()
        }

    def grads(self, batch, weights):
        self.module.train(True)
        out = self.module.init(batch)
        parts = out if isinstance(out, tuple) else (out,)
        loss = sum(
            (p * self.fw.torch.as_tensor(weights[n])).sum()
            for n, p in zip(self.names, parts, strict=True)
        )
        params = dict(self.module.named_parameters())
        grads = self.fw.torch.autograd.grad(loss, list(params.values()))
        return {
            k.removesuffix("0"): g.numpy().astype(np.float64)
            for k, g in zip(params, grads, strict=True)
        }

    def noise_std(self):
        return float(self.module.noise_std.detach())

    def set_noise_std(self, value):
        self.module.set_noise_std(value)

    def save_load(self):
        fresh = type(self.module)(
            self.module.strategy,
            hidden_size=self.module.hidden_size,
            cell=self.module.cell,
            bidirectional=self.module.bidirectional,
            **{**self.module.options, "seed": 12345},
        )
        fresh.load_state_dict(self.module.state_dict())
        return _TorchState(self.fw, fresh, self.module.cell)


class _TorchModel:
    def __init__(self, fw, module, cell, layers, directions):
        self.fw, self.module, self.cell = fw, module, cell
        self.layers, self.directions = layers, directions

    def run(self, x, training=False, state=None):
        torch = self.fw.torch
        self.module.train(training)
        hx = None
        if state is not None:  # one dict per layer -> (layers * directions, batch, features)
            stacked = [
                torch.as_tensor(np.concatenate([s[n] for s in state]), dtype=torch.float32)
                for n in NAMES[self.cell]
            ]
            hx = tuple(stacked) if self.cell == "lstm" else stacked[0]
        with torch.no_grad():
            out, _ = self.module(torch.as_tensor(x, dtype=torch.float32), hx)
        return out.numpy().astype(np.float64)

    def vectors(self):
        rows = self.fw.torch.nn.Module.state_dict(self.module.initial_state)
        d = self.directions
        return [
            {k.removesuffix("0"): v[i * d : (i + 1) * d].numpy() for k, v in rows.items()}
            for i in range(self.layers)
        ]


def _torch_hx(torch, cell, state):
    parts = [torch.tensor(state[n], dtype=torch.float32) for n in NAMES[cell]]
    return tuple(parts) if cell == "lstm" else parts[0]


class _TorchStream:
    """PyTorch's idiom: the final state returned by one call goes into the next; ``None``
    (a reset) starts from the strategy's state."""

    def __init__(self, fw, module, cell):
        self.fw, self.module, self.cell, self.hx = fw, module, cell, None

    def chunk(self, x, training=False):
        self.module.train(training)
        with self.fw.torch.no_grad():
            out, self.hx = self.module(self.fw.torch.as_tensor(x), self.hx)
        return out.numpy().astype(np.float64)

    def reset(self):
        self.hx = None

    def carried(self):
        parts = self.hx if isinstance(self.hx, tuple) else (self.hx,)
        return {
            n: p.numpy().astype(np.float64) for n, p in zip(NAMES[self.cell], parts, strict=True)
        }

    def explicit(self, x, state):
        self.module.eval()
        with self.fw.torch.no_grad():
            hx = _torch_hx(self.fw.torch, self.cell, state)
            return self.module(self.fw.torch.as_tensor(x), hx)[0].numpy().astype(np.float64)

    def vectors(self):
        rows = self.fw.torch.nn.Module.state_dict(self.module.initial_state)
        return {k.removesuffix("0"): v.numpy() for k, v in rows.items() if k != "std_raw"}

    def save_load(self):
        fresh = self.fw.ri.InitialStateRNN(
            self.fw.layers[self.cell](2, self.module.rnn.hidden_size, batch_first=True),
            self.module.strategy,
            **{**self.module.initial_state.options, "seed": 12345},
        )
        fresh.load_state_dict(self.module.state_dict())
        return _TorchStream(self.fw, fresh, self.cell)


class _TorchNoisy:
    def __init__(self, fw, cell, features, sigma, seed):
        fw.torch.manual_seed(0)
        self.fw, self.kind, self.sigma = fw, cell, sigma
        self.bare = fw.cells[cell](2, features)
        self.module = fw.ri.NoisyCell(self.bare, noise_std=sigma, seed=seed)

    def noise_std(self):
        return float(self.module.noise_std)

    def set_noise_std(self, value):
        self.module.set_noise_std(value)
        self.sigma = value

    def run(self, x, training):
        """Outputs ``(batch, time, features)`` and the standard-normal noise used."""
        torch, seen = self.fw.torch, []
        original = type(self.module)._noise

        def spy(module, steps, state):
            noise = original(module, steps, state)
            seen.append(noise)
            return noise

        self.module.train(training)
        type(self.module)._noise = spy
        try:
            with torch.no_grad():
                out, _ = self.module.unroll(
                    torch.as_tensor(x, dtype=torch.float32), batch_first=True
                )
        finally:
            type(self.module)._noise = original
        eps = None
        if seen:  # (time, batch, features) per component, h then c -> (batch, time, C * F)
            eps = np.concatenate([n.numpy().transpose(1, 0, 2) for n in seen[0]], -1) / self.sigma
        return out.numpy().astype(np.float64), eps

    def bare_run(self, x):
        torch, h, outs = self.fw.torch, None, []
        with torch.no_grad():
            for t in range(x.shape[1]):
                h = self.bare(torch.as_tensor(x[:, t], dtype=torch.float32), h)
                outs.append((h[0] if isinstance(h, tuple) else h).numpy())
        return np.stack(outs, 1).astype(np.float64)

    def step(self, x_t, state):
        torch = self.fw.torch
        parts = state if isinstance(state, tuple) else (state,)
        parts = tuple(torch.as_tensor(p, dtype=torch.float32) for p in parts)
        with torch.no_grad():
            new = self.bare(
                torch.as_tensor(x_t, dtype=torch.float32), parts if len(parts) > 1 else parts[0]
            )
        new = tuple(n.numpy() for n in (new if isinstance(new, tuple) else (new,)))
        return new[0], (new if len(new) > 1 else new[0])


# --------------------------------------------------------------------------- Keras


class Keras:
    name = "keras"

    def __init__(self) -> None:
        import keras

        from reference_impl import tensorflow as ri

        self.keras, self.ri = keras, ri
        self.layers = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}
        self.layers["rnn"] = keras.layers.SimpleRNN
        self.cells = {"gru": keras.layers.GRUCell, "lstm": keras.layers.LSTMCell}
        self.cells["rnn"] = keras.layers.SimpleRNNCell

    def initial_state(self, strategy, cell, features, directions, seed=None, **options):
        layer = self.ri.InitialState(
            strategy, units=features, cell=cell, bidirectional=directions == 2, seed=seed, **options
        )
        return _KerasState(self, layer, cell, directions)

    def model(self, cell, features, layers, directions, strategy, seed=0, **options):
        self.keras.utils.set_random_seed(0)
        stack = []
        for i in range(layers):
            rnn = self.layers[cell](features, return_sequences=True)
            if directions == 2:
                rnn = self.keras.layers.Bidirectional(rnn)
            stack.append(self.ri.InitialStateRNN(rnn, strategy, seed=seed + i, **options))
        return _KerasModel(self, stack, cell, directions)

    def noisy_cell(self, cell, features, sigma, seed=0):
        return _KerasNoisy(self, cell, features, sigma, seed)

    def stream(self, cell, features, strategy, seed=0, **options):
        keras = self.keras
        keras.utils.set_random_seed(0)
        rnn = self.layers[cell](features, return_sequences=True, stateful=True)
        layer = self.ri.InitialStateRNN(rnn, strategy, seed=seed, **options)
        model = keras.Sequential([keras.Input((None, 2), batch_size=3), layer])
        return _KerasStream(self, model, cell)

    def bare_run(self, cell, features, directions, x):
        rnn = self.layers[cell](features, return_sequences=True)
        rnn = self.keras.layers.Bidirectional(rnn) if directions == 2 else rnn
        return np.asarray(rnn(np.asarray(x, np.float32)))


def _keras_rows(parts, names, directions):
    """Keras's list (forward states, then backward) -> {name: (directions, batch, F)}."""
    parts = [np.asarray(p, np.float64) for p in parts]
    n = len(names)
    return {
        name: np.stack([parts[d * n + i] for d in range(directions)])
        for i, name in enumerate(names)
    }


class _KerasState:
    def __init__(self, fw, layer, cell, directions):
        self.fw, self.layer, self.cell, self.directions = fw, layer, cell, directions
        self.names = NAMES[cell]

    def draw(self, batch, training=False):
        parts = self.layer.get_initial_state(batch, training=training)
        return _keras_rows(parts, self.names, self.directions)

    def vectors(self):
        return {
            w.name.removesuffix("0"): np.asarray(w.numpy(), np.float64) for w in self.layer.weights
        }

    def grads(self, batch, weights):
        import tensorflow as tf

        variables = self.layer.trainable_weights
        with tf.GradientTape() as tape:
            parts = self.layer.get_initial_state(batch, training=True)
            n = len(self.names)
            loss = sum(
                tf.reduce_sum(parts[d * n + i] * weights[name][d])
                for d in range(self.directions)
                for i, name in enumerate(self.names)
            )
        grads = tape.gradient(loss, variables)
        return {
            w.name.removesuffix("0"): np.zeros(w.shape) if g is None else np.asarray(g, np.float64)
            for w, g in zip(variables, grads, strict=True)
        }

    def noise_std(self):
        return float(self.layer.noise_std)

    def set_noise_std(self, value):
        self.layer.set_noise_std(value)

    def save_load(self):
        config = self.layer.get_config()
        config["seed"] = 12345
        fresh = type(self.layer).from_config(config)
        fresh.set_weights(self.layer.get_weights())
        return _KerasState(self.fw, fresh, self.cell, self.directions)


class _KerasModel:
    def __init__(self, fw, stack, cell, directions):
        self.fw, self.stack, self.cell, self.directions = fw, stack, cell, directions

    def run(self, x, training=False, state=None):
        y = np.asarray(x, np.float32)
        for i, layer in enumerate(self.stack):
            kwargs = {}
            if state is not None:
                s = state[i]
                parts = [s[n][d] for d in range(self.directions) for n in NAMES[self.cell]]
                kwargs["initial_state"] = [np.asarray(p, np.float32) for p in parts]
            y = layer(y, training=training, **kwargs)
        return np.asarray(y, np.float64)

    def vectors(self):
        return [
            {w.name.removesuffix("0"): np.asarray(w.numpy()) for w in layer.initial_state.weights}
            for layer in self.stack
        ]


class _KerasStream:
    """Keras's idiom: a stateful layer carries its state between calls until
    ``reset_state()``; the wrapper starts each stream from the strategy's state."""

    def __init__(self, fw, model, cell):
        self.fw, self.model, self.cell = fw, model, cell
        self.layer = model.layers[0]

    def chunk(self, x, training=False):
        return np.asarray(self.model(np.asarray(x, np.float32), training=training), np.float64)

    def reset(self):
        self.layer.reset_state()

    def carried(self):
        states = self.layer.layer.states
        return {
            n: np.asarray(v.numpy(), np.float64)[None]
            for n, v in zip(NAMES[self.cell], states, strict=True)
        }

    def explicit(self, x, state):
        parts = [np.asarray(state[n][0], np.float32) for n in NAMES[self.cell]]
        out = self.layer(np.asarray(x, np.float32), initial_state=parts)
        return np.asarray(out, np.float64)

    def vectors(self):
        weights = self.layer.initial_state.weights
        return {w.name.removesuffix("0"): w.numpy() for w in weights if w.name != "std_raw"}

    def save_load(self):
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "stream.keras")
            self.model.save(path)
            return _KerasStream(self.fw, self.fw.keras.models.load_model(path), self.cell)


class _KerasNoisy:
    def __init__(self, fw, cell, features, sigma, seed):
        keras = fw.keras
        keras.utils.set_random_seed(0)
        self.fw, self.kind, self.sigma = fw, cell, sigma
        self.bare = fw.cells[cell](features)
        noisy = fw.ri.NoisyCell(self.bare, noise_std=sigma, seed=seed)
        self.layer = fw.ri.InitialStateRNN(keras.layers.RNN(noisy, return_sequences=True), "zero")

    def noise_std(self):
        return float(self.layer.layer.cell.noise_std)

    def set_noise_std(self, value):
        self.layer.layer.cell.set_noise_std(value)
        self.sigma = value

    def run(self, x, training):
        from reference_impl import tensorflow as module

        seen, original = [], module._append_noise

        def spy(sequences, cells):
            out = original(sequences, cells)
            seen.append(np.asarray(out)[..., sequences.shape[-1] :])
            return out

        module._append_noise = spy
        try:
            out = np.asarray(self.layer(np.asarray(x, np.float32), training=training), np.float64)
        finally:
            module._append_noise = original
        return out, (seen[0] / self.sigma if seen else None)

    def bare_run(self, x):
        rnn = self.fw.keras.layers.RNN(self.bare, return_sequences=True)
        return np.asarray(rnn(np.asarray(x, np.float32)), np.float64)

    def step(self, x_t, state):
        parts = state if isinstance(state, tuple) else (state,)
        parts = [np.asarray(p, np.float32) for p in parts]
        out, new = self.bare(np.asarray(x_t, np.float32), parts if len(parts) > 1 else parts[0])
        new = tuple(np.asarray(n) for n in (new if isinstance(new, (list, tuple)) else [new]))
        return np.asarray(out), (new if len(new) > 1 else new[0])


# --------------------------------------------------------------------------- Flax


def _pick(carry, name, kind):
    """Component ``name`` of one Flax carry (an LSTM carries ``(c, h)``)."""
    if kind != "lstm":
        return carry
    return carry[1] if name == "h" else carry[0]


def _flax_rows(carry, kind, directions):
    """A Flax carry ((c, h) for an LSTM; a pair per direction) -> neutral numpy rows."""
    return {
        k: np.asarray(v, np.float64) for k, v in _flax_rows_jnp(carry, kind, directions).items()
    }


def _flax_carry(rows, kind, directions):
    import jax.numpy as jnp

    def one(d):
        if kind == "lstm":
            return (jnp.asarray(rows["c"][d]), jnp.asarray(rows["h"][d]))
        return jnp.asarray(rows["h"][d])

    return one(0) if directions == 1 else (one(0), one(1))


class Linen:
    name = "linen"

    def __init__(self) -> None:
        import jax
        from flax import linen as nn

        from reference_impl.flax import linen as ri

        self.jax, self.nn, self.ri = jax, nn, ri
        self.cells = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.SimpleCell}

    def initial_state(self, strategy, cell, features, directions, seed=None, **options):
        module = self.ri.InitialState(
            strategy, cell=cell, features=features, bidirectional=directions == 2, **options
        )
        return _LinenState(self, module, cell, directions, 0 if seed is None else seed)

    def model(self, cell, features, layers, directions, strategy, seed=0, **options):
        nn = self.nn

        def layer():
            if directions == 2:
                return nn.Bidirectional(
                    nn.RNN(self.cells[cell](features)), nn.RNN(self.cells[cell](features))
                )
            return self.cells[cell](features)

        rnn = [layer() for _ in range(layers)] if layers > 1 else layer()
        module = self.ri.InitialStateRNN(rnn, strategy, **options)
        return _LinenModel(self, module, cell, layers, directions, seed)

    def noisy_cell(self, cell, features, sigma, seed=0):
        return _LinenNoisy(self, cell, features, sigma, seed)

    def stream(self, cell, features, strategy, seed=0, **options):
        module = self.ri.InitialStateRNN(self.cells[cell](features), strategy, **options)
        return _LinenStream(self, module, cell, seed)

    def bare_run(self, cell, features, directions, x):
        nn, make = self.nn, lambda: self.cells[cell](features)  # noqa: E731
        rnn = nn.RNN(make())
        rnn = nn.Bidirectional(rnn, nn.RNN(make())) if directions == 2 else rnn
        x = np.asarray(x, np.float32)
        return np.asarray(rnn.apply(rnn.init(self.jax.random.key(0), x), x))


class _LinenState:
    def __init__(self, fw, module, cell, directions, seed, variables=None):
        self.fw, self.module, self.cell, self.directions = fw, module, cell, directions
        jax = fw.jax
        self.keys = (jax.random.key(seed + 1000 * i) for i in itertools.count(1))
        self.variables = variables or module.init(jax.random.key(seed), (1,), deterministic=True)

    def draw(self, batch, training=False):
        rngs = {"initial_state": next(self.keys), "noise": next(self.keys)}
        carry = self.module.apply(self.variables, (batch,), deterministic=not training, rngs=rngs)
        return _flax_rows(carry, self.cell, self.directions)

    def vectors(self):
        out = {}
        for collection in self.variables.values():
            out.update({k: np.asarray(v, np.float64) for k, v in collection.items()})
        return out

    def grads(self, batch, weights):
        jax, jnp = self.fw.jax, self.fw.jax.numpy
        rngs = {"initial_state": next(self.keys), "noise": next(self.keys)}

        def loss(params):
            variables = {**self.variables, "params": params}
            carry = self.module.apply(variables, (batch,), deterministic=False, rngs=rngs)
            rows = _flax_rows_jnp(carry, self.cell, self.directions)
            return sum(jnp.sum(rows[n] * weights[n]) for n in rows)

        grads = jax.grad(loss)(self.variables["params"])
        return {k: np.asarray(v, np.float64) for k, v in grads.items()}

    def noise_std(self):
        from reference_impl import spec

        options = self.module.options
        rule = spec.NoiseStd(options["noise_std"], options["learnable_std"], options["min_std"])
        if not rule.learnable:
            return rule.std
        return float(rule.from_raw(self.variables["params"]["std_raw"], self.fw.jax.nn.softplus))

    def set_noise_std(self, value):
        """Linen's idiom: a learnable sigma is the parameter ``std_raw``; a fixed one is
        the module's option, so a new value is a new module over the same variables."""
        from reference_impl import spec

        options = dict(self.module.options)
        rule = spec.NoiseStd(options["noise_std"], options["learnable_std"], options["min_std"])
        if rule.learnable:
            params = dict(
                self.variables["params"], std_raw=self.fw.jax.numpy.asarray(rule.raw(value))
            )
            self.variables = {**self.variables, "params": params}
        else:
            rule.raw(value)  # validated
            self.module = self.module.clone(options={**options, "noise_std": float(value)})

    def save_load(self):
        from flax import serialization

        blob = serialization.to_bytes(self.variables)
        fresh = self.module.init(self.fw.jax.random.key(12345), (1,), deterministic=True)
        restored = serialization.from_bytes(fresh, blob)
        return _LinenState(self.fw, self.module, self.cell, self.directions, 7, restored)


def _flax_rows_jnp(carry, kind, directions):
    import jax.numpy as jnp

    carries = carry if directions == 2 else (carry,)
    return {name: jnp.stack([_pick(c, name, kind) for c in carries]) for name in NAMES[kind]}


class _LinenModel:
    def __init__(self, fw, module, cell, layers, directions, seed):
        self.fw, self.module, self.cell = fw, module, cell
        self.layers, self.directions = layers, directions
        x = np.zeros((1, 2, 2), np.float32)
        self.variables = module.init(fw.jax.random.key(seed), x)

    def run(self, x, training=False, state=None):
        carry = None
        if state is not None:
            carries = [_flax_carry(s, self.cell, self.directions) for s in state]
            carry = tuple(carries) if self.layers > 1 else carries[0]
        rngs = {"initial_state": self.fw.jax.random.key(1), "noise": self.fw.jax.random.key(2)}
        out = self.module.apply(
            self.variables,
            np.asarray(x, np.float32),
            initial_carry=carry,
            deterministic=not training,
            rngs=rngs,
        )
        return np.asarray(out, np.float64)

    def vectors(self):
        out = []
        for i in range(self.layers):
            name = f"initial_state_{i}" if self.layers > 1 else "initial_state"
            rows = {}
            for collection in self.variables.values():
                rows.update({k: np.asarray(v) for k, v in collection.get(name, {}).items()})
            out.append(rows)
        return out


def _flax_state(carry, cell):
    return {n: np.asarray(_pick(carry, n, cell), np.float64)[None] for n in NAMES[cell]}


class _FlaxStream:
    """Flax's idiom (linen and NNX): the carry returned with ``return_carry=True`` goes
    back in as ``initial_carry``; ``None`` (a reset) starts from the strategy's state.
    Each API supplies ``_apply(x, carry, training) -> (carry, y)``."""

    carry = None

    def chunk(self, x, training=False):
        self.carry, y = self._apply(x, self.carry, training)
        return np.asarray(y, np.float64)

    def reset(self):
        self.carry = None

    def carried(self):
        return _flax_state(self.carry, self.cell)

    def explicit(self, x, state):
        carry = _flax_carry({n: v[:1] for n, v in state.items()}, self.cell, 1)
        return np.asarray(self._apply(x, carry, False)[1], np.float64)


class _LinenStream(_FlaxStream):
    """linen: variables and rng keys passed to ``apply``."""

    def __init__(self, fw, module, cell, seed, variables=None):
        self.fw, self.module, self.cell, self.carry = fw, module, cell, None
        self.keys = (fw.jax.random.key(seed + 1000 * i) for i in itertools.count(1))
        x = np.zeros((1, 2, 2), np.float32)
        self.variables = variables or module.init(fw.jax.random.key(seed), x)

    def _apply(self, x, carry, training):
        rngs = {"initial_state": next(self.keys), "noise": next(self.keys)}
        x = np.asarray(x, np.float32)
        return self.module.apply(
            self.variables,
            x,
            initial_carry=carry,
            return_carry=True,
            deterministic=not training,
            rngs=rngs,
        )

    def vectors(self):
        params = self.variables.get("params", {}).get("initial_state", {})
        return {k: np.asarray(v) for k, v in params.items() if k != "std_raw"}

    def save_load(self):
        from flax import serialization

        blob = serialization.to_bytes(self.variables)
        fresh = self.module.init(self.fw.jax.random.key(12345), np.zeros((1, 2, 2), np.float32))
        restored = serialization.from_bytes(fresh, blob)
        return _LinenStream(self.fw, self.module, self.cell, 7, restored)


class _LinenNoisy:
    def __init__(self, fw, cell, features, sigma, seed):
        self.fw, self.kind, self.sigma = fw, cell, sigma
        self.bare = fw.cells[cell](features)
        self.noisy = fw.ri.NoisyCell(self.bare, noise_std=sigma)
        self.model = fw.ri.InitialStateRNN(self.noisy, "zero")
        x = np.zeros((1, 2, 2), np.float32)
        self.variables = self.model.init(fw.jax.random.key(seed), x)
        self.params = self.variables["params"]["rnn"]["cell"]["cell"]

    def noise_std(self):
        return float(self.noisy.noise_std)

    def set_noise_std(self, value):
        """Linen's idiom: sigma is a module field, so a new value is a new module (same
        variables: a fixed sigma is not one)."""
        self.noisy = self.fw.ri.NoisyCell(self.bare, noise_std=value)
        self.model, self.sigma = self.fw.ri.InitialStateRNN(self.noisy, "zero"), value

    def run(self, x, training):
        return _spy_flax(
            lambda: self.model.apply(
                self.variables,
                np.asarray(x, np.float32),
                deterministic=not training,
                rngs={"noise": self.fw.jax.random.key(3)},
            ),
            self.sigma,
        )

    def bare_run(self, x):
        rnn = self.fw.nn.RNN(self.bare)
        return np.asarray(
            rnn.apply({"params": {"cell": self.params}}, np.asarray(x, np.float32)), np.float64
        )

    def step(self, x_t, state):
        carry = (state[1], state[0]) if self.kind == "lstm" else state
        carry, out = self.bare.apply({"params": self.params}, carry, np.asarray(x_t, np.float32))
        new = (
            (np.asarray(carry[1]), np.asarray(carry[0]))
            if self.kind == "lstm"
            else np.asarray(carry)
        )
        return np.asarray(out), new


def _spy_flax(call, sigma):
    """Run ``call`` and return its outputs and the pre-drawn noise it used (or None)."""
    from reference_impl.flax import _common

    seen, original = [], _common.append_noise

    def spy(inputs, key, info):
        out = original(inputs, key, info)
        seen.append(np.asarray(out[..., inputs.shape[-1] :]))
        return out

    _common.append_noise = spy
    try:
        out = np.asarray(call(), np.float64)
    finally:
        _common.append_noise = original
    return out, (seen[-1] if seen else None)


class NNX:
    name = "nnx"

    def __init__(self) -> None:
        import jax
        from flax import nnx

        from reference_impl.flax import nnx as ri

        self.jax, self.nnx, self.ri = jax, nnx, ri
        self.cells = {"gru": nnx.GRUCell, "lstm": nnx.LSTMCell, "rnn": nnx.SimpleCell}

    def initial_state(self, strategy, cell, features, directions, seed=None, **options):
        module = self.ri.InitialState(
            strategy,
            cell=cell,
            features=features,
            bidirectional=directions == 2,
            seed=0 if seed is None else seed,
            **options,
        )
        return _NNXState(self, module, cell, directions)

    def model(self, cell, features, layers, directions, strategy, seed=0, **options):
        nnx, rngs = self.nnx, self.nnx.Rngs(0)

        def layer(fin):
            make = lambda: self.cells[cell](fin, features, rngs=rngs)  # noqa: E731
            if directions == 2:
                return nnx.Bidirectional(nnx.RNN(make()), nnx.RNN(make()))
            return make()

        rnn = [layer(2 if i == 0 else features * directions) for i in range(layers)]
        module = self.ri.InitialStateRNN(
            rnn if layers > 1 else rnn[0], strategy, seed=seed, **options
        )
        return _NNXModel(self, module, cell, layers, directions)

    def noisy_cell(self, cell, features, sigma, seed=0):
        return _NNXNoisy(self, cell, features, sigma, seed)

    def stream(self, cell, features, strategy, seed=0, **options):
        rnn = self.cells[cell](2, features, rngs=self.nnx.Rngs(0))
        module = self.ri.InitialStateRNN(rnn, strategy, seed=seed, **options)
        return _NNXStream(self, module, cell)

    def bare_run(self, cell, features, directions, x):
        nnx, rngs = self.nnx, self.nnx.Rngs(0)
        make = lambda: nnx.RNN(self.cells[cell](x.shape[-1], features, rngs=rngs))  # noqa: E731
        rnn = nnx.Bidirectional(make(), make()) if directions == 2 else make()
        return np.asarray(rnn(np.asarray(x, np.float32)))


class _NNXState:
    def __init__(self, fw, module, cell, directions):
        self.fw, self.module, self.cell, self.directions = fw, module, cell, directions

    def draw(self, batch, training=False):
        self.module.set_view(deterministic=not training)
        return _flax_rows(self.module((batch,)), self.cell, self.directions)

    def vectors(self):
        out = {}
        for name in ("h", "c", "std_raw"):
            if hasattr(self.module, name):
                out[name] = np.asarray(getattr(self.module, name)[...], np.float64)
        return out

    def grads(self, batch, weights):
        nnx, jnp = self.fw.nnx, self.fw.jax.numpy
        self.module.set_view(deterministic=False)

        def loss(module):
            rows = _flax_rows_jnp(module((batch,)), self.cell, self.directions)
            return sum(jnp.sum(rows[n] * weights[n]) for n in rows)

        grads = nnx.grad(loss)(self.module)
        return {
            k: np.asarray(getattr(grads, k)[...], np.float64)
            for k in self.vectors()
            if hasattr(grads, k)
        }

    def noise_std(self):
        return float(self.module.noise_std)

    def set_noise_std(self, value):
        self.module.set_noise_std(value)

    def save_load(self):
        m = self.module
        fresh = type(m)(
            m.strategy,
            cell=m.cell,
            features=m.features,
            bidirectional=m.bidirectional,
            **{**m.options, "seed": 12345},
        )
        nnx = self.fw.nnx
        saved = nnx.to_pure_dict(nnx.state(m))  # what a checkpoint holds: plain arrays
        state = nnx.state(fresh)
        nnx.replace_by_pure_dict(state, saved)
        nnx.update(fresh, state)
        return _NNXState(self.fw, fresh, self.cell, self.directions)


class _NNXModel:
    def __init__(self, fw, module, cell, layers, directions):
        self.fw, self.module, self.cell = fw, module, cell
        self.layers, self.directions = layers, directions

    def run(self, x, training=False, state=None):
        self.module.set_attributes(deterministic=not training, raise_if_not_found=False)
        carry = None
        if state is not None:
            carries = [_flax_carry(s, self.cell, self.directions) for s in state]
            carry = tuple(carries) if self.layers > 1 else carries[0]
        return np.asarray(self.module(np.asarray(x, np.float32), initial_carry=carry), np.float64)

    def vectors(self):
        states = list(self.module.initial_state) if self.layers > 1 else [self.module.initial_state]
        return [_NNXState(self.fw, s, self.cell, self.directions).vectors() for s in states]


class _NNXStream(_FlaxStream):
    """NNX: the module holds its state; training mode set on the module."""

    def __init__(self, fw, module, cell):
        self.fw, self.module, self.cell, self.carry = fw, module, cell, None

    def _apply(self, x, carry, training):
        self.module.set_attributes(deterministic=not training, raise_if_not_found=False)
        x = np.asarray(x, np.float32)
        return self.module(x, initial_carry=carry, return_carry=True)

    def vectors(self):
        return {
            n: np.asarray(getattr(self.module.initial_state, n)[...])
            for n in NAMES[self.cell]
            if hasattr(self.module.initial_state, n)
        }

    def save_load(self):
        nnx, m = self.fw.nnx, self.module
        fresh = self.fw.ri.InitialStateRNN(
            self.fw.cells[self.cell](2, m.infos[0].cell.features, rngs=nnx.Rngs(5)),
            m.strategy,
            **{**m.initial_state.options, "seed": 12345},
        )
        state = nnx.state(fresh)
        nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.state(m)))
        nnx.update(fresh, state)
        return _NNXStream(self.fw, fresh, self.cell)


class _NNXNoisy:
    def __init__(self, fw, cell, features, sigma, seed):
        nnx = fw.nnx
        self.fw, self.kind, self.sigma = fw, cell, sigma
        self.bare = fw.cells[cell](2, features, rngs=nnx.Rngs(0))
        noisy = fw.ri.NoisyCell(self.bare, noise_std=sigma, seed=seed)
        self.model = fw.ri.InitialStateRNN(noisy, "zero")

    def noise_std(self):
        return float(self.model.rnn.cell.noise_std)

    def set_noise_std(self, value):
        self.model.rnn.cell.set_noise_std(value)
        self.sigma = value

    def run(self, x, training):
        self.model.set_attributes(deterministic=not training, raise_if_not_found=False)
        return _spy_flax(lambda: self.model(np.asarray(x, np.float32)), self.sigma)

    def bare_run(self, x):
        return np.asarray(self.fw.nnx.RNN(self.bare)(np.asarray(x, np.float32)), np.float64)

    def step(self, x_t, state):
        carry = (state[1], state[0]) if self.kind == "lstm" else state
        carry, out = self.bare(carry, np.asarray(x_t, np.float32))
        new = (
            (np.asarray(carry[1]), np.asarray(carry[0]))
            if self.kind == "lstm"
            else np.asarray(carry)
        )
        return np.asarray(out), new


ADAPTERS = {"torch": Torch, "keras": Keras, "linen": Linen, "nnx": NNX}
