"""Learnable initial state in plain PyTorch: one trainable vector per layer
and direction (LSTM: one for h, one for c), shared by the whole batch."""

import torch
from torch import nn


class LearnableStateRNN(nn.Module):
    def __init__(self, rnn: nn.RNNBase):  # an nn.GRU, nn.LSTM or nn.RNN
        super().__init__()
        self.rnn = rnn
        rows = rnn.num_layers * (2 if rnn.bidirectional else 1)
        h_size = rnn.proj_size or rnn.hidden_size
        self.h0 = nn.Parameter(torch.zeros(rows, h_size))
        self.c0 = None
        if isinstance(rnn, nn.LSTM):
            self.c0 = nn.Parameter(torch.zeros(rows, rnn.hidden_size))

    def forward(self, x):
        batch = x.shape[0 if self.rnn.batch_first else 1]
        # (rows, features) -> (rows, batch, features): expand makes a view,
        # contiguous() the copy that cuDNN needs
        h0 = self.h0[:, None].expand(-1, batch, -1).contiguous()
        if self.c0 is None:
            return self.rnn(x, h0)
        c0 = self.c0[:, None].expand(-1, batch, -1).contiguous()
        return self.rnn(x, (h0, c0))
