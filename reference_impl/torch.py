"""Initial states for PyTorch recurrent layers.

Use it as ``from reference_impl import torch as ri``::

    >>> import torch
    >>> from torch import nn
    >>> from reference_impl import torch as ri
    >>> model = ri.InitialStateRNN(nn.GRU(10, 32, num_layers=2, batch_first=True))
    >>> out, h_n = model(torch.randn(16, 20, 10))
    >>> out.shape, h_n.shape
    (torch.Size([16, 20, 32]), torch.Size([2, 16, 32]))
    >>> [tuple(p.shape) for p in model.initial_state.parameters()]
    [(2, 32)]

The strategies are defined in :mod:`reference_impl.spec`; this module implements
them with torch tensors, on the dtype and device of the input.

Export and serving: a wrapped layer exports like the bare one, with a dynamic batch,
through ``torch.export.export`` (default and strict), the dynamo ONNX exporter
(served by onnxruntime at any batch size) and ``torch.jit.trace`` (traced at one
batch size, run at another); every strategy that is deterministic in evaluation
(zero, learnable, noisy in ``eval()``, uniform and xavier with ``resample=False``).
``torch.jit.script`` is not supported (TorchScript is in maintenance; trace or
export instead). ``torch.compile(fullgraph=True)`` of any recurrent layer, wrapped or
not, needs ``torch._dynamo.config.allow_rnn = True``.
"""

from __future__ import annotations

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

__all__ = ["STRATEGIES", "InitialState", "InitialStateRNN", "NoisyCell"]

State = Tensor | tuple[Tensor, Tensor]

_MODES = {"GRU": "gru", "LSTM": "lstm", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}
_CELLS = {nn.GRUCell: "gru", nn.LSTMCell: "lstm", nn.RNNCell: "rnn"}


class _Generators:
    """One seeded ``torch.Generator`` per device, created on first use.

    With ``seed=None`` draws use torch's global generator (``torch.manual_seed``).
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._by_device: dict[str, torch.Generator] = {}

    def get(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._by_device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._by_device[key] = gen
        return self._by_device[key]


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    # Draw in float32 (or float64) and cast, so one seed gives the same numbers in
    # bfloat16/float16 as in float32, up to rounding.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _uniform(
    shape: tuple[int, ...],
    bound: float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    u = torch.rand(shape, dtype=_draw_dtype(dtype), device=device, generator=generator)
    return (u * (2 * bound) - bound).to(dtype)


def _normal(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    return torch.randn(shape, dtype=_draw_dtype(dtype), device=device, generator=generator).to(
        dtype
    )


def _exporting() -> bool:
    """True while torch.export, torch.compile, the ONNX exporters or jit.trace record."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _check_batch_size(batch_size: Any) -> Any:
    """A positive Python int, or a symbolic size while exporting or tracing.

    ``torch.export`` and the dynamo ONNX exporter pass a ``torch.SymInt`` for a
    dynamic batch; ``torch.jit.trace`` and the TorchScript ONNX exporter pass a
    0-d integer tensor. Those are sizes of a real input and are taken as they are,
    so the exported program keeps the batch dynamic; anything else is checked.
    """
    if isinstance(batch_size, torch.SymInt):
        return batch_size
    if (
        isinstance(batch_size, Tensor)
        and batch_size.dim() == 0
        and not batch_size.is_floating_point()
        and _exporting()
    ):
        return batch_size
    return spec.check_positive_int("batch_size", batch_size)


class InitialState(nn.Module):
    """Produces the initial state of a PyTorch recurrent layer with one strategy.

    ``init(batch_size, like=x)`` returns exactly what ``nn.GRU``/``nn.RNN`` take as
    ``h0`` (shape ``(num_layers * num_directions, batch, hidden_size)``) or what
    ``nn.LSTM`` takes as ``(h0, c0)`` (``h0`` has ``proj_size`` features when
    ``proj_size > 0``), on the dtype and device of ``like``.

    Args:
        strategy: one of :data:`reference_impl.STRATEGIES`.
        hidden_size, num_layers, bidirectional, proj_size: the recurrent layer's sizes.
        cell: ``"gru"``, ``"lstm"`` or ``"rnn"``.
        **options: the strategy's options (see :data:`reference_impl.spec.OPTIONS`):
            ``bound`` (uniform), ``gain`` (xavier), ``resample`` (uniform, xavier),
            ``init`` (learnable: ``"zeros"``, ``"uniform"``, ``"xavier"`` or a callable
            applied in place to each ``(rows, features)`` parameter), ``noise_std``,
            ``learnable_std``, ``min_std``, ``base`` (noisy), ``seed`` (random ones).

    >>> init = InitialState("xavier", hidden_size=64, cell="lstm", seed=0)
    >>> h0, c0 = init(batch_size=8)
    >>> h0.shape, bool(h0.abs().max() <= spec.xavier_bound(64))
    (torch.Size([1, 8, 64]), True)
    """

    def __init__(
        self,
        strategy: str,
        *,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        cell: str = "gru",
        proj_size: int = 0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.strategy = spec.check_strategy(strategy)
        self.cell = spec.check_cell(cell)
        self.hidden_size = spec.check_positive_int("hidden_size", hidden_size)
        self.num_layers = spec.check_positive_int("num_layers", num_layers)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False; got {bidirectional!r}")
        self.bidirectional = bidirectional
        self.proj_size = spec.check_positive_int("proj_size", proj_size, allow_zero=True)
        self.features = spec.component_features(self.cell, self.hidden_size, self.proj_size)
        self.rows = self.num_layers * (2 if bidirectional else 1)
        self.options = spec.resolve_options(self.strategy, options)
        self._generators = _Generators(self.options.get("seed"))

        opts = self.options
        learnable_base = strategy == "learnable" or (
            strategy == "noisy" and opts["base"] == "learnable"
        )
        # draws made once, at construction (learnable inits, resample=False), on the CPU
        gen = torch.Generator().manual_seed(opts["seed"]) if opts["seed"] is not None else None
        if learnable_base:
            init = opts["init"] if strategy == "learnable" else "zeros"
            for name, f in zip(self._names(), self.features, strict=True):
                param = nn.Parameter(torch.zeros(self.rows, f))
                self._fill(param, init, f, gen)
                self.register_parameter(name, param)
        elif strategy in ("uniform", "xavier") and not opts["resample"]:
            # Sampled once, stored (saved in state_dict, not trained), broadcast.
            for name, f in zip(self._names(), self.features, strict=True):
                vec = _uniform(
                    (self.rows, f), self._bound(f), torch.float32, torch.device("cpu"), gen
                )
                self.register_buffer(name, vec)
        if strategy == "noisy":
            if opts["learnable_std"]:
                rho = spec.inverse_softplus(opts["noise_std"] - opts["min_std"])
                self.std_raw = nn.Parameter(torch.tensor(rho))
            else:
                self.register_buffer("std_raw", torch.tensor(float(opts["noise_std"])))

    # ------------------------------------------------------------------ helpers

    def _names(self) -> tuple[str, ...]:
        return ("h0", "c0")[: len(self.features)]

    def _bound(self, features: int) -> float:
        if self.strategy == "uniform":
            return spec.uniform_bound(features, self.options["bound"])
        return spec.xavier_bound(features, self.options["gain"])

    @staticmethod
    def _fill(param: Tensor, init: str | Callable, features: int, gen: torch.Generator | None):
        with torch.no_grad():
            if callable(init):
                result = init(param)
                if isinstance(result, Tensor) and result is not param:
                    if result.shape != param.shape:
                        raise ValueError(
                            f"init returned shape {tuple(result.shape)}; expected "
                            f"{tuple(param.shape)}"
                        )
                    param.copy_(result)
            elif init == "uniform":
                b = spec.uniform_bound(features)
                param.copy_(_uniform(tuple(param.shape), b, param.dtype, param.device, gen))
            elif init == "xavier":
                b = spec.xavier_bound(features)
                param.copy_(_uniform(tuple(param.shape), b, param.dtype, param.device, gen))

    @property
    def noise_std(self) -> Tensor:
        """The current noise standard deviation (noisy strategy), a scalar tensor."""
        if self.strategy != "noisy":
            raise AttributeError(f"strategy {self.strategy!r} has no noise_std")
        if self.options["learnable_std"]:
            return self.options["min_std"] + nn.functional.softplus(self.std_raw)
        return self.std_raw

    def set_noise_std(self, value: float) -> None:
        """Set sigma (for a schedule); a learnable sigma is re-parametrized to ``value``."""
        if self.strategy != "noisy":
            raise AttributeError(f"strategy {self.strategy!r} has no noise_std")
        spec.check_noise_std(value, self.options["learnable_std"], self.options["min_std"])
        with torch.no_grad():
            if self.options["learnable_std"]:
                self.std_raw.fill_(spec.inverse_softplus(value - self.options["min_std"]))
            else:
                self.std_raw.fill_(float(value))

    def _expand(self, vec: Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        state = vec.to(device=device, dtype=dtype).unsqueeze(1).expand(-1, batch, -1)
        # cuDNN (and other fused GPU kernels) need a contiguous hx; on CPU the
        # broadcast view is read as it is, with no copy. An exported or compiled graph
        # gets a contiguous state too: the ONNX LSTM loop requires its carried state
        # to have the strides of the states it produces.
        if state.device.type == "cpu" and not _exporting():
            return state
        return state.contiguous()

    # ------------------------------------------------------------------ call

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
        if like is not None:
            dtype = dtype or like.dtype
            device = device or like.device
        if dtype is None:
            dtype = next((t.dtype for t in self._tensors()), torch.float32)
        if not dtype.is_floating_point:
            raise TypeError(f"the initial state needs a floating dtype; got {dtype}")
        if device is None:
            device = next((t.device for t in self._tensors()), torch.device("cpu"))
        device = torch.device(device)

        states = []
        for name, f in zip(self._names(), self.features, strict=True):
            shape = (self.rows, batch, f)
            s = self.strategy
            if s == "zero" or (s == "noisy" and self.options["base"] == "zero"):
                state = torch.zeros(shape, dtype=dtype, device=device)
            elif s in ("uniform", "xavier") and self.options["resample"]:
                gen = self._generators.get(device)
                state = _uniform(shape, self._bound(f), dtype, device, gen)
            else:  # learnable, noisy(base=learnable), or a stored draw
                state = self._expand(getattr(self, name), batch, dtype, device)
            if s == "noisy" and self.training:
                gen = self._generators.get(device)
                std = self.noise_std.to(device=device, dtype=dtype)
                state = state + std * _normal(shape, dtype, device, gen)
            states.append(state)
        return states[0] if len(states) == 1 else (states[0], states[1])

    def _tensors(self):
        yield from self.parameters()
        yield from self.buffers()

    def forward(self, batch_size: int, like: Tensor | None = None) -> State:
        """Same as :meth:`init`."""
        return self.init(batch_size, like)

    def extra_repr(self) -> str:
        opts = {k: v for k, v in self.options.items() if v is not None}
        text = ", ".join(f"{k}={v!r}" for k, v in opts.items())
        return (
            f"{self.strategy!r}, cell={self.cell!r}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"proj_size={self.proj_size}" + (f", {text}" if text else "")
        )


def _rnn_kind(rnn: nn.Module) -> str:
    if isinstance(rnn, nn.RNNBase) and getattr(rnn, "mode", None) in _MODES:
        return _MODES[rnn.mode]
    supported = "torch.nn.GRU, torch.nn.LSTM or torch.nn.RNN"
    hint = ""
    if type(rnn) in _CELLS:
        hint = " (a single cell: wrap it in reference_impl.torch.NoisyCell, or use the layer)"
    raise TypeError(f"InitialStateRNN wraps {supported}; got {type(rnn).__name__}{hint}")


class InitialStateRNN(nn.Module):
    """Wraps an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` and gives it an initial-state strategy.

    ``model(x)`` returns what the wrapped layer returns, with the state made by
    ``model.initial_state``; ``model(x, hx)`` uses ``hx`` as given. The wrapped
    layer runs once over the whole sequence (cuDNN on GPU), never in a Python loop.
    Works with ``batch_first``, bidirectional and stacked layers, ``proj_size``,
    unbatched 2-D input and ``PackedSequence``.

    >>> model = InitialStateRNN(nn.LSTM(10, 32), strategy="noisy", noise_std=0.1)
    >>> out, (h, c) = model.eval()(torch.randn(20, 16, 10))
    >>> out.shape, h.shape, c.shape
    (torch.Size([20, 16, 32]), torch.Size([1, 16, 32]), torch.Size([1, 16, 32]))
    """

    def __init__(self, rnn: nn.Module, strategy: str = "learnable", **options: Any) -> None:
        super().__init__()
        kind = _rnn_kind(rnn)
        self.rnn = rnn
        self.initial_state = InitialState(
            strategy,
            hidden_size=rnn.hidden_size,
            num_layers=rnn.num_layers,
            bidirectional=rnn.bidirectional,
            cell=kind,
            proj_size=getattr(rnn, "proj_size", 0),
            **options,
        )
        ref = next(rnn.parameters(), None)
        if ref is not None:
            self.initial_state.to(device=ref.device)

    @property
    def strategy(self) -> str:
        return self.initial_state.strategy

    def _check_state(self, hx: Any, batch: int | None) -> None:
        init = self.initial_state
        lstm = init.cell == "lstm"
        if lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"an LSTM state must be a tuple (h0, c0); got {type(hx).__name__}")
            parts = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"the state must be a tensor; got {type(hx).__name__}")
            parts = (hx,)
        for name, t, f in zip(("h0", "c0"), parts, init.features, strict=False):
            expected = (init.rows, f) if batch is None else (init.rows, batch, f)
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"explicit state {name} has shape {tuple(t.shape)}; expected {expected} "
                    "(num_layers * num_directions, batch, features)"
                )

    def forward(self, x: Tensor | PackedSequence, hx: State | None = None):
        rnn = self.rnn
        if isinstance(x, PackedSequence):
            batch, like = int(x.batch_sizes[0]), x.data
            unbatched = False
        elif isinstance(x, Tensor):
            if x.dim() not in (2, 3):
                raise ValueError(
                    f"input must be 3-D (batched) or 2-D (unbatched); got shape {tuple(x.shape)}"
                )
            unbatched = x.dim() == 2
            batch = 1 if unbatched else x.shape[0 if rnn.batch_first else 1]
            like = x
        else:
            raise TypeError(f"input must be a Tensor or PackedSequence; got {type(x).__name__}")
        if hx is not None:
            self._check_state(hx, None if unbatched else batch)
            return rnn(x, hx)
        hx = self.initial_state.init(batch, like=like)
        if unbatched:
            hx = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
        return rnn(x, hx)


class NoisyCell(nn.Module):
    """Per-step state noise around ``nn.GRUCell``, ``nn.LSTMCell`` or ``nn.RNNCell``.

    In training every step adds ``N(0, noise_std^2)`` noise to the carried state
    (each component of an LSTM state) before the wrapped cell reads it; in
    ``eval()`` the cell runs unchanged. ``learnable_std=True`` makes the std a
    parameter, ``min_std + softplus(rho)``, positive by construction.

    Call it like the wrapped cell for one step, or use :meth:`unroll` for a sequence.
    A cell is stepped in Python by construction: the fused layers cannot take noise
    between steps.

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
        spec.check_noise_std(noise_std, learnable_std, min_std)
        self.cell = cell
        self.kind = _CELLS[type(cell)]
        self.learnable_std = bool(learnable_std)
        self.min_std = float(min_std)
        self._generators = _Generators(seed)
        if learnable_std:
            self.std_raw = nn.Parameter(torch.tensor(spec.inverse_softplus(noise_std - min_std)))
        else:
            self.register_buffer("std_raw", torch.tensor(float(noise_std)))

    @property
    def noise_std(self) -> Tensor:
        if self.learnable_std:
            return self.min_std + nn.functional.softplus(self.std_raw)
        return self.std_raw

    def _noise(self, s: Tensor) -> Tensor:
        gen = self._generators.get(s.device)
        std = self.noise_std.to(dtype=s.dtype, device=s.device)
        return s + std * _normal(tuple(s.shape), s.dtype, s.device, gen)

    def forward(self, x: Tensor, hx: State | None = None) -> State:
        """One step: ``cell(x, hx + noise)`` in training, ``cell(x, hx)`` in eval."""
        if hx is None:
            hx = self.zero_state(x)
        if self.training:
            hx = tuple(self._noise(h) for h in hx) if isinstance(hx, tuple) else self._noise(hx)
        return self.cell(x, hx)

    def zero_state(self, x: Tensor) -> State:
        shape = (*x.shape[:-1], self.cell.hidden_size)
        h = torch.zeros(shape, dtype=x.dtype, device=x.device)
        return (h, h.clone()) if self.kind == "lstm" else h

    def unroll(
        self, x: Tensor, hx: State | None = None, *, batch_first: bool = False
    ) -> tuple[Tensor, State]:
        """Run the cell over a sequence; returns ``(outputs, final_state)``.

        ``x`` is ``(time, batch, features)`` (``(batch, time, features)`` with
        ``batch_first=True``) or unbatched ``(time, features)``; ``outputs`` stacks
        ``h`` of every step in the same layout.
        """
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be 3-D or 2-D; got shape {tuple(x.shape)}")
        time_dim = 1 if (batch_first and x.dim() == 3) else 0
        state = hx
        outs = []
        for x_t in x.unbind(time_dim):
            state = self(x_t, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        if not outs:
            raise ValueError("the input sequence has no time steps")
        return torch.stack(outs, time_dim), state
