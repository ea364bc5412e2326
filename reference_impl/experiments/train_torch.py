"""One trial of the experiment grid in PyTorch, plus the two baselines from the literature.

:func:`run_trial` trains one recurrent layer (GRU or LSTM) wrapped by
:class:`reference_impl.torch.InitialStateRNN` with one strategy and evaluates it. Besides
the five strategies it runs three variants:

- ``washout``: the first k steps are left out of the loss and of the evaluation
  (burn-in); the model starts from zeros.
- ``data_driven``: a small MLP maps the first k observations to the initial state at
  step k and the network runs from there (Mohajerin & Waslander, IJCNN 2017; IEEE TNNLS
  2019); it is evaluated on steps >= k, since it read the first k.
- ``stateful`` ("chunks" tasks): the detached final state of one chunk starts the next.

>>> out = run_trial({"task": "fixed_start", "framework": "torch", "cell": "gru",
...                  "strategy": "learnable", "seed": 0, "budget": "quick"})
>>> len(out["curves"]["test"]), sorted(out["scalars"])[:3]
(20, ['all_mse', 'best_epoch', 'epochs'])
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from reference_impl import torch as ri
from reference_impl.experiments import common
from reference_impl.experiments.common import PERTURB_SCALES, TrialConfig
from reference_impl.experiments.tasks import TaskData, load_task

_INIT_HIDDEN = 32  # width of the data-driven initializer's hidden layer


@functools.lru_cache(maxsize=64)
def _data(task: str, seed: int, budget: str) -> TaskData:
    return load_task(task, seed=seed, budget=budget)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class Model(nn.Module):
    """Recurrent layer with a strategy, a linear read-out, and (data_driven) an
    initializer network that maps the first k observations to the start."""

    def __init__(
        self, cfg: TrialConfig, hidden: int, washout: int, inputs: int = 1, outputs: int = 1
    ) -> None:
        super().__init__()
        # Pairing: the bare layer and the read-out are built first, right after
        # seeding, so every strategy of a seed starts from the same weights.
        torch.manual_seed(cfg.seed)
        layer = (nn.GRU if cfg.cell == "gru" else nn.LSTM)(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)
        self.rnn = ri.InitialStateRNN(layer, strategy=cfg.base_strategy, **cfg.strategy_options())
        self.lstm = cfg.cell == "lstm"
        self.hidden = hidden
        self.k = washout
        self.init_net = None
        if cfg.strategy == "data_driven":
            comps = 2 if self.lstm else 1
            self.init_net = nn.Sequential(
                nn.Linear(washout, _INIT_HIDDEN), nn.Tanh(), nn.Linear(_INIT_HIDDEN, comps * hidden)
            )

    def start_from_data(self, x: torch.Tensor):
        """The data-driven start (at step k) from the first k observations."""
        z = self.init_net(x[:, : self.k, 0])
        if not self.lstm:
            return torch.tanh(z).unsqueeze(0)
        h, c = z.chunk(2, dim=-1)
        return torch.tanh(h).unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()

    def own_start(self, x: torch.Tensor):
        """The start this model uses for the batch ``x`` (at step k for data_driven)."""
        if self.init_net is not None:
            return self.start_from_data(x)
        return self.rnn.initial_state.init(x.shape[0], like=x)

    def forward(self, x: torch.Tensor, hx=None):
        """Predictions for every step the model predicts (from step k for data_driven),
        the hidden sequence and the final state."""
        if self.init_net is not None:
            if hx is None:
                hx = self.start_from_data(x)
            x = x[:, self.k :]
        seq, last = self.rnn(x, hx) if hx is not None else self.rnn(x)
        return self.head(seq), seq, last


def _steps_from(cfg: TrialConfig, washout: int) -> int:
    """First step that counts in loss and evaluation."""
    return washout if cfg.strategy in ("washout", "data_driven") else 0


def _pad(curve: np.ndarray, first: int) -> np.ndarray:
    return np.concatenate([np.full(first, np.nan), curve]) if first else curve


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _add(state, noise):
    if isinstance(state, tuple):
        return tuple(s + n for s, n in zip(state, noise, strict=True))
    return state + noise[0]


def _state_parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


# ---------------------------------------------------------------------- windows


def _errors(pred: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Per sequence and step (N, T): squared error averaged over outputs, or the
    cross-entropy of the logits against the class indices."""
    if classes:
        labels = y[..., 0].long()
        return nn.functional.cross_entropy(pred.transpose(1, 2), labels, reduction="none")
    return ((pred - y) ** 2).mean(dim=2)


def _window_loss(
    model: Model, x, y, first: int, strategy: str, data: TaskData | None = None
) -> torch.Tensor:
    pred, _, _ = model(x)
    if data is not None and (data.classes or data.loss_steps is not None):
        a, b = data.loss_steps or (0, y.shape[1])
        return _errors(pred, y, data.classes)[:, max(a, first) : b].mean()
    if strategy == "data_driven":
        return ((pred - y[:, first:]) ** 2).mean()
    return ((pred[:, first:] - y[:, first:]) ** 2).mean()


@torch.no_grad()
def _window_eval(
    model: Model, x, y, first: int, hx=None, classes: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    pred, seq, _ = model(x, hx)
    if model.init_net is None:
        pred = pred[:, first:]
    if classes:
        err = _errors(pred, y[:, first:], classes).mean(dim=0).double().cpu().numpy()
    else:
        err = ((pred - y[:, first:]) ** 2).mean(dim=(0, 2)).double().cpu().numpy()
    return _pad(err, first), seq


@torch.no_grad()
def _lstm_cells(model: Model, x, hx) -> torch.Tensor:
    """The LSTM cell states at every step (the layer only returns the last one)."""
    if model.init_net is not None:
        x = x[:, model.k :]
    h, c = hx
    cells = []
    for t in range(x.shape[1]):
        _, (h, c) = model.rnn.rnn(x[:, t : t + 1], (h, c))
        cells.append(c)
    return torch.stack(cells)


# ---------------------------------------------------------------------- chunks


def _chunk_pass(model: Model, x, y, cfg: TrialConfig, opt=None, noise=None):
    """One pass over the chunks of a batch of streams: trains when ``opt`` is given;
    returns per-step squared errors (S, C, L) and the hidden sequences."""
    stateful = cfg.strategy == "stateful"
    carried = None
    errs, seqs, starts = [], [], []
    for c in range(x.shape[1]):
        xc, yc = x[:, c], y[:, c]
        if stateful:
            hx = carried
            if hx is None:
                hx = model.rnn.initial_state.init(xc.shape[0], like=xc)  # zeros
        else:
            hx = model.own_start(xc)
        if noise is not None:
            hx = _add(hx, [n[:, c].unsqueeze(0) for n in noise])
        starts.append(hx)
        pred, seq, last = model(xc, hx)
        err = (pred - yc) ** 2
        if opt is not None:
            opt.zero_grad()
            err.mean().backward()
            opt.step()
        carried = _detach(last)
        errs.append(err.detach()[..., 0])
        seqs.append(seq.detach())
    return torch.stack(errs, 1), seqs, starts


# ---------------------------------------------------------------------- trial


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (task, cell, strategy, seed) at a budget in PyTorch."""
    cfg = TrialConfig.from_dict(config)
    if cfg.framework != "torch":
        raise ValueError(f"train_torch runs framework 'torch'; got {cfg.framework!r}")
    return _run(
        cfg, common.budget_settings(cfg.budget, cfg.task), _data(cfg.task, cfg.seed, cfg.budget)
    )


def _run(cfg: TrialConfig, s: dict[str, Any], data: TaskData) -> dict[str, Any]:
    """Train and evaluate one trial on ``data`` with the sizes ``s`` (see ``run_trial``)."""
    torch.set_num_threads(1)
    device = _device()
    outputs = data.classes or data.train_y.shape[-1]
    model = Model(cfg, s["hidden"], data.washout, data.train_x.shape[-1], outputs).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    rng = common.batch_rng(cfg.seed)
    first = _steps_from(cfg, data.washout)

    def t(a):
        return torch.from_numpy(a).to(device)

    train_x, train_y = t(data.train_x), t(data.train_y)
    val_x, val_y, test_x, test_y = map(t, (data.val_x, data.val_y, data.test_x, data.test_y))

    def val_mse() -> float:
        model.eval()
        with torch.no_grad():
            if data.kind == "chunks":
                err, _, _ = _chunk_pass(model, val_x, val_y, cfg)
                return float(err.mean())
            curve, _ = _window_eval(model, val_x, val_y, first, classes=data.classes)
            if data.loss_steps is not None:
                return common.window_mean(curve, data.loss_steps)
            return float(np.nanmean(curve))

    def test_curve() -> np.ndarray:
        model.eval()
        curve, _ = _window_eval(model, test_x, test_y, first, classes=data.classes)
        return curve

    start = time.perf_counter()
    val_by_epoch: list[float] = []
    checkpoints: list[dict[str, float]] = []
    plan = common.training_plan(s, train_x.shape[0])
    best, best_epoch, best_state = np.inf, 0, copy.deepcopy(model.state_dict())
    trained = 0
    for epoch in range(plan.epochs):
        trained = epoch + 1
        model.train()
        for idx in common.epoch_batches(rng, train_x.shape[0], s["batch_size"]):
            i = torch.from_numpy(idx).to(device)
            if data.kind == "chunks":
                _chunk_pass(model, train_x[i], train_y[i], cfg, opt=opt)
            else:
                opt.zero_grad()
                _window_loss(model, train_x[i], train_y[i], first, cfg.strategy, data).backward()
                opt.step()
        if not plan.evaluates(epoch):
            continue
        v = val_mse()
        val_by_epoch.append(v)
        if epoch in plan.checkpoints:
            with torch.no_grad():
                checkpoints.append(
                    common.checkpoint_record(plan.checkpoints[epoch], v, test_curve())
                )
        if v < best:
            best, best_epoch, best_state = v, epoch, copy.deepcopy(model.state_dict())
        elif plan.stops(epoch, best_epoch):
            break
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()

    curves: dict[str, list[float]] = {}
    with torch.no_grad():
        if data.kind == "chunks":
            err, seqs, starts = _chunk_pass(model, test_x, test_y, cfg)
            curves["test"] = err.mean(dim=(0, 1)).double().cpu().numpy().tolist()
            h_all = torch.cat(seqs, 1)
            rms = [float(h_all.pow(2).mean().sqrt())]
            if model.lstm:
                cells = [_lstm_cells(model, test_x[:, c], st) for c, st in enumerate(starts)]
                rms.append(float(torch.cat(cells).pow(2).mean().sqrt()))
            shape = (test_x.shape[0], test_x.shape[1], s["hidden"])
            for j, scale in enumerate(PERTURB_SCALES):
                base = t(common.perturb_noise(cfg.seed, j, shape))
                noise = [base * (scale * r) for r in rms]
                perr, _, _ = _chunk_pass(model, test_x, test_y, cfg, noise=noise)
                curves[f"perturbed@{scale}"] = perr.mean(dim=(0, 1)).double().cpu().numpy().tolist()
        else:
            curve, seq = _window_eval(model, test_x, test_y, first, classes=data.classes)
            curves["test"] = curve.tolist()
            if s.get("per_sequence"):
                pred = model(test_x)[0].double().cpu().numpy()
                curves.update(common.sequence_curves(pred, data.test_y, first))
            own = model.own_start(test_x)
            rms = [float(seq.pow(2).mean().sqrt())]
            if model.lstm:
                rms.append(float(_lstm_cells(model, test_x, own).pow(2).mean().sqrt()))
            shape = (test_x.shape[0], s["hidden"])
            for j, scale in enumerate(PERTURB_SCALES):
                base = t(common.perturb_noise(cfg.seed, j, shape)).unsqueeze(0)
                noise = [base * (scale * r) for r in rms]
                hx = _add(own, noise) if model.lstm else own + noise[0]
                pcurve, _ = _window_eval(model, test_x, test_y, first, hx=hx, classes=data.classes)
                curves[f"perturbed@{scale}"] = pcurve.tolist()
    curves["val_by_epoch"] = val_by_epoch
    scalars = common.summarize(curves)
    scalars.update(
        epochs=trained,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        state_rms=rms[0],
    )
    return {
        "curves": curves,
        "scalars": scalars,
        "checkpoints": checkpoints,
        "framework_version": f"torch {torch.__version__}",
        "device": device_name(device),
    }
