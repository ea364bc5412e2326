"""Noisy initial state in plain PyTorch: a learned base state plus
N(0, sigma^2) noise in training; after model.eval(), exactly the base."""

import torch
from torch import nn


class NoisyStateRNN(nn.Module):
    def __init__(self, rnn: nn.RNNBase, sigma: float = 0.1):
        super().__init__()  # rnn: an nn.GRU, nn.LSTM or nn.RNN
        self.rnn, self.sigma = rnn, sigma
        rows = rnn.num_layers * (2 if rnn.bidirectional else 1)
        h_size = rnn.proj_size or rnn.hidden_size
        self.h0 = nn.Parameter(torch.zeros(rows, h_size))
        self.c0 = None
        if isinstance(rnn, nn.LSTM):
            self.c0 = nn.Parameter(torch.zeros(rows, rnn.hidden_size))

    def start(self, base, batch):
        state = base[:, None].expand(-1, batch, -1)
        if self.training:  # a fresh draw per sequence, from torch's RNG
            state = state + self.sigma * torch.randn_like(state)
        return state.contiguous()

    def forward(self, x):
        batch = x.shape[0 if self.rnn.batch_first else 1]
        h0 = self.start(self.h0, batch)
        if self.c0 is None:
            return self.rnn(x, h0)
        return self.rnn(x, (h0, self.start(self.c0, batch)))
