"""The pitfalls chapter: its tabbed fixes are the code it runs, and its exercise solutions work.

The chapter shows each fix in tabs (a fenced code block per framework, in markdown) and
runs the same lines in the code cell that follows, where it measures them. These tests
keep the two from drifting apart, and run the exercise solutions, which live in the
notebook's markdown, so that what a reader copies from a dropdown does what it says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pitfalls.ipynb"
FENCE = re.compile(r"```python\n(.*?)```", re.S)
TAB_ITEM = re.compile(r":::\{tab-item\}[^\n]*\n:sync: (\w+)\n(.*?)\n:::", re.S)
DROPDOWN = re.compile(r":::\{dropdown\} (Solution \d)\n(.*?)\n:::", re.S)


def _cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text())["cells"]


def _markdown() -> list[str]:
    return ["".join(c["source"]) for c in _cells() if c["cell_type"] == "markdown"]


def _code_lines() -> list[str]:
    lines = []
    for c in _cells():
        if c["cell_type"] == "code":
            lines += [line.strip() for line in "".join(c["source"]).splitlines()]
    return [line for line in lines if line]


def _tab_snippets() -> list[tuple[str, str]]:
    snippets = []
    for text in _markdown():
        for key, body in TAB_ITEM.findall(text):
            for code in FENCE.findall(body):
                snippets.append((key, code))
    return snippets


def _solutions() -> dict[str, str]:
    out = {}
    for text in _markdown():
        for name, body in DROPDOWN.findall(text):
            out[name] = "\n".join(FENCE.findall(body))
    return out


def _is_run(snippet: str, code_lines: list[str]) -> bool:
    """True if the snippet's lines appear, in order and contiguous, in one code cell run."""
    want = [line.strip() for line in snippet.splitlines() if line.strip()]
    return any(code_lines[i : i + len(want)] == want for i in range(len(code_lines)))


def test_every_tab_snippet_is_code_the_chapter_runs():
    snippets = _tab_snippets()
    keys = {key for key, _ in snippets}
    assert keys == {"torch", "keras", "linen", "nnx"}, keys
    assert len(snippets) >= 14
    code = _code_lines()
    missing = [(key, s) for key, s in snippets if not _is_run(s, code)]
    assert not missing, f"tab code that no cell runs: {missing}"


def test_a_changed_tab_snippet_is_caught():
    key, snippet = _tab_snippets()[0]
    assert not _is_run(snippet.replace("=", "= 1 +", 1), _code_lines())


def test_tab_sets_use_the_framework_sync_group():
    for text in _markdown():
        for block in re.findall(r"::::\{tab-set\}\n(.*?)\n", text):
            assert block == ":sync-group: framework"
        labels = re.findall(r":::\{tab-item\} ([^\n]+)\n:sync: (\w+)", text)
        allowed = {
            ("PyTorch", "torch"),
            ("Keras", "keras"),
            ("Flax linen", "linen"),
            ("Flax NNX", "nnx"),
        }
        assert set(labels) <= allowed, labels


def test_solution_1_naive_glorot_std():
    from reference_impl import spec

    namespace = {"spec": spec}
    exec(_solutions()["Solution 1"], namespace)
    b = spec.naive_glorot_bound((1, 512, 64))
    assert b == pytest.approx(np.sqrt(6 / (64 * 513)))
    assert b / np.sqrt(3) == pytest.approx(0.0078, abs=5e-5)


def test_solution_2_noise_reaches_the_carried_state_in_training_only():
    keras = pytest.importorskip("keras")
    namespace = {"keras": keras}
    exec(_solutions()["Solution 2"], namespace)
    rnn = namespace["rnn"]
    x = np.random.default_rng(0).normal(size=(4, 5, 3)).astype("float32")
    _, h_a = rnn(x, training=True)
    _, h_b = rnn(x, training=True)
    assert np.abs(np.asarray(h_a) - np.asarray(h_b)).max() > 1e-3
    _, e_a = rnn(x)
    _, e_b = rnn(x)
    np.testing.assert_array_equal(np.asarray(e_a), np.asarray(e_b))


def test_solution_3_learned_lstm_state_is_trained_by_fit():
    keras = pytest.importorskip("keras")
    namespace = {"keras": keras}
    exec(_solutions()["Solution 3"], namespace)
    keras.utils.set_random_seed(0)
    lstm = namespace["LearnedStartLSTM"](8)
    model = keras.Sequential([keras.Input((5, 3)), lstm, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 5, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 1)).astype("float32")
    assert {w.name for w in model.trainable_weights} >= {"h0", "c0"}
    model.fit(x, y, epochs=3, verbose=0)
    assert np.abs(keras.ops.convert_to_numpy(lstm.h0)).max() > 0
    assert np.abs(keras.ops.convert_to_numpy(lstm.c0)).max() > 0
    # the learned state is what the layer starts from: a batch of another size works
    assert tuple(model(x[:3]).shape) == (3, 1)
