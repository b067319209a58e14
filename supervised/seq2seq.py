"""Encoder-decoder networks and their decoding: a GRU with additive (Bahdanau) attention, the
same GRU without attention (the control: the decoder sees one summary of the source, as in Cho
et al. 2014), and a Transformer encoder-decoder (torch's, with source padding masked in the
encoder and in cross-attention, causal plus padding masks in the decoder).

Both expose `encode(src) -> memory` and `step(memory, prefix) -> next-token log-probs`, which
is all greedy and beam-search decoding need; `forward(src, tgt_in)` is teacher forcing.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from trainyard.supervised.seq2seq_data import BOS, EOS, PAD


class GRUSeq2Seq(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, embed: int, hidden: int,
                 attention: bool, dropout: float = 0.1):
        super().__init__()
        self.attention, self.hidden = attention, hidden
        self.src_embed = nn.Embedding(src_vocab, embed, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab, embed, padding_idx=PAD)
        self.encoder = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, hidden)
        if attention:  # additive attention: v^T tanh(W_s s + W_h h_j)
            self.query = nn.Linear(hidden, hidden, bias=False)
            self.key = nn.Linear(2 * hidden, hidden)
            self.score = nn.Linear(hidden, 1, bias=False)
        self.cell = nn.GRUCell(embed + 2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden + 2 * hidden + embed, tgt_vocab)

    def encode(self, src: torch.Tensor):
        mask = src != PAD
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.src_embed(src)), lengths,
                                                   batch_first=True, enforce_sorted=False)
        out, last = self.encoder(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=src.shape[1])
        summary = torch.cat([last[0], last[1]], -1)  # both directions' final states
        state = torch.tanh(self.bridge(summary))
        keys = self.key(out) if self.attention else out
        return {"out": out, "keys": keys, "mask": mask, "summary": summary, "state": state}

    def _context(self, memory, state):
        if not self.attention:  # the control: one fixed summary of the whole source
            return memory["summary"], None
        scores = self.score(torch.tanh(self.query(state)[:, None] + memory["keys"])).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~memory["mask"], -1e9), -1)
        return torch.bmm(weights[:, None], memory["out"]).squeeze(1), weights

    def _advance(self, memory, state, token):
        emb = self.drop(self.tgt_embed(token))
        context, weights = self._context(memory, state)
        state = self.cell(torch.cat([emb, context], -1), state)
        logits = self.out(self.drop(torch.cat([state, context, emb], -1)))
        return logits, state, weights

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, S) source, (B, T) target inputs -> (B, T, vocab) logits."""
        memory = self.encode(src)
        state, logits = memory["state"], []
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = self._advance(memory, state, tgt_in[:, t])
            logits.append(step_logits)
        return torch.stack(logits, 1)

    def step(self, memory, prefix: torch.Tensor, cache=None):
        """Log-probs of the next token after `prefix` (B, t); `cache` carries the state."""
        state = memory["state"] if cache is None else cache
        logits, state, weights = self._advance(memory, state, prefix[:, -1])
        return F.log_softmax(logits.float(), -1), state, weights

    @staticmethod
    def select(memory, index: torch.Tensor):
        return {k: v.index_select(0, index) for k, v in memory.items()}


class TransformerSeq2Seq(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int, heads: int, layers: int,
                 ff_mult: int, dropout: float, max_len: int = 256):
        super().__init__()
        self.d_model = d_model
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, d_model)
        with warnings.catch_warnings():  # nested tensors are off with pre-norm: it says so
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.net = nn.Transformer(d_model, heads, layers, layers, ff_mult * d_model,
                                      dropout, batch_first=True, norm_first=True)
        self.out = nn.Linear(d_model, tgt_vocab)

    def _embed(self, embed: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        where = torch.arange(ids.shape[1], device=ids.device)
        return embed(ids) * math.sqrt(self.d_model) + self.positions(where)[None]

    def encode(self, src: torch.Tensor):
        mask = src == PAD
        return {"out": self.net.encoder(self._embed(self.src_embed, src),
                                        src_key_padding_mask=mask), "pad": mask}

    def _decode(self, memory, tgt_in: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(
            tgt_in.shape[1], device=tgt_in.device, dtype=torch.bool)
        hidden = self.net.decoder(self._embed(self.tgt_embed, tgt_in), memory["out"],
                                  tgt_mask=causal, tgt_key_padding_mask=tgt_in == PAD,
                                  memory_key_padding_mask=memory["pad"])
        return self.out(hidden)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self._decode(self.encode(src), tgt_in)

    def step(self, memory, prefix: torch.Tensor, cache=None):
        """Log-probs of the token after `prefix`, decoding one position per call: `cache`
        holds each layer's self-attention keys and values of the positions before and the
        cross-attention keys and values of the source, so a step costs one position's work
        instead of the whole prefix's (the same numbers as `_decode`'s last row: test)."""
        if cache is None:
            cache = {"cross": [self._heads(memory["out"], layer.multihead_attn, 1, 2)
                               for layer in self.net.decoder.layers],
                     "self": [None] * len(self.net.decoder.layers)}
            for t in range(prefix.shape[1] - 1):  # a prefix given without its cache
                self._one(memory, prefix[:, t:t + 1], t, cache)
        hidden, weights = self._one(memory, prefix[:, -1:], prefix.shape[1] - 1, cache)
        return F.log_softmax(self.out(hidden)[:, 0].float(), -1), cache, weights

    @staticmethod
    def _heads(x, attn: nn.MultiheadAttention, first: int, count: int) -> list[torch.Tensor]:
        """x (B, T, C) through `count` of `attn`'s input projections from the `first` (0 query,
        1 key, 2 value), each split into heads: (B, heads, T, C/heads)."""
        rows = slice(first * x.shape[-1], (first + count) * x.shape[-1])
        projected = F.linear(x, attn.in_proj_weight[rows], attn.in_proj_bias[rows])
        return [p.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
                for p in projected.chunk(count, -1)]

    def _one(self, memory, token: torch.Tensor, position: int, cache):
        """One decoder position through every layer (pre-norm, as nn.TransformerDecoderLayer
        with norm_first and eval-mode dropout), appending its keys and values to `cache`."""
        where = torch.full((1,), position, device=token.device)
        x = self.tgt_embed(token) * math.sqrt(self.d_model) + self.positions(where)[None]
        attend = ~memory["pad"][:, None, None, :]  # (B, 1, 1, S): True where a real token
        weights = None
        for i, layer in enumerate(self.net.decoder.layers):
            q, k, v = self._heads(layer.norm1(x), layer.self_attn, 0, 3)
            if cache["self"][i] is not None:
                k_old, v_old = cache["self"][i]
                k, v = torch.cat([k_old, k], 2), torch.cat([v_old, v], 2)
            cache["self"][i] = (k, v)
            out = F.scaled_dot_product_attention(q, k, v)
            x = x + layer.self_attn.out_proj(out.transpose(1, 2).flatten(2))
            (q,) = self._heads(layer.norm2(x), layer.multihead_attn, 0, 1)
            k, v = cache["cross"][i]
            scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~attend,
                                                                                  -math.inf)
            probs = scores.softmax(-1)
            out = (probs @ v).transpose(1, 2).flatten(2)
            x = x + layer.multihead_attn.out_proj(out)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
            weights = probs.mean(1)[:, 0]  # the last layer's, averaged over heads: (B, S)
        return self.net.decoder.norm(x), weights

    @staticmethod
    def select(memory, index: torch.Tensor):
        return {k: v.index_select(0, index) for k, v in memory.items()}


def take(cache, rows: torch.Tensor):
    """The decoding state of the beam rows kept (a GRU's state tensor, or a Transformer's
    nested lists of key/value tensors)."""
    if cache is None:
        return None
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, rows)
    if isinstance(cache, dict):
        return {k: take(v, rows) for k, v in cache.items()}
    return type(cache)(take(v, rows) for v in cache)


@torch.no_grad()
def greedy(model, src: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, <= max_len) token ids (EOS-terminated rows) and the (B, T, S) attention weights."""
    model.eval()
    memory = model.encode(src)
    prefix = torch.full((len(src), 1), BOS, dtype=torch.long, device=src.device)
    cache, weights, done = None, [], torch.zeros(len(src), dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        log_probs, cache, w = model.step(memory, prefix, cache)
        token = log_probs.argmax(-1).masked_fill(done, PAD)
        prefix = torch.cat([prefix, token[:, None]], 1)
        if w is not None:
            weights.append(w)
        done |= token == EOS
        if done.all():
            break
    return prefix[:, 1:], (torch.stack(weights, 1) if weights else None)


@torch.no_grad()
def beam_search(model, src: torch.Tensor, beam: int, max_len: int,
                length_penalty: float = 1.0) -> list[int]:
    """The best hypothesis for one source (1, S) by beam search; finished hypotheses are
    ranked by log-prob / length ** length_penalty (0: raw log-prob, 1: per token)."""
    model.eval()
    memory = model.encode(src)
    prefixes = torch.full((1, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.zeros(1, device=src.device)
    cache, finished = None, []
    for _ in range(max_len):
        rows = len(prefixes)
        mem = model.select(memory, torch.zeros(rows, dtype=torch.long, device=src.device))
        log_probs, cache, _ = model.step(mem, prefixes, cache)
        total = (scores[:, None] + log_probs).flatten()
        top, index = total.topk(min(beam * 2, len(total)))
        vocab = log_probs.shape[-1]
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, flat in zip(top.tolist(), index.tolist(), strict=True):
            row, token = divmod(flat, vocab)
            if token == EOS:
                length = prefixes.shape[1]  # tokens after BOS, EOS included
                finished.append((score / length ** length_penalty,
                                 prefixes[row, 1:].tolist()))
            else:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
            if len(keep_rows) == beam:
                break
        if len(finished) >= beam or not keep_rows:
            break
        rows_t = torch.tensor(keep_rows, device=src.device)
        prefixes = torch.cat([prefixes[rows_t], torch.tensor(keep_tokens,
                                                             device=src.device)[:, None]], 1)
        scores = torch.tensor(keep_scores, device=src.device)
        cache = take(cache, rows_t)
    if not finished:  # nothing ended within max_len: the best unfinished one
        return prefixes[0, 1:].tolist()
    return max(finished)[1]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
