"""reference_impl.torch against spec.py: values, statistics, gradients, round trips, errors."""

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reference_impl import STRATEGIES, spec
from reference_impl import torch as ri

LAYERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
EXACT = {"rtol": 0, "atol": 0}


def make(cell, *args, **kwargs):
    return LAYERS[cell](*args, **kwargs)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


# --------------------------------------------------------------------------- shapes


@settings(max_examples=30, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    cell=st.sampled_from(spec.CELLS),
    hidden=st.integers(2, 20),
    batch=st.integers(1, 7),
    layers=st.integers(1, 3),
    bidir=st.booleans(),
    proj=st.integers(0, 1),
)
def test_init_shapes_match_spec(strategy, cell, hidden, batch, layers, bidir, proj):
    proj_size = proj if cell == "lstm" else 0
    init = ri.InitialState(
        strategy,
        hidden_size=hidden,
        num_layers=layers,
        bidirectional=bidir,
        cell=cell,
        proj_size=proj_size,
    )
    state = as_tuple(init.init(batch))
    expected = spec.state_shapes(
        cell,
        hidden_size=hidden,
        batch_size=batch,
        num_layers=layers,
        bidirectional=bidir,
        proj_size=proj_size,
    )
    assert tuple(tuple(s.shape) for s in state) == expected
    assert all(s.dtype == torch.float32 for s in state)


@pytest.mark.parametrize("cell", spec.CELLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_state_is_accepted_by_the_layer_and_matches_bare_call(cell, strategy):
    torch.manual_seed(0)
    rnn = make(cell, 6, 12, num_layers=2, bidirectional=True, batch_first=True)
    model = ri.InitialStateRNN(rnn, strategy=strategy, seed=3)
    model.eval()  # noisy: the base state, deterministic
    if strategy == "learnable":
        with torch.no_grad():
            for p in model.initial_state.parameters():
                p.normal_()
    x = torch.randn(5, 7, 6)
    out, state = model(x)
    assert out.shape == (5, 7, 24)
    # the same computation done by hand: the layer called with the strategy's state
    if strategy in ("uniform", "xavier"):
        model.initial_state._generators = ri._Generators(3)
        hx = model.initial_state.init(5, like=x)
    else:
        hx = model.initial_state.init(5, like=x)
    ref_out, ref_state = rnn(x, hx)
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(as_tuple(state), as_tuple(ref_state), strict=True):
        torch.testing.assert_close(a, b)


def test_wrapped_layer_runs_once_per_call():
    rnn = nn.GRU(4, 8, num_layers=2)
    calls = []
    rnn.register_forward_hook(lambda *a: calls.append(1))
    model = ri.InitialStateRNN(rnn)
    model(torch.randn(50, 3, 4))
    assert len(calls) == 1


# --------------------------------------------------------------------------- values


def test_torch_xavier_uniform_on_the_state_depends_on_batch():
    """The widely copied mistake, measured: the package's bound does not move."""
    torch.manual_seed(0)
    stds = {}
    for batch in (4, 256):
        h = torch.empty(1, batch, 64)
        nn.init.xavier_uniform_(h)
        stds[batch] = h.std().item()
        assert h.abs().max() <= spec.naive_glorot_bound(h.shape)
        assert stds[batch] == pytest.approx(
            spec.uniform_std(spec.naive_glorot_bound(h.shape)), rel=0.1
        )
    assert stds[4] > 4 * stds[256]


@pytest.mark.parametrize("strategy", ["uniform", "xavier"])
def test_resample_true_draws_fresh_false_draws_once(strategy):
    torch.manual_seed(0)
    fresh = ri.InitialState(strategy, hidden_size=8)
    a, b = fresh.init(3), fresh.init(3)
    assert not torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])  # every row its own draw
    fixed = ri.InitialState(strategy, hidden_size=8, num_layers=2, resample=False)
    a, b = fixed.init(3), fixed.init(5)
    torch.testing.assert_close(a, b[:, :3])
    torch.testing.assert_close(a, a[:, :1].expand_as(a))
    assert not list(fixed.parameters())  # stored, not trained
    assert set(fixed.state_dict()) == {"h0"}
    bound = spec.uniform_bound(8) if strategy == "uniform" else spec.xavier_bound(8)
    assert a.abs().max() <= bound


@pytest.mark.parametrize("strategy", ["uniform", "xavier", "noisy"])
def test_seed_reproduces_draws(strategy):
    def draws(**kw):
        init = ri.InitialState(strategy, hidden_size=8, cell="lstm", **kw)
        return [torch.cat(init.init(4)) for _ in range(2)]

    a, b = draws(seed=7), draws(seed=7)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert not torch.equal(a[0], a[1])  # successive calls still differ
    assert not torch.equal(a[0], draws(seed=8)[0])
    torch.manual_seed(1)
    g1 = draws()
    torch.manual_seed(1)
    g2 = draws()
    torch.testing.assert_close(g1[0], g2[0])


def test_seeded_draws_are_these_generator_calls():
    """The exact torch calls behind seeded draws (saved models and outputs depend on them)."""

    def uniform(gen, *shape):
        b = spec.uniform_bound(shape[-1])
        return torch.rand(shape, generator=gen) * (2 * b) - b

    lstm = {"hidden_size": 4, "cell": "lstm", "proj_size": 2, "seed": 3}
    gen = torch.Generator().manual_seed(3)  # resample: per call, per component, h then c
    h, c = ri.InitialState("uniform", **lstm).init(2)
    torch.testing.assert_close((h, c), (uniform(gen, 1, 2, 2), uniform(gen, 1, 2, 4)), **EXACT)
    gen = torch.Generator().manual_seed(3)  # learnable init: at construction, h0 then c0
    init = ri.InitialState("learnable", init="uniform", **lstm)
    torch.testing.assert_close(
        (init.h0, init.c0), (uniform(gen, 1, 2), uniform(gen, 1, 4)), **EXACT
    )
    gen = torch.Generator().manual_seed(3)  # noisy: N(0, 1) in float32, cast, times sigma
    bf16 = torch.zeros(1, dtype=torch.bfloat16)
    h = ri.InitialState("noisy", hidden_size=4, noise_std=0.3, seed=3).init(2, like=bf16)
    want = torch.tensor(0.3, dtype=torch.bfloat16) * torch.randn(1, 2, 4, generator=gen).bfloat16()
    torch.testing.assert_close(h, want, **EXACT)


def test_strategy_value_is_accepted():
    value = spec.Learnable(init="uniform", seed=3)
    a = ri.InitialState(value, hidden_size=8, cell="lstm")
    b = ri.InitialState("learnable", hidden_size=8, cell="lstm", init="uniform", seed=3)
    assert a.strategy == "learnable" and a.plan is value
    assert a.options == b.options == value.options()
    for (n, p), (m, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert n == m and torch.equal(p, q)
    model = ri.InitialStateRNN(nn.GRU(3, 8), spec.Noisy(noise_std=0.2, learnable_std=True))
    assert model.strategy == "noisy" and model.initial_state.noise_std.item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="already a value"):
        ri.InitialState(value, hidden_size=8, seed=1)


# --------------------------------------------------------------------------- learnable


def test_learnable_is_one_vector_per_layer_direction_and_component():
    model = ri.InitialStateRNN(nn.LSTM(3, 10, num_layers=2, bidirectional=True, proj_size=4))
    shapes = {n: tuple(p.shape) for n, p in model.initial_state.named_parameters()}
    assert shapes == {"h0": (4, 4), "c0": (4, 10)}
    for p in model.initial_state.parameters():
        assert not p.any()  # zeros by default


@pytest.mark.parametrize("init", ["uniform", "xavier"])
def test_learnable_named_inits(init):
    torch.manual_seed(0)
    s = ri.InitialState("learnable", hidden_size=256, num_layers=4, init=init)
    b = spec.uniform_bound(256) if init == "uniform" else spec.xavier_bound(256)
    assert s.h0.abs().max() <= b
    assert s.h0.std().item() == pytest.approx(spec.uniform_std(b), rel=0.1)


def test_learnable_callable_init():
    s = ri.InitialState("learnable", hidden_size=5, init=lambda p: nn.init.constant_(p, 0.25))
    assert torch.equal(s.init(2), torch.full((1, 2, 5), 0.25))
    with pytest.raises(ValueError, match="init returned shape"):
        ri.InitialState("learnable", hidden_size=5, init=lambda p: torch.zeros(3))


@pytest.mark.parametrize("cell", spec.CELLS)
def test_gradient_reaches_learned_state_and_one_step_changes_it(cell):
    torch.manual_seed(0)
    model = ri.InitialStateRNN(make(cell, 4, 8, num_layers=2, batch_first=True))
    x, y = torch.randn(16, 20, 4), torch.randn(16, 20, 8)
    out, _ = model(x)
    loss = nn.functional.mse_loss(out, y)
    loss.backward()
    params = dict(model.initial_state.named_parameters())
    for p in params.values():
        assert p.grad is not None and p.grad.abs().sum() > 0
    before = {n: p.detach().clone() for n, p in params.items()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for n, p in params.items():
        assert not torch.equal(before[n], p)


# --------------------------------------------------------------------------- noisy


def test_noisy_train_differs_eval_is_exactly_base():
    torch.manual_seed(0)
    model = ri.InitialStateRNN(nn.GRU(3, 32), strategy="noisy", noise_std=0.3)
    x = torch.randn(5, 2000, 3)
    h_a = model.initial_state.init(2000, like=x)
    h_b = model.initial_state.init(2000, like=x)
    assert not torch.equal(h_a, h_b)
    assert h_a.std().item() == pytest.approx(0.3, rel=0.02)
    assert h_a.mean().abs() < 0.01
    model.eval()
    assert not model.initial_state.init(2000, like=x).any()
    out1, _ = model(x)
    out2, _ = model(x)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)


def test_noisy_with_learnable_base():
    torch.manual_seed(0)
    s = ri.InitialState("noisy", hidden_size=4, cell="lstm", base="learnable", noise_std=0.1)
    assert {n for n, _ in s.named_parameters()} == {"h0", "c0"}
    with torch.no_grad():
        s.h0.fill_(2.0)
    s.eval()
    h, c = s.init(3)
    assert torch.equal(h, torch.full((1, 3, 4), 2.0)) and not c.any()
    s.train()
    h, _ = s.init(3)
    assert not torch.equal(h, torch.full((1, 3, 4), 2.0))
    assert (h - 2.0).abs().max() < 1.0


def test_learnable_std_positive_with_gradient_and_floor():
    s = ri.InitialState("noisy", hidden_size=8, noise_std=0.2, learnable_std=True, min_std=0.05)
    assert s.noise_std.item() == pytest.approx(0.2, rel=1e-5)
    h = s.init(64)
    h.pow(2).mean().backward()
    assert s.std_raw.grad is not None and s.std_raw.grad.item() > 0  # noise only adds loss
    with torch.no_grad():
        s.std_raw.fill_(-100.0)  # as far down as the task loss could push it
    assert s.noise_std.item() >= 0.05
    s.set_noise_std(0.5)
    assert s.noise_std.item() == pytest.approx(0.5, rel=1e-5)
    fixed = ri.InitialState("noisy", hidden_size=8, noise_std=0.2)
    assert not list(fixed.parameters())
    fixed.set_noise_std(0.0)
    assert not fixed.init(3).any()
    with pytest.raises(ValueError, match="-1"):
        fixed.set_noise_std(-1.0)


# --------------------------------------------------------------------------- explicit state


@pytest.mark.parametrize("cell", spec.CELLS)
def test_explicit_state_wins(cell):
    torch.manual_seed(0)
    rnn = make(cell, 4, 8)
    model = ri.InitialStateRNN(rnn, strategy="uniform")
    x = torch.randn(6, 3, 4)
    h = torch.randn(1, 3, 8)
    hx = (h, torch.randn(1, 3, 8)) if cell == "lstm" else h
    out, _ = model(x, hx)
    ref, _ = rnn(x, hx)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_unbatched_input_uses_the_learned_state():
    rnn = nn.LSTM(4, 8, num_layers=2, proj_size=3)
    model = ri.InitialStateRNN(rnn)
    with torch.no_grad():
        model.initial_state.h0.fill_(0.5)
        model.initial_state.c0.fill_(-0.5)
    x = torch.randn(6, 4)
    out, (h, c) = model(x)
    assert out.shape == (6, 3) and h.shape == (2, 3) and c.shape == (2, 8)
    ref, _ = rnn(x, (torch.full((2, 3), 0.5), torch.full((2, 8), -0.5)))
    torch.testing.assert_close(out, ref)
    batched, _ = model(x.unsqueeze(1))
    torch.testing.assert_close(batched[:, 0], out)


def test_packed_sequence():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rnn = nn.GRU(4, 8, batch_first=True)
    model = ri.InitialStateRNN(rnn)
    with torch.no_grad():
        model.initial_state.h0.fill_(0.3)
    x = torch.randn(3, 5, 4)
    packed = pack_padded_sequence(x, [5, 2, 4], batch_first=True, enforce_sorted=False)
    out, h = model(packed)
    ref, h_ref = rnn(packed, torch.full((1, 3, 8), 0.3))
    torch.testing.assert_close(pad_packed_sequence(out)[0], pad_packed_sequence(ref)[0])
    torch.testing.assert_close(h, h_ref)


# --------------------------------------------------------------------------- dtype, device


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dtype_follows_input(dtype, strategy):
    init = ri.InitialState(strategy, hidden_size=8, cell="lstm")
    like = torch.zeros(2, 3, 4, dtype=dtype)
    h, c = init.init(3, like=like)
    assert h.dtype == dtype and c.dtype == dtype


def test_float64_model_end_to_end_and_bad_dtype():
    model = ri.InitialStateRNN(nn.GRU(4, 8), strategy="noisy").double()
    out, h = model(torch.randn(5, 2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64 and h.dtype == torch.float64
    with pytest.raises(TypeError, match="floating dtype"):
        ri.InitialState("zero", hidden_size=4).init(2, like=torch.zeros(2, dtype=torch.long))


def test_state_on_non_cpu_device_is_contiguous():
    # the "meta" device stands in for a GPU: off the CPU, the broadcast learned
    # state is materialized, because cuDNN rejects a non-contiguous hx.
    s = ri.InitialState("learnable", hidden_size=8, num_layers=2)
    cpu = s.init(4)
    assert not cpu.is_contiguous()  # a free broadcast view on the CPU
    meta = s.init(4, device="meta")
    assert meta.device.type == "meta" and meta.is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_learned_state_with_cudnn():
    model = ri.InitialStateRNN(nn.LSTM(4, 8, num_layers=2, bidirectional=True)).cuda()
    x = torch.randn(5, 3, 4, device="cuda")
    out, (h, c) = model(x)
    assert out.is_cuda and h.is_cuda
    out.sum().backward()
    assert model.initial_state.h0.grad is not None


# --------------------------------------------------------------------------- save, load, compile


@pytest.mark.parametrize(
    "strategy,options",
    [
        ("learnable", {}),
        ("noisy", {"learnable_std": True, "base": "learnable", "noise_std": 0.3}),
        ("xavier", {"resample": False}),
    ],
)
def test_state_dict_round_trip(strategy, options):
    torch.manual_seed(0)
    model = ri.InitialStateRNN(nn.LSTM(4, 8, num_layers=2), strategy=strategy, **options)
    with torch.no_grad():
        for p in model.initial_state.parameters():
            p.add_(torch.randn_like(p))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # a different fresh model
    fresh = ri.InitialStateRNN(nn.LSTM(4, 8, num_layers=2), strategy=strategy, **options)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), fresh.eval()
    x = torch.randn(6, 3, 4)
    torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)
    for (n, a), (_, b) in zip(
        model.initial_state.state_dict().items(),
        fresh.initial_state.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), n


def test_torch_compile_gives_the_same_outputs():
    torch.manual_seed(0)
    model = ri.InitialStateRNN(nn.GRU(4, 8, num_layers=2, batch_first=True))
    with torch.no_grad():
        model.initial_state.h0.normal_()
    x = torch.randn(3, 10, 4)
    compiled = torch.compile(model)
    out, h = compiled(x)
    ref, h_ref = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert model.initial_state.h0.grad.abs().sum() > 0


# --------------------------------------------------------------------------- NoisyCell

CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}


def cell_loop(cell, x, state=None):
    """The bare cell stepped over ``x`` (time first): outputs and final state."""
    outs = []
    for x_t in x:
        state = cell(x_t, state)
        outs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outs), state


def unroll_draws(seed, steps, state_shapes):
    """The noise ``NoisyCell.unroll`` draws: one (time, *shape) draw per component, in order."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((steps, *shape), generator=gen) for shape in state_shapes]


@pytest.mark.parametrize("kind", list(CELLS))
def test_noisy_cell_eval_is_the_plain_cell(kind):
    torch.manual_seed(0)
    cell = CELLS[kind](4, 8)
    noisy = ri.NoisyCell(cell, noise_std=0.5).eval()
    x = torch.randn(7, 3, 4)
    ref, _ = cell_loop(cell, x)
    for compile in (False, True):  # evaluation never compiles: it is the bare cell
        out, _ = noisy.unroll(x, compile=compile)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(CELLS))
def test_noisy_cell_unroll_is_the_spec_step_with_predrawn_noise(kind):
    """unroll = spec.noisy_cell_step over numpy's own cell equations, fed the same noise."""
    from reference_impl import parity

    torch.manual_seed(0)
    cell = CELLS[kind](4, 8)
    steps, shape = 5, (3, 8)
    x = torch.randn(steps, 3, 4)
    out, final = ri.NoisyCell(cell, noise_std=0.2, seed=11).unroll(x)
    eps = unroll_draws(11, steps, [shape] * spec.num_components(kind))
    p = {k: v.double().numpy() for k, v in cell.state_dict().items()}

    def step(x_t, state):
        return parity.torch_cell_step(kind, p, x_t, state)

    zeros = np.zeros(shape)
    state, ref = ((zeros, zeros) if kind == "lstm" else zeros), []
    for t in range(steps):
        noise = tuple(e[t].double().numpy() for e in eps)
        noise = noise if kind == "lstm" else noise[0]
        state = spec.noisy_cell_step(step, x[t].double().numpy(), state, 0.2, noise=noise)
        ref.append(as_tuple(state)[0])
    np.testing.assert_allclose(out.detach().numpy(), np.stack(ref), atol=1e-5)
    for a, b in zip(as_tuple(final), as_tuple(state), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b, atol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_noisy_cell_step_draws_per_call_and_unroll_draws_once(kind):
    torch.manual_seed(0)
    cell = CELLS[kind](4, 8)
    x, h = torch.randn(6, 3, 4), torch.randn(3, 8)
    hx = (h, 2 * h) if kind == "lstm" else h
    # one step: a fresh draw per component, from the module's generator
    got = ri.NoisyCell(cell, noise_std=0.3, seed=5)(x[0], hx)
    gen = torch.Generator().manual_seed(5)
    noisy = tuple(s + 0.3 * torch.randn(s.shape, generator=gen) for s in as_tuple(hx))
    want = cell(x[0], noisy if kind == "lstm" else noisy[0])
    for a, b in zip(as_tuple(got), as_tuple(want), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a sequence, batch first, from a given state: the cell on state + std * eps[t]
    noisy = ri.NoisyCell(cell, noise_std=0.3, seed=5)
    out, _ = noisy.unroll(x.transpose(0, 1), hx, batch_first=True)
    eps = unroll_draws(5, 6, [(3, 8)] * len(as_tuple(hx)))
    state, ref = hx, []
    for t in range(6):
        parts = tuple(s + 0.3 * e[t] for s, e in zip(as_tuple(state), eps, strict=True))
        state = cell(x[t], parts if kind == "lstm" else parts[0])
        ref.append(as_tuple(state)[0])
    torch.testing.assert_close(out, torch.stack(ref, 1), rtol=0, atol=0)
    assert not torch.equal(noisy.unroll(x.transpose(0, 1), hx, batch_first=True)[0], out)


def test_noisy_cell_seed_reproduces_and_global_generator_otherwise():
    torch.manual_seed(0)
    cell = nn.LSTMCell(4, 8)
    x = torch.randn(5, 3, 4)

    def run(**kw):
        return ri.NoisyCell(cell, noise_std=0.2, **kw).unroll(x)[0]

    torch.testing.assert_close(run(seed=3), run(seed=3), rtol=0, atol=0)
    assert not torch.equal(run(seed=3), run(seed=4))
    torch.manual_seed(1)
    a = run()
    torch.manual_seed(1)
    torch.testing.assert_close(run(), a, rtol=0, atol=0)


def test_noisy_cell_draws_in_float32_for_low_precision():
    torch.manual_seed(0)
    cell = nn.GRUCell(4, 8).to(torch.bfloat16)
    x = torch.randn(3, 2, 4, dtype=torch.bfloat16)
    out, _ = ri.NoisyCell(cell, noise_std=0.2, seed=1).unroll(x)
    (eps,) = unroll_draws(1, 3, [(2, 8)])
    state, ref = torch.zeros(2, 8, dtype=torch.bfloat16), []
    for t in range(3):
        state = cell(x[t], state + torch.tensor(0.2, dtype=torch.bfloat16) * eps[t].bfloat16())
        ref.append(state)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch.stack(ref), rtol=0, atol=0)


def test_noisy_cell_learnable_std_and_layouts():
    noisy = ri.NoisyCell(nn.GRUCell(4, 8), noise_std=0.1, learnable_std=True)
    out, h = noisy.unroll(torch.randn(2, 6, 4), batch_first=True)
    assert out.shape == (2, 6, 8) and h.shape == (2, 8)
    out.pow(2).sum().backward()
    assert noisy.std_raw.grad is not None and noisy.noise_std.item() > 0
    out, h = noisy.unroll(torch.randn(6, 4))  # unbatched
    assert out.shape == (6, 8) and h.shape == (8,)
    with pytest.raises(ValueError, match="no time steps"):
        noisy.unroll(torch.randn(0, 2, 4))


def test_noisy_cell_set_noise_std():
    torch.manual_seed(0)
    cell = nn.GRUCell(4, 8)
    x = torch.randn(5, 3, 4)
    fixed = ri.NoisyCell(cell, noise_std=0.2)
    fixed.set_noise_std(0.3)
    assert fixed.noise_std.item() == pytest.approx(0.3)
    assert "std_raw" not in dict(fixed.named_parameters())
    assert set(fixed.state_dict()) == {"std_raw"} | {f"cell.{k}" for k in cell.state_dict()}
    fixed.set_noise_std(0.0)  # no noise: training is the bare cell
    torch.testing.assert_close(fixed.unroll(x)[0], cell_loop(cell, x)[0], rtol=0, atol=0)
    learn = ri.NoisyCell(cell, noise_std=0.2, learnable_std=True, min_std=0.05)
    learn.set_noise_std(0.5)
    assert learn.noise_std.item() == pytest.approx(0.5, rel=1e-6)
    assert isinstance(learn.std_raw, nn.Parameter)
    assert learn.std_raw.item() == pytest.approx(spec.inverse_softplus(0.45), rel=1e-6)
    with pytest.raises(ValueError, match="-1"):
        fixed.set_noise_std(-1.0)
    with pytest.raises(ValueError, match="above min_std"):
        learn.set_noise_std(0.05)
    with pytest.raises(TypeError, match="noise_std must be a number"):
        learn.set_noise_std("0.3")
    assert learn.noise_std.item() == pytest.approx(0.5, rel=1e-6)  # unchanged by the errors


def _unroll_with_grads(cell, noisy, x, compile, hx=None):
    x = x.clone().requires_grad_(True)
    out, state = noisy.unroll(x, hx, compile=compile)
    (out.pow(2).sum() + as_tuple(state)[-1].sum()).backward()
    grads = [x.grad, noisy.std_raw.grad, *(p.grad for p in cell.parameters())]
    noisy.zero_grad()
    return out.detach(), [s.detach() for s in as_tuple(state)], grads


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_noisy_cell_compiled_equals_eager(kind, monkeypatch):
    monkeypatch.setattr(ri, "_BLOCK", 2)  # 5 steps: two compiled blocks, one eager step
    monkeypatch.setattr(ri, "_COMPILED", {})
    torch.manual_seed(0)
    cell = CELLS[kind](4, 8)
    x = torch.randn(5, 3, 4)
    runs = []
    for compile in (False, True):
        noisy = ri.NoisyCell(cell, noise_std=0.3, learnable_std=True, seed=2)
        runs.append(_unroll_with_grads(cell, noisy, x, compile))
    assert ri._COMPILED["fn"] is not None  # compiled, no fallback
    (out, state, grads), (c_out, c_state, c_grads) = runs
    torch.testing.assert_close(c_out, out, rtol=1e-5, atol=1e-5)
    for a, b in zip(c_state + c_grads, state + grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_noisy_cell_compile_failure_falls_back_with_one_warning(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found\n(details)")

        return run

    monkeypatch.setattr(ri, "_BLOCK", 2)
    monkeypatch.setattr(ri, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    cell = nn.GRUCell(4, 8)
    x = torch.randn(5, 3, 4)
    with pytest.raises(RuntimeError, match="hidden_size"):  # as in the eager loop ...
        ri.NoisyCell(cell).unroll(x, torch.zeros(3, 9), compile=True)
    assert "fn" in ri._COMPILED and ri._COMPILED["fn"] is not None  # ... and is no reason
    eager = ri.NoisyCell(cell, seed=1).unroll(x)[0]
    with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler found\); .*steps eagerly"):
        out = ri.NoisyCell(cell, seed=1).unroll(x, compile=True)[0]
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        ri.NoisyCell(cell, seed=1).unroll(x, compile=True)


# --------------------------------------------------------------------------- the examples


def test_seed_style_usage():
    torch.manual_seed(0)
    gru = ri.InitialStateRNN(nn.GRU(10, 32, num_layers=2, batch_first=True), strategy="learnable")
    out, h = gru(torch.randn(16, 20, 10))
    assert out.shape == (16, 20, 32) and h.shape == (2, 16, 32)
    for batch in (16, 4096):
        h0, c0 = ri.InitialState("xavier", hidden_size=32, cell="lstm").init(batch)
        assert h0.shape == c0.shape == (1, batch, 32)
        assert float(h0.abs().max()) <= spec.xavier_bound(32)
        assert float(h0.abs().max()) > 0.5 * spec.xavier_bound(32)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: ri.InitialStateRNN(nn.GRU(2, 4), strategy="ones"), ValueError, r"'ones'.*'zero'"),
        (
            lambda: ri.InitialStateRNN(nn.GRU(2, 4), strategy="noisy", noise_std=-0.1),
            ValueError,
            "-0.1",
        ),
        (lambda: ri.InitialStateRNN(nn.GRUCell(2, 4)), TypeError, "GRUCell.*NoisyCell"),
        (lambda: ri.InitialStateRNN(nn.Linear(2, 4)), TypeError, "Linear"),
        (lambda: ri.NoisyCell(nn.GRU(2, 4)), TypeError, "got GRU"),
        (lambda: ri.NoisyCell(nn.GRUCell(2, 4), noise_std=-1), ValueError, "-1"),
        (lambda: ri.InitialState("zero", hidden_size=4, cell="transformer"), ValueError, "gru"),
        (lambda: ri.InitialState("zero", hidden_size=0), ValueError, "hidden_size"),
        (lambda: ri.InitialState("xavier", hidden_size=4, bound=1), ValueError, "'bound'"),
        (lambda: ri.InitialState("zero", hidden_size=4).init(-1), ValueError, "batch_size"),
    ],
)
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_wrong_explicit_state_is_rejected():
    gru = ri.InitialStateRNN(nn.GRU(2, 4, num_layers=2))
    x = torch.randn(5, 3, 2)
    with pytest.raises(ValueError, match=r"\(2, 7, 4\).*expected \(2, 3, 4\)"):
        gru(x, torch.zeros(2, 7, 4))
    lstm = ri.InitialStateRNN(nn.LSTM(2, 4))
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        lstm(x, torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="c0"):
        lstm(x, (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="3-D"):
        gru(torch.zeros(2, 3, 4, 5))


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM])
def test_a_wrong_hx_raises_what_the_bare_layer_raises(kind):
    """The bare layer raises a RuntimeError for an hx of the wrong shape; the wrapper's
    error is that and the package's ValueError, with its own message."""
    x, hx = torch.randn(2, 5, 3), torch.zeros(1, 3, 4)  # a batch of 2, a state for 3
    hx = (hx, hx) if kind is nn.LSTM else hx
    bare = kind(3, 4, batch_first=True)
    with pytest.raises(RuntimeError):
        bare(x, hx)
    model = ri.InitialStateRNN(bare, "zero")
    for error in (RuntimeError, ValueError, ri.StateShapeError):
        with pytest.raises(error, match=r"initial state h0 has shape \(1, 3, 4\); expected \(1, 2"):
            model(x, hx)


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM, nn.RNN])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_empty_batch_returns_what_the_bare_layer_returns(kind, strategy):
    bare = kind(3, 4, num_layers=2, batch_first=True)
    model = ri.InitialStateRNN(bare, strategy, seed=0)
    x = torch.zeros(0, 5, 3)
    for training in (True, False):
        model.train(training)
        want, got = bare(x), model(x)
        assert got[0].shape == want[0].shape == (0, 5, 4)
        for a, b in zip(ri._parts(got[1]), ri._parts(want[1]), strict=True):
            assert a.shape == b.shape == (2, 0, 4)


def test_noisy_attributes_only_on_noisy():
    with pytest.raises(AttributeError, match="has no noise_std"):
        ri.InitialState("zero", hidden_size=4).set_noise_std(0.1)
    with pytest.raises(AttributeError, match="noise_std"):
        _ = ri.InitialState("zero", hidden_size=4).noise_std
