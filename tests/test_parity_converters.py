"""The weight and state converters of :mod:`reference_impl.parity`, tested directly.

A hand-made two-layer bidirectional GRU and LSTM (input 3, hidden 2) whose every
number says where it comes from: ``l d p g k`` is layer ``l``, direction ``d``
(1: reverse), part ``p`` (1 ``weight_ih``, 2 ``weight_hh``, 3 ``bias_ih``, 4
``bias_hh``), gate block ``g`` in PyTorch's order and element ``k`` of the block
(row-major). So ``weight_ih_l0`` of the GRU is rows ``r`` (``100 101 102 / 103 104
105``), ``z`` (``110 ...``) and ``n`` (``120 ...``), and the tests can say exactly which
block must land where in Keras, linen and NNX, transposed or summed. Only numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference_impl import parity as P
from reference_impl.parity import layouts as L

H, IN = 2, 3
PARTS = {"weight_ih": 1, "weight_hh": 2, "bias_ih": 3, "bias_hh": 4}


def block(cell: str, layer: int, reverse: bool, part: str, gate: int) -> np.ndarray:
    """Block ``gate`` of ``part``: ``(H, in)`` for a weight, ``(H,)`` for a bias."""
    cols = {"weight_ih": IN if layer == 0 else 2 * H, "weight_hh": H}.get(part)
    code = 10000 * layer + 1000 * reverse + 100 * PARTS[part] + 10 * gate
    values = code + np.arange(H * (cols or 1), dtype=np.float64)
    return values.reshape(H, cols) if cols else values


def handmade(cell: str) -> dict[str, np.ndarray]:
    """The two-layer bidirectional state dict, every block from :func:`block`."""
    return {
        f"{part}_l{layer}{'_reverse' if rev else ''}": np.concatenate(
            [block(cell, layer, rev, part, g) for g in range(L.NUM_GATES[cell])]
        )
        for layer in (0, 1)
        for rev in (False, True)
        for part in PARTS
    }


def without_b_hn(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in sd.items()}
    for key in [k for k in out if k.startswith("bias_hh")]:
        out[key][2 * H :] = 0
    return out


def test_the_handmade_state_dict_is_what_torch_holds():
    sd = handmade("gru")
    np.testing.assert_array_equal(
        sd["weight_ih_l0"],
        [
            [100, 101, 102],
            [103, 104, 105],
            [110, 111, 112],
            [113, 114, 115],
            [120, 121, 122],
            [123, 124, 125],
        ],
    )
    np.testing.assert_array_equal(
        sd["bias_hh_l1_reverse"], [11400, 11401, 11410, 11411, 11420, 11421]
    )
    assert sd["weight_ih_l1"].shape == (3 * H, 2 * H)
    assert P.describe_torch(sd, "gru") == {
        "input_size": IN,
        "hidden_size": H,
        "num_layers": 2,
        "bidirectional": True,
    }


# --------------------------------------------------------------------------- placement


def test_torch_to_keras_gru_places_every_block():
    weights = P.torch_to_keras(handmade("gru"), "gru")
    assert [len(w) for w in weights] == [6, 6]  # forward then backward, per layer
    kernel, recurrent, bias = weights[0][:3]
    # Columns z, r, h: torch's blocks z (11x), r (10x), n (12x), transposed.
    np.testing.assert_array_equal(
        kernel,
        [
            [110, 113, 100, 103, 120, 123],
            [111, 114, 101, 104, 121, 124],
            [112, 115, 102, 105, 122, 125],
        ],
    )
    np.testing.assert_array_equal(
        recurrent, [[210, 212, 200, 202, 220, 222], [211, 213, 201, 203, 221, 223]]
    )
    # reset_after=True: row 0 is b_ih, row 1 is b_hh, each z, r, h: nothing summed.
    np.testing.assert_array_equal(
        bias, [[310, 311, 300, 301, 320, 321], [410, 411, 400, 401, 420, 421]]
    )
    # Layer 1, backward: the same rule on its own blocks (input 2H).
    kernel, recurrent, bias = weights[1][3:]
    for col, gate in enumerate((1, 0, 2)):
        cols = slice(col * H, (col + 1) * H)
        np.testing.assert_array_equal(kernel[:, cols], block("gru", 1, True, "weight_ih", gate).T)
        np.testing.assert_array_equal(
            recurrent[:, cols], block("gru", 1, True, "weight_hh", gate).T
        )
        np.testing.assert_array_equal(bias[0, cols], block("gru", 1, True, "bias_ih", gate))
        np.testing.assert_array_equal(bias[1, cols], block("gru", 1, True, "bias_hh", gate))


def test_torch_to_keras_lstm_sums_the_biases():
    weights = P.torch_to_keras(handmade("lstm"), "lstm")
    kernel, recurrent, bias = weights[1][3:]  # layer 1, backward
    sd = handmade("lstm")
    np.testing.assert_array_equal(kernel, sd["weight_ih_l1_reverse"].T)  # i, f, c, o = i, f, g, o
    np.testing.assert_array_equal(recurrent, sd["weight_hh_l1_reverse"].T)
    np.testing.assert_array_equal(bias[:2], [11300 + 11400, 11301 + 11401])  # b_ii + b_hi
    np.testing.assert_array_equal(bias, sd["bias_ih_l1_reverse"] + sd["bias_hh_l1_reverse"])


def test_torch_to_linen_gru_places_every_block():
    trees = P.torch_to_linen(handmade("gru"), "gru")
    cell = trees[0]["forward_rnn"]["cell"]
    assert sorted(cell) == ["hn", "hr", "hz", "in", "ir", "iz"]
    np.testing.assert_array_equal(cell["ir"]["kernel"], [[100, 103], [101, 104], [102, 105]])
    np.testing.assert_array_equal(cell["hz"]["kernel"], [[210, 212], [211, 213]])
    np.testing.assert_array_equal(cell["ir"]["bias"], [300 + 400, 301 + 401])  # b_ir + b_hr
    np.testing.assert_array_equal(cell["iz"]["bias"], [310 + 410, 311 + 411])  # b_iz + b_hz
    np.testing.assert_array_equal(cell["in"]["bias"], [320, 321])  # b_in alone ...
    np.testing.assert_array_equal(cell["hn"]["bias"], [420, 421])  # ... b_hn inside r * (.)
    assert set(cell["hr"]) == set(cell["hz"]) == {"kernel"}
    back = trees[1]["backward_rnn"]["cell"]
    for g, gate in enumerate("rzn"):
        np.testing.assert_array_equal(
            back["i" + gate]["kernel"], block("gru", 1, True, "weight_ih", g).T
        )
        np.testing.assert_array_equal(
            back["h" + gate]["kernel"], block("gru", 1, True, "weight_hh", g).T
        )


def test_torch_to_linen_lstm_puts_the_summed_bias_on_the_recurrent_layers():
    cell = P.torch_to_linen(handmade("lstm"), "lstm")[1]["backward_rnn"]["cell"]
    assert sorted(cell) == ["hf", "hg", "hi", "ho", "if", "ig", "ii", "io"]
    for g, gate in enumerate("ifgo"):
        np.testing.assert_array_equal(
            cell["i" + gate]["kernel"], block("lstm", 1, True, "weight_ih", g).T
        )
        np.testing.assert_array_equal(
            cell["h" + gate]["kernel"], block("lstm", 1, True, "weight_hh", g).T
        )
        want = block("lstm", 1, True, "bias_ih", g) + block("lstm", 1, True, "bias_hh", g)
        np.testing.assert_array_equal(cell["h" + gate]["bias"], want)
        assert "bias" not in cell["i" + gate]
    np.testing.assert_array_equal(cell["hf"]["bias"], [11310 + 11410, 11311 + 11411])


def test_torch_to_nnx_gru_fuses_the_gates_without_b_hn():
    trees = P.torch_to_nnx(without_b_hn(handmade("gru")), "gru")
    cell = trees[0]["forward_rnn"]["cell"]
    assert {k: sorted(v) for k, v in cell.items()} == {
        "dense_i": ["bias", "kernel"],
        "dense_h": ["kernel"],
    }
    # Columns r, z, n (torch's order), transposed.
    np.testing.assert_array_equal(
        cell["dense_i"]["kernel"],
        [
            [100, 103, 110, 113, 120, 123],
            [101, 104, 111, 114, 121, 124],
            [102, 105, 112, 115, 122, 125],
        ],
    )
    np.testing.assert_array_equal(cell["dense_h"]["kernel"], handmade("gru")["weight_hh_l0"].T)
    np.testing.assert_array_equal(cell["dense_i"]["bias"], [700, 702, 720, 722, 320, 321])
    back = trees[1]["backward_rnn"]["cell"]
    np.testing.assert_array_equal(
        back["dense_i"]["kernel"], handmade("gru")["weight_ih_l1_reverse"].T
    )


def test_torch_to_nnx_lstm_cells():
    sd = handmade("lstm")
    cell = P.torch_to_nnx(sd, "lstm")[0]["backward_rnn"]["cell"]  # LSTMCell: linen's, with if_
    assert sorted(cell) == ["hf", "hg", "hi", "ho", "if_", "ig", "ii", "io"]
    np.testing.assert_array_equal(cell["if_"]["kernel"], block("lstm", 0, True, "weight_ih", 1).T)
    np.testing.assert_array_equal(cell["hg"]["bias"], [1320 + 1420, 1321 + 1421])
    fused = P.torch_to_nnx(sd, "lstm", lstm_cell="OptimizedLSTMCell")[1]["forward_rnn"]["cell"]
    np.testing.assert_array_equal(fused["dense_i"]["kernel"], sd["weight_ih_l1"].T)
    np.testing.assert_array_equal(fused["dense_h"]["kernel"], sd["weight_hh_l1"].T)
    np.testing.assert_array_equal(fused["dense_h"]["bias"], sd["bias_ih_l1"] + sd["bias_hh_l1"])
    assert "bias" not in fused["dense_i"]


def test_canonical_torch_moves_the_summed_biases():
    gru = P.canonical_torch(handmade("gru"), "gru")
    np.testing.assert_array_equal(gru["bias_ih_l0"], [700, 702, 720, 722, 320, 321])
    np.testing.assert_array_equal(gru["bias_hh_l0"], [0, 0, 0, 0, 420, 421])  # b_hn stays
    lstm = P.canonical_torch(handmade("lstm"), "lstm")
    assert not np.any(lstm["bias_hh_l1_reverse"])
    np.testing.assert_array_equal(lstm["weight_hh_l1"], handmade("lstm")["weight_hh_l1"])


# --------------------------------------------------------------------------- round trips

ROUND_TRIPS = {
    "keras": (P.torch_to_keras, P.keras_to_torch, {}),
    "linen": (P.torch_to_linen, P.linen_to_torch, {}),
    "nnx": (P.torch_to_nnx, P.nnx_to_torch, {}),
    "nnx-optimized": (P.torch_to_nnx, P.nnx_to_torch, {"lstm_cell": "OptimizedLSTMCell"}),
}


@pytest.mark.parametrize(
    ("framework", "cell"),
    [(f, c) for f in ROUND_TRIPS for c in ("gru", "lstm") if c == "lstm" or f != "nnx-optimized"],
)
def test_round_trips_are_exact(framework, cell):
    to, back, options = ROUND_TRIPS[framework]
    sd = without_b_hn(handmade(cell)) if framework.startswith("nnx") else handmade(cell)
    native = to(sd, cell, **options)
    returned = back(native, cell)
    # A Keras GRU keeps both bias rows; every other layout sums some biases.
    want = sd if (framework, cell) == ("keras", "gru") else P.canonical_torch(sd, cell)
    assert list(returned) == list(sd)
    for key in sd:
        assert returned[key].dtype == sd[key].dtype
        np.testing.assert_array_equal(returned[key], want[key], err_msg=key)
    # framework -> torch -> framework: the same arrays.
    again = to(returned, cell, **options)
    flat = _leaves(native)
    assert [a.shape for a in flat] == [a.shape for a in _leaves(again)]
    assert all(np.array_equal(a, b) for a, b in zip(flat, _leaves(again), strict=True))


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [np.asarray(tree)]


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_each_layout_computes_the_torch_network_in_its_own_equations(cell):
    # The numpy cells of each framework, on converted weights, against PyTorch's.
    sd = P.random_state_dict(
        cell, IN, 4, num_layers=2, bidirectional=True, seed=1, dtype=np.float64
    )
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, IN))
    state = tuple(rng.normal(size=(4, 3, 4)) for _ in range(2 if cell == "lstm" else 1))
    state = state if cell == "lstm" else state[0]
    acts = ("tanh", "relu") if cell == "rnn" else ("tanh",)
    natives = {
        "keras": P.torch_to_keras(sd, cell),
        "linen": P.torch_to_linen(sd, cell),
        "nnx": P.torch_to_nnx(without_b_hn(sd) if cell == "gru" else sd, cell),
    }
    if cell == "lstm":
        natives["nnx-optimized"] = P.torch_to_nnx(sd, cell, lstm_cell="OptimizedLSTMCell")
    for act in acts:
        for name, native in natives.items():
            ref_sd = without_b_hn(sd) if name == "nnx" and cell == "gru" else sd
            want = P.numpy_forward("torch", ref_sd, x, state, cell=cell, nonlinearity=act)
            got = P.numpy_forward(name.split("-")[0], native, x, state, cell=cell, nonlinearity=act)
            assert P.max_abs_diff(got, want) < 1e-12, (name, act)


def test_every_layout_holds_every_weight_block_once():
    layouts = [(f"keras {c}", c, L.KERAS[c]) for c in L.NUM_GATES]
    layouts += [(f"keras no bias {c}", c, L.KERAS_NO_BIAS[c]) for c in L.NUM_GATES]
    layouts += [(f"linen {c}", c, L.LINEN[c]) for c in L.NUM_GATES]
    layouts += [(f"nnx {n}", c, L.NNX[n]) for c, names in L.NNX_CELLS.items() for n in names]
    for name, cell, layout in layouts:
        gates = {"weight_ih": [], "weight_hh": []}
        for leaf in layout.leaves.values():
            if isinstance(leaf, L.Kernel):
                gates[leaf.source] += leaf.gates
        assert all(sorted(g) == list(range(L.NUM_GATES[cell])) for g in gates.values()), name
        held = L.held_biases(layout)
        for part in ("bias_ih", "bias_hh"):
            for g in range(L.NUM_GATES[cell]):
                assert ((part, g) in held) != ((part, g) in layout.missing), (name, part, g)


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_state_layouts(cell):
    # rows layer * 2 + direction; element (row, batch, feature) = 100 row + 10 batch + f
    h = np.arange(4)[:, None, None] * 100 + np.arange(3)[None, :, None] * 10 + np.arange(H)
    state = (h, h + 1000) if cell == "lstm" else h
    keras = P.torch_state_to_keras(state, cell, bidirectional=True)
    flax = P.torch_state_to_flax(state, cell, bidirectional=True)
    assert len(keras) == len(flax) == 2  # one entry per layer
    if cell == "lstm":
        h_fw, c_fw, h_bw, c_bw = keras[1]  # layer 1: rows 2 (forward) and 3 (backward)
        assert h_fw[0, 0] == 200 and c_fw[0, 0] == 1200 and h_bw[0, 0] == 300 and c_bw[0, 0] == 1300
        (c_fw, h_fw), (c_bw, h_bw) = flax[1]  # Flax carries (c, h)
        assert h_fw[0, 0] == 200 and c_fw[0, 0] == 1200 and h_bw[0, 0] == 300 and c_bw[0, 0] == 1300
    else:
        assert [s[2, 1] for s in keras[0]] == [21, 121] and flax[0][1][2, 1] == 121
    for back in (
        P.keras_state_to_torch(keras, cell, bidirectional=True),
        P.flax_state_to_torch(flax, cell, bidirectional=True),
    ):
        assert P.max_abs_diff(back, state) == 0
    uni = P.torch_state_to_keras(state, cell)
    assert len(uni) == 4 and P.max_abs_diff(P.keras_state_to_torch(uni, cell), state) == 0


def test_learned_state_per_layer():
    h0, c0 = np.arange(8.0).reshape(4, 2), -np.arange(8.0).reshape(4, 2)
    layers = P.learned_state_per_layer((h0, c0), "lstm", bidirectional=True)
    np.testing.assert_array_equal(layers[1]["h"], [[4, 5], [6, 7]])
    np.testing.assert_array_equal(layers[0]["c"], [[0, -1], [-2, -3]])
    back = P.learned_state_from_layers(layers, "lstm")
    assert P.max_abs_diff(back, (h0, c0)) == 0
    assert len(P.learned_state_per_layer(h0, "gru")) == 4


# --------------------------------------------------------------------------- bad input


def test_missing_keys_are_named():
    sd = handmade("gru")
    del sd["bias_hh_l1_reverse"]
    for convert in (P.torch_to_keras, P.torch_to_linen, P.torch_to_nnx, P.canonical_torch):
        with pytest.raises(ValueError, match="missing key 'bias_hh_l1_reverse'"):
            convert(sd, "gru")
    trees = P.torch_to_linen(handmade("gru"), "gru")
    del trees[1]["backward_rnn"]["cell"]["hn"]["bias"]
    with pytest.raises(ValueError, match="missing key 'layer 1/backward_rnn/cell/hn/bias'"):
        P.linen_to_torch(trees, "gru")
    trees = P.torch_to_nnx(handmade("lstm"), "lstm")
    del trees[0]["forward_rnn"]["cell"]["if_"]
    with pytest.raises(ValueError, match="missing key 'layer 0/forward_rnn/cell/if_'"):
        P.nnx_to_torch(trees, "lstm")
    trees = P.torch_to_nnx(handmade("lstm"), "lstm")
    del trees[0]["backward_rnn"]
    with pytest.raises(ValueError, match="missing key 'layer 0/backward_rnn'"):
        P.nnx_to_torch(trees, "lstm")


def test_wrong_shapes_are_named():
    sd = handmade("lstm")
    sd["weight_ih_l1"] = sd["weight_ih_l1"][:, :-1]
    with pytest.raises(ValueError, match=r"weight_ih_l1 has shape \(8, 3\); expected \(8, 4\)"):
        P.torch_to_keras(sd, "lstm")
    with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(6, 2\); a lstm needs"):
        P.torch_to_linen(handmade("gru"), "lstm")  # a GRU's weights read as an LSTM's
    weights = P.torch_to_keras(handmade("gru"), "gru")
    weights[1][5] = weights[1][5][:, :-1]
    with pytest.raises(
        ValueError, match=r"layer 1/backward/bias has shape \(2, 5\); expected \(2, 6\)"
    ):
        P.keras_to_torch(weights, "gru")
    trees = P.torch_to_nnx(without_b_hn(handmade("gru")), "gru")
    trees[0]["forward_rnn"]["cell"]["dense_h"]["kernel"] = np.zeros((H, 2 * H))
    with pytest.raises(
        ValueError, match=r"layer 0/forward_rnn/cell/dense_h/kernel has shape \(2, 4\)"
    ):
        P.nnx_to_torch(trees, "gru")
    with pytest.raises(ValueError, match=r"state has shape \(4, 1, 3\); expected \(4, 1, 2\)"):
        P.numpy_forward(
            "torch", handmade("gru"), np.zeros((1, 2, IN)), np.zeros((4, 1, 3)), cell="gru"
        )


def test_wrong_cells_and_options_are_named():
    with pytest.raises(ValueError, match="unsupported cell 'mgu'"):
        P.torch_to_linen(handmade("gru"), "mgu")
    with pytest.raises(ValueError, match="unexpected key 'weight_ih_l0_extra'"):
        P.torch_to_keras({**handmade("gru"), "weight_ih_l0_extra": np.zeros(1)}, "gru")
    trees = P.torch_to_linen(handmade("gru"), "gru")
    trees[0]["forward_rnn"]["cell"]["hr"]["bias"] = np.zeros(H)
    with pytest.raises(ValueError, match="unexpected key 'layer 0/forward_rnn/cell/hr/bias'"):
        P.linen_to_torch(trees, "gru")
    with pytest.raises(ValueError, match="weight_hr_l0.*proj_size"):
        P.torch_to_nnx({**handmade("lstm"), "weight_hr_l0": np.zeros((1, H))}, "lstm")
    with pytest.raises(ValueError, match="unsupported lstm_cell 'ConvLSTMCell'"):
        P.torch_to_nnx(handmade("lstm"), "lstm", lstm_cell="ConvLSTMCell")
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu'"):
        P.numpy_forward(
            "torch", handmade("gru"), np.zeros((1, 2, IN)), cell="gru", nonlinearity="gelu"
        )
    with pytest.raises(ValueError, match="unknown framework 'jax'"):
        P.numpy_forward("jax", handmade("gru"), np.zeros((1, 2, IN)), cell="gru")
    with pytest.raises(ValueError, match=r"layer 0: expected \[kernel, recurrent_kernel, bias\]"):
        P.keras_to_torch([[np.zeros((IN, H))]], "rnn")
    with pytest.raises(ValueError, match="expected a non-empty list"):
        P.linen_to_torch([], "gru")


def test_what_a_framework_cannot_hold_is_refused_by_name():
    # NNX's GRUCell has no b_hn; a Keras layer without bias has no bias at all; Keras's
    # reset_after=False GRU is another function.
    with pytest.raises(
        ValueError, match=r"bias_hh_l0\[4:6\] \(b_hn, the bias inside r \* \(W_hn h"
    ):
        P.torch_to_nnx(handmade("gru"), "gru")
    with pytest.raises(ValueError, match=r"bias_ih_l0\[0:2\] .* use_bias=False"):
        P.torch_to_keras(handmade("lstm"), "lstm", use_bias=False)
    zero_bias = {k: v * k.startswith("weight") for k, v in handmade("lstm").items()}
    assert [len(w) for w in P.torch_to_keras(zero_bias, "lstm", use_bias=False)] == [4, 4]
    with pytest.raises(ValueError, match="reset_after=False: that Keras GRU"):
        P.torch_to_keras(handmade("gru"), "gru", reset_after=False)
    weights = P.torch_to_keras(handmade("gru"), "gru")
    weights[0][2] = weights[0][2][0]  # one bias row: a reset_after=False layer
    with pytest.raises(
        ValueError, match=r"layer 0/bias has shape \(6,\): a GRU built with reset_after=False"
    ):
        P.keras_to_torch(weights, "gru")


def test_bad_states_are_named():
    with pytest.raises(ValueError, match="state has 3 rows; expected num_layers \\* 2 rows"):
        P.torch_state_to_keras(np.zeros((3, 1, H)), "gru", bidirectional=True)
    with pytest.raises(ValueError, match=r"an LSTM state must be a pair \(h, c\)"):
        P.torch_state_to_flax(np.zeros((1, 1, H)), "lstm")
    with pytest.raises(ValueError, match="layer 0: 1 state arrays; expected 2"):
        P.keras_state_to_torch([[np.zeros(H)]], "lstm")
    with pytest.raises(ValueError, match="missing key 'c' in the learned state of layer 0"):
        P.learned_state_from_layers([{"h": np.zeros((1, H))}], "lstm")
