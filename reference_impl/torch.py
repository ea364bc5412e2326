"""Initial states for PyTorch recurrent layers: ``from reference_impl import torch as ri``.

This module executes the plan of :func:`reference_impl.spec.make` with torch tensors,
on the input's dtype and device; :ref:`the API page's framework idioms <framework-idioms>` say
what follows PyTorch's idiom.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from reference_impl._extras import missing_framework

try:
    import torch
    from torch import Tensor, nn
    from torch.nn.utils.rnn import PackedSequence
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework(__name__, _error) from _error

from reference_impl import STRATEGIES, spec

__all__ = ["STRATEGIES", "InitialState", "InitialStateRNN", "NoisyCell", "StateShapeError"]

State = Tensor | tuple[Tensor, Tensor]

_MODES = {"GRU": "gru", "LSTM": "lstm", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}
_CELLS = {nn.GRUCell: "gru", nn.LSTMCell: "lstm", nn.RNNCell: "rnn"}


class StateShapeError(ValueError, RuntimeError):
    """A given ``hx`` of the wrong shape. A ``ValueError``, as in every framework of this
    package, and a ``RuntimeError``, as the bare ``nn.GRU``/``nn.LSTM``/``nn.RNN`` raise for
    it: code that catches either still catches it, and reads the clearer message.

    >>> model = InitialStateRNN(nn.GRU(2, 4))
    >>> try:
    ...     model(torch.zeros(5, 3, 2), torch.zeros(1, 7, 4))
    ... except RuntimeError as error:  # or ValueError
    ...     print(isinstance(error, ValueError), str(error).split("; ")[0])
    True initial state h0 has shape (1, 7, 4)
    """


class _Generators:
    """One ``torch.Generator`` per device seeded with ``seed``; ``None``: torch's global one."""

    def __init__(self, seed: int | None) -> None:
        self.seed, self._by_device = seed, {}

    def get(self, device: torch.device) -> torch.Generator | None:
        if self.seed is not None and str(device) not in self._by_device:
            self._by_device[str(device)] = torch.Generator(device=device).manual_seed(self.seed)
        return self._by_device.get(str(device))


def _draw(shape: tuple, dtype, device, gen, bound: float | None = None) -> Tensor:
    """``U(-bound, bound)``, or ``N(0, 1)`` without a bound. Drawn in float32 (or float64)
    and cast, so one seed gives the same numbers in bfloat16 as in float32, up to rounding."""
    as_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if bound is None:
        return torch.randn(shape, dtype=as_dtype, device=device, generator=gen).to(dtype)
    u = torch.rand(shape, dtype=as_dtype, device=device, generator=gen)
    return (u * (2 * bound) - bound).to(dtype)


def _fill(vec: Tensor, init: float | Callable | None, gen: torch.Generator | None) -> None:
    """Start a stored or trainable vector in place, as ``plan.vector_init`` says: zeros
    (``None``), a ``U(-b, b)`` draw (a float ``b``) or the user's callable."""
    with torch.no_grad():
        if callable(init):
            result = init(vec)
            if isinstance(result, Tensor) and result is not vec:
                spec.check_init_result(result.shape, vec.shape)
                vec.copy_(result)
        elif init is not None:
            vec.copy_(_draw(tuple(vec.shape), vec.dtype, vec.device, gen, init))


def _exporting() -> bool:
    """True while torch.export, torch.compile, the ONNX exporters or jit.trace record."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _check_batch_size(batch_size: Any) -> Any:
    """An int >= 0 (0: an empty batch, which the layers run), or (exporting, tracing) a
    ``SymInt`` or 0-d integer tensor: a real input's size, kept so the batch stays dynamic."""
    if isinstance(batch_size, torch.SymInt):
        return batch_size
    if isinstance(batch_size, Tensor) and batch_size.dim() == 0 and _exporting():
        if not batch_size.is_floating_point():
            return batch_size
    return spec.check_positive_int("batch_size", batch_size, allow_zero=True)


class _NoiseStd:
    """``noise_std`` and ``set_noise_std``; ``std_raw`` is a parameter if learnable."""

    def _register_std(self, rule: spec.NoiseStd | None) -> None:
        self._rule = rule
        if rule is not None:
            raw = torch.tensor(rule.raw())
            if rule.learnable:
                self.register_parameter("std_raw", nn.Parameter(raw))
            else:
                self.register_buffer("std_raw", raw)

    def _noise_rule(self) -> spec.NoiseStd:
        if self._rule is None:
            raise AttributeError(f"strategy {self.strategy!r} has no noise_std")
        return self._rule

    @property
    def noise_std(self) -> Tensor:
        """The current noise standard deviation, a scalar tensor."""
        return self._noise_rule().from_raw(self.std_raw, nn.functional.softplus)

    def set_noise_std(self, value: float) -> None:
        """Set sigma (for a schedule); a learnable sigma is re-parametrized to ``value``."""
        raw = self._noise_rule().raw(value)
        with torch.no_grad():
            self.std_raw.fill_(raw)


class InitialState(_NoiseStd, nn.Module):
    """Produces the initial state of a PyTorch recurrent layer with one strategy.

    ``init(batch_size, like=x)`` returns the ``h0`` of ``nn.GRU``/``nn.RNN``,
    ``(num_layers * num_directions, batch, hidden_size)``, or the ``(h0, c0)`` of
    ``nn.LSTM`` (``h0`` with ``proj_size`` features if set), on ``like``'s dtype and
    device.

    >>> init = InitialState("xavier", hidden_size=64, cell="lstm", seed=0)
    >>> h0, c0 = init(batch_size=8)
    >>> h0.shape, bool(h0.abs().max() <= spec.xavier_bound(64))
    (torch.Size([1, 8, 64]), True)
    """

    def __init__(
        self,
        strategy: str | spec.Strategy = "zero",
        *,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        cell: str = "gru",
        proj_size: int = 0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.plan = spec.make(strategy, **options)
        self.strategy, self.options = self.plan.name, self.plan.options()
        self.cell = spec.check_cell(cell)
        self.hidden_size = spec.check_positive_int("hidden_size", hidden_size)
        self.num_layers = spec.check_positive_int("num_layers", num_layers)
        self.bidirectional = spec.check_bool("bidirectional", bidirectional)
        self.proj_size = spec.check_positive_int("proj_size", proj_size, allow_zero=True)
        self.features = spec.component_features(self.cell, self.hidden_size, self.proj_size)
        self.rows = self.num_layers * (2 if self.bidirectional else 1)
        self._generators = _Generators(self.plan.seed)
        source, seed = self.plan.source, self.plan.seed
        if source in ("stored", "param"):  # drawn once, here, on the CPU
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            for name, f in zip(self._names(), self.features, strict=True):
                vec = torch.zeros(self.rows, f)
                vec = nn.Parameter(vec) if source == "param" else vec
                _fill(vec, self.plan.vector_init(f), gen)
                register = self.register_parameter if source == "param" else self.register_buffer
                register(name, vec)
        self._register_std(self.plan.noise)

    def _names(self) -> tuple[str, ...]:
        return ("h0", "c0")[: len(self.features)]

    def _base(self, name: str, features: int, batch: Any, dtype, device) -> Tensor:
        """One component before noise, from ``plan.source``."""
        shape = (self.rows, batch, features)
        if self.plan.source == "zeros":
            return torch.zeros(shape, dtype=dtype, device=device)
        if self.plan.source == "draw":
            bound = self.plan.draw_bound(features)
            return _draw(shape, dtype, device, self._generators.get(device), bound)
        state = getattr(self, name).to(device=device, dtype=dtype)
        state = state.unsqueeze(1).expand(-1, batch, -1)
        # cuDNN (and other fused GPU kernels) need a contiguous hx; on CPU the broadcast
        # view is read as it is. An exported or compiled graph gets a contiguous state
        # too: the ONNX LSTM loop needs its carried state strided like its outputs.
        return state if state.device.type == "cpu" and not _exporting() else state.contiguous()

    def init(
        self,
        batch_size: int,
        like: Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> State:
        """The initial state for ``batch_size`` rows, on ``like``'s dtype and device.

        Without ``like`` the state is float32 on the module's device (or the given
        ``dtype``/``device``).
        """
        batch = _check_batch_size(batch_size)
        mine = [*self.parameters(), *self.buffers()]
        dtype = dtype or (like.dtype if like is not None else None)
        dtype = dtype or next((t.dtype for t in mine), torch.float32)
        if not dtype.is_floating_point:
            raise TypeError(f"the initial state needs a floating dtype; got {dtype}")
        device = device or (like.device if like is not None else None)
        device = torch.device(device or next((t.device for t in mine), "cpu"))
        states = []
        for name, f in zip(self._names(), self.features, strict=True):
            state = self._base(name, f, batch, dtype, device)
            if self._rule is not None and self.training:
                std = self.noise_std.to(device=device, dtype=dtype)
                gen = self._generators.get(device)
                state = state + std * _draw((self.rows, batch, f), dtype, device, gen)
            states.append(state)
        return states[0] if len(states) == 1 else (states[0], states[1])

    def forward(self, batch_size: int, like: Tensor | None = None) -> State:
        """Same as :meth:`init`."""
        return self.init(batch_size, like)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items() if v is not None)
        return (
            f"{self.strategy!r}, cell={self.cell!r}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"proj_size={self.proj_size}{opts}"
        )


def _rnn_kind(rnn: nn.Module) -> str:
    if isinstance(rnn, nn.RNNBase) and getattr(rnn, "mode", None) in _MODES:
        return _MODES[rnn.mode]
    hint = " (a single cell: wrap it in reference_impl.torch.NoisyCell, or use the layer)"
    hint = hint if type(rnn) in _CELLS else ""
    raise TypeError(
        "InitialStateRNN wraps torch.nn.GRU, torch.nn.LSTM or torch.nn.RNN; "
        f"got {type(rnn).__name__}{hint}"
    )


class InitialStateRNN(nn.Module):
    """Wraps an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` and gives it an initial-state strategy.

    ``model(x)`` returns what the wrapped layer returns, started from
    ``model.initial_state``; ``model(x, hx)`` uses ``hx``. The layer runs once over the
    sequence (cuDNN on GPU), with ``batch_first``, bidirectional and stacked layers,
    ``proj_size``, unbatched input, ``PackedSequence`` and an empty batch. PyTorch has no
    cell protocol for its fused layers, so these three are what it wraps. A stream is
    carried by passing the returned state back in (``out, h = model(chunk, h)``);
    ``None`` starts from the strategy's state.

    >>> model = InitialStateRNN(nn.GRU(10, 32, num_layers=2, batch_first=True))
    >>> out, h_n = model(torch.randn(16, 20, 10))
    >>> out.shape, h_n.shape, model.initial_state.h0.shape
    (torch.Size([16, 20, 32]), torch.Size([2, 16, 32]), torch.Size([2, 32]))
    """

    def __init__(
        self, rnn: nn.Module, strategy: str | spec.Strategy = "learnable", **options: Any
    ) -> None:
        super().__init__()
        kind = _rnn_kind(rnn)
        self.rnn = rnn
        sizes = {k: getattr(rnn, k) for k in ("hidden_size", "num_layers", "bidirectional")}
        proj = getattr(rnn, "proj_size", 0)
        self.initial_state = InitialState(strategy, cell=kind, proj_size=proj, **sizes, **options)
        ref = next(rnn.parameters(), None)
        if ref is not None:
            self.initial_state.to(device=ref.device)

    @property
    def strategy(self) -> str:
        return self.initial_state.strategy

    def _check_state(self, hx: Any, batch: int | None) -> None:
        init, rows = self.initial_state, self.initial_state.rows
        slots = [
            spec.Slot(n, (rows, f) if batch is None else (rows, batch, f))
            for n, f in zip(init._names(), init.features, strict=True)
        ]
        hint = "num_layers * num_directions, batch, features"
        hint += "; an LSTM state is a tuple (h0, c0)" if init.cell == "lstm" else ""
        try:
            spec.check_given_state(hx, tuple(slots) if init.cell == "lstm" else slots[0], hint)
        except ValueError as error:  # a shape: also the RuntimeError the bare layer raises
            raise StateShapeError(str(error)) from None

    def forward(self, x: Tensor | PackedSequence, hx: State | None = None):
        """The wrapped layer's ``(output, h_n)`` from the strategy's state, or from ``hx``
        when one is given (a state carried from the previous chunk)."""
        if isinstance(x, PackedSequence):
            batch, like, unbatched = int(x.batch_sizes[0]), x.data, False
        elif isinstance(x, Tensor):
            if x.dim() not in (2, 3):
                raise ValueError(
                    f"input must be 3-D (batched) or 2-D (unbatched); got shape {tuple(x.shape)}"
                )
            like, unbatched = x, x.dim() == 2
            batch = 1 if unbatched else x.shape[0 if self.rnn.batch_first else 1]
        else:
            raise TypeError(f"input must be a Tensor or PackedSequence; got {type(x).__name__}")
        if hx is not None:
            self._check_state(hx, None if unbatched else batch)
            return self.rnn(x, hx)
        hx = self.initial_state.init(batch, like=like)
        if unbatched:
            hx = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
        return self.rnn(x, hx)


def _parts(state: State) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _steps(cell, x, state, time_dim, noise=None) -> tuple[Tensor, State]:
    """The eager loop: ``cell`` over the steps of ``x``; with ``noise`` (``sigma * eps``,
    one ``(time, ...)`` tensor per state component), step ``t`` reads ``state + noise[t]``."""
    outs = []
    for t, x_t in enumerate(x.unbind(time_dim)):
        if noise is not None:
            noisy = tuple(s + n[t] for s, n in zip(_parts(state), noise, strict=True))
            state = noisy if isinstance(state, tuple) else noisy[0]
        state = cell(x_t, state)
        outs.append(_parts(state)[0])
    return torch.stack(outs, time_dim), state


_BLOCK = 10  # steps per compiled block: compile time grows with it, the speed-up saturates
_COMPILED: dict[str, Any] = {}  # "fn": _steps compiled, None once torch.compile failed


def _compiled_steps(cell, x, state, time_dim, noise) -> tuple[Tensor, State]:
    """``_steps`` as blocks of ``_BLOCK`` steps compiled by ``torch.compile``, leftover
    steps eagerly; the eager loop, with one warning, if compiling fails."""
    steps, outs = x.shape[time_dim], []
    for start in range(0, steps, _BLOCK):
        n = min(_BLOCK, steps - start)
        noise_n = [e.narrow(0, start, n) for e in noise]
        args = (cell, x.narrow(time_dim, start, n), state, time_dim, noise_n)
        if n < _BLOCK or _COMPILED.get("fn", True) is None:
            out, state = _steps(*args)
        else:
            try:
                if "fn" not in _COMPILED:
                    _COMPILED["fn"] = torch.compile(_steps)
                out, state = _COMPILED["fn"](*args)
            except Exception as error:
                out, state = _steps(*args)  # an error of the arguments raises here too
                _COMPILED["fn"], why = None, (str(error).strip().splitlines() or [""])[0]
                message = f"torch.compile failed ({type(error).__name__}: {why}); "
                warnings.warn(message + "NoisyCell.unroll steps eagerly", RuntimeWarning, 3)
        outs.append(out)
    return torch.cat(outs, time_dim), state


class NoisyCell(_NoiseStd, nn.Module):
    """Per-step state noise around ``nn.GRUCell``, ``nn.LSTMCell`` or ``nn.RNNCell``.

    In training every step adds ``N(0, sigma^2)`` noise to each state component
    before the cell reads it; in ``eval()`` the cell runs unchanged. Sigma follows
    :class:`reference_impl.spec.NoiseStd`; draws come from a generator seeded with
    ``seed``, or torch's global one. Call it for one step, or :meth:`unroll` a sequence.

    >>> cell = NoisyCell(nn.GRUCell(10, 32), noise_std=0.1)
    >>> out, h = cell.unroll(torch.randn(20, 4, 10))
    >>> out.shape, h.shape
    (torch.Size([20, 4, 32]), torch.Size([4, 32]))
    """

    def __init__(
        self,
        cell: nn.Module,
        noise_std: float = 0.1,
        learnable_std: bool = False,
        *,
        min_std: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if type(cell) not in _CELLS:
            raise TypeError(
                "NoisyCell wraps torch.nn.GRUCell, torch.nn.LSTMCell or torch.nn.RNNCell; "
                f"got {type(cell).__name__}"
            )
        rule = spec.NoiseStd(noise_std, learnable_std, min_std)
        self.cell, self.kind = cell, _CELLS[type(cell)]
        self.learnable_std, self.min_std = rule.learnable, rule.min_std
        self._generators = _Generators(spec.check_seed(seed))
        self._register_std(rule)

    def _noise(self, steps: int, state: State) -> list[Tensor]:
        """``sigma * eps`` for ``steps`` steps, one ``N(0, 1)`` draw per state component."""
        s = _parts(state)[0]
        gen = self._generators.get(s.device)
        std = self.noise_std.to(dtype=s.dtype, device=s.device)
        return [std * _draw((steps, *p.shape), p.dtype, p.device, gen) for p in _parts(state)]

    def forward(self, x: Tensor, hx: State | None = None) -> State:
        """One step: ``cell(x, hx + noise)`` in training, ``cell(x, hx)`` in eval."""
        hx = self.zero_state(x) if hx is None else hx
        if not self.training:
            return self.cell(x, hx)
        return _steps(self.cell, x.unsqueeze(0), hx, 0, self._noise(1, hx))[1]

    def zero_state(self, x: Tensor) -> State:
        h = torch.zeros((*x.shape[:-1], self.cell.hidden_size), dtype=x.dtype, device=x.device)
        return (h, h.clone()) if self.kind == "lstm" else h

    def unroll(
        self, x: Tensor, hx: State | None = None, *, batch_first: bool = False, compile=False
    ) -> tuple[Tensor, State]:
        """Run the cell over a sequence; returns ``(outputs, final_state)``.

        ``x`` is ``(time, batch, features)``, ``(batch, time, features)`` with
        ``batch_first=True``, or ``(time, features)``; ``outputs`` stacks every step's
        ``h`` in the same layout. In training the noise of all steps is drawn first, one
        ``(time, *batch, features)`` draw per component, and step ``t`` reads ``state +
        sigma * eps[t]``. ``compile=True`` steps blocks of 10 steps compiled by
        ``torch.compile`` (the same numbers up to rounding; the first compile takes
        seconds to a minute); if compiling fails it warns once and steps eagerly.
        """
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be 3-D or 2-D; got shape {tuple(x.shape)}")
        compile = spec.check_bool("compile", compile)
        time_dim = 1 if (batch_first and x.dim() == 3) else 0
        if x.shape[time_dim] == 0:
            raise ValueError("the input sequence has no time steps")
        state = self.zero_state(x.select(time_dim, 0)) if hx is None else hx
        if not self.training:
            return _steps(self.cell, x, state, time_dim)
        noise = self._noise(x.shape[time_dim], state)
        return (_compiled_steps if compile else _steps)(self.cell, x, state, time_dim, noise)
