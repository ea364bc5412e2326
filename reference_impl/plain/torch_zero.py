"""The zero initial state in plain PyTorch: nn.GRU's and nn.LSTM's default.

Pass it explicitly to reset a state you carry from one call to the next."""

import torch
from torch import nn


def zero_state(rnn: nn.RNNBase, x: torch.Tensor):
    """h0, or (h0, c0) for an LSTM: zeros, (layers * directions, batch, H)."""
    rows = rnn.num_layers * (2 if rnn.bidirectional else 1)
    batch = x.shape[0] if rnn.batch_first else x.shape[1]
    h_size = rnn.proj_size or rnn.hidden_size  # an LSTM may project h
    h0 = x.new_zeros(rows, batch, h_size)  # on x's dtype and device
    if isinstance(rnn, nn.LSTM):
        return h0, x.new_zeros(rows, batch, rnn.hidden_size)
    return h0


if __name__ == "__main__":
    gru = nn.GRU(input_size=3, hidden_size=8, num_layers=2, batch_first=True)
    x = torch.randn(4, 10, 3)  # (batch, time, features)
    y, h_n = gru(x, zero_state(gru, x))
    assert torch.equal(y, gru(x)[0])  # exactly what gru(x) does
