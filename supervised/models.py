"""Supervised models: pure torch modules, configured from the spec's `model` section."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm + shortcut; the shortcut projects when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: bool):
        super().__init__()
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not norm)
        self.norm1 = make_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=not norm)
        self.norm2 = make_norm(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=not norm),
                                          make_norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for small images (8x8 to 32x32): no max-pool stem, global average pool.

    widths=[32, 64] gives two stages; each stage after the first halves the resolution.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: list[int],
                 blocks_per_stage: int = 1, dropout: float = 0.0, norm: str = "batch"):
        super().__init__()
        use_norm = norm == "batch"
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not use_norm),
            nn.BatchNorm2d(widths[0]) if use_norm else nn.Identity(), nn.ReLU())
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride, use_norm))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.blocks(self.stem(x)))


class RNNNet(nn.Module):
    """LSTM/GRU over a sequence. Classifier: the final state (both directions) -> classes.
    Language model: every step's state -> next-token logits."""

    def __init__(self, cell: str, num_outputs: int, hidden: int, layers: int,
                 bidirectional: bool, dropout: float, input_dim: int = 0, vocab: int = 0,
                 embed_dim: int = 64, lm: bool = False):
        super().__init__()
        self.lm, self.hidden = lm, hidden
        self.embed = nn.Embedding(vocab, embed_dim) if vocab else nn.Identity()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed_dim if vocab else input_dim, hidden, layers, batch_first=True,
                       dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) ids or (B, T, F)
        out, _ = self.rnn(self.embed(x))  # (B, T, H * directions)
        if self.lm:
            return self.head(self.drop(out))  # (B, T, vocab)
        last = out[:, -1]
        if self.rnn.bidirectional:  # the backward direction has read everything at step 0
            last = torch.cat([out[:, -1, :self.hidden], out[:, 0, self.hidden:]], dim=-1)
        return self.head(self.drop(last))  # (B, classes)


def build_model(model_spec, info, sample=None) -> nn.Module:
    """The model the spec's `model` section describes, sized for the data (`DataInfo`;
    `sample`, a batch of inputs, gives a user's factory the image size)."""
    from trainyard.supervised.transformer import TransformerNet

    arch = model_spec.arch
    if ":" in arch:  # the user's own `module:factory`
        from trainyard.supervised.custom_model import build

        return build(model_spec, info, sample)
    if arch == "resnet":
        return ResNet(info.in_channels, info.num_classes, list(model_spec.widths),
                      model_spec.blocks_per_stage, model_spec.dropout, model_spec.norm)
    lm = info.task == "lm"
    outputs = len(info.vocab) if lm else info.num_classes
    vocab = len(info.vocab) if lm else 0
    if arch in ("lstm", "gru"):
        return RNNNet(arch, outputs, model_spec.hidden, model_spec.layers,
                      model_spec.bidirectional, model_spec.dropout, input_dim=info.feature_dim,
                      vocab=vocab, embed_dim=model_spec.embed_dim, lm=lm)
    if arch == "transformer":
        return TransformerNet(outputs, model_spec.d_model, model_spec.heads, model_spec.layers,
                              model_spec.ff_mult, model_spec.dropout, model_spec.positions,
                              max_len=info.seq_len, input_dim=info.feature_dim, vocab=vocab,
                              causal=lm)
    raise ValueError(f"unknown model arch {arch!r}")
