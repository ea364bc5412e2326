"""A uniform random initial state in plain PyTorch: U(-b, b), b = 1/sqrt(H)."""

import torch
from torch import nn


def uniform_state(rnn: nn.RNNBase, x, generator: torch.Generator, bound=None):
    """h0, or (h0, c0) for an LSTM: (layers * directions, batch, H) each."""
    rows = rnn.num_layers * (2 if rnn.bidirectional else 1)
    batch = x.shape[0] if rnn.batch_first else x.shape[1]
    sizes = [rnn.proj_size or rnn.hidden_size]  # h (an LSTM may project it)
    if isinstance(rnn, nn.LSTM):
        sizes.append(rnn.hidden_size)  # c
    states = []
    for size in sizes:
        b = bound or 1 / size**0.5  # the state's size, not the batch
        # resampled every call, from the (CPU) generator
        u = torch.rand(rows, batch, size, generator=generator)
        states.append((u * (2 * b) - b).to(x))  # x's dtype and device
    return states[0] if len(states) == 1 else tuple(states)


if __name__ == "__main__":
    generator = torch.Generator().manual_seed(0)  # same seed, same states
    gru = nn.GRU(input_size=3, hidden_size=8, num_layers=2, batch_first=True)
    x = torch.randn(4, 10, 3)  # (batch, time, features)
    y, h_n = gru(x, uniform_state(gru, x, generator))
