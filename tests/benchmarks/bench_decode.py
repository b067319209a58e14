"""Transformer seq2seq decoding: the cached step (each layer's keys and values kept, one new
position per step) against re-decoding the whole prefix at every step, as the step did before.

The model is the shipped `seq2seq_dates_transformer.yaml` size (d_model 128, 4 heads, 2+2
layers), untrained: decoding cost does not depend on the weights, so both sides are forced to
the same number of steps (no EOS). Greedy decoding of 512 sources of 20 tokens, in batches of
512 (as the evaluation decodes) and one source at a time with a beam of 4 (as `trainyard
translate --beam 4` does), at output lengths 16 (dates) and 64 (sentences). The two sides take
turns, 3 rounds each, best round kept. Prints one line:

    decode: greedy 512x16 2.1x (cached 40 ms vs 84 ms) | ... | beam4 1x64 5.0x (...)

Run: .venv/bin/python tests/benchmarks/bench_decode.py
"""

from __future__ import annotations

import time

import torch

from trainyard.supervised.seq2seq import TransformerSeq2Seq, take


class Uncached:
    """The same network with the old step: the whole prefix through the decoder each time."""

    def __init__(self, model):
        self.model = model
        self.encode, self.select = model.encode, model.select

    def eval(self):
        return self

    def step(self, memory, prefix, cache):
        logits = self.model._decode(memory, prefix)[:, -1]
        return torch.log_softmax(logits.float(), -1), None, None


def forced_greedy(model, src, steps):
    """Greedy decoding for exactly `steps` tokens (the loop of seq2seq.greedy, no EOS stop)."""
    with torch.no_grad():
        memory = model.encode(src)
        prefix = torch.full((len(src), 1), 1, dtype=torch.long)
        cache = None
        for _ in range(steps):
            log_probs, cache, _ = model.step(memory, prefix, cache)
            prefix = torch.cat([prefix, log_probs.argmax(-1)[:, None]], 1)


def forced_beam(model, src, beam, steps):
    """Beam search's per-step work for `steps` steps: `beam` rows, reordered every step."""
    with torch.no_grad():
        memory = model.encode(src)
        prefix = torch.full((1, 1), 1, dtype=torch.long)
        cache = None
        for _ in range(steps):
            mem = model.select(memory, torch.zeros(len(prefix), dtype=torch.long))
            log_probs, cache, _ = model.step(mem, prefix, cache)
            rows = torch.arange(beam) % len(prefix)
            cache = take(cache, rows)
            prefix = torch.cat([prefix[rows], log_probs[rows].argmax(-1)[:, None]], 1)


def timed(run, model) -> float:
    start = time.perf_counter()
    run(model)
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = TransformerSeq2Seq(60, 40, 128, 4, 2, 4, 0.1, max_len=128).eval()
    old = Uncached(model)
    src = torch.randint(3, 60, (512, 20))
    parts = []
    for name, run in [
        ("greedy 512x16", lambda m: forced_greedy(m, src, 16)),
        ("greedy 512x64", lambda m: forced_greedy(m, src, 64)),
        ("beam4 1x16", lambda m: forced_beam(m, src[:1], 4, 16)),
        ("beam4 1x64", lambda m: forced_beam(m, src[:1], 4, 64)),
    ]:
        new_s, old_s = [], []
        for _ in range(3):  # taking turns: the VM's speed drifts
            new_s.append(timed(run, model))
            old_s.append(timed(run, old))
        new, before = min(new_s), min(old_s)
        parts.append(f"{name} {before / new:.1f}x (cached {new * 1e3:.0f} ms vs "
                     f"{before * 1e3:.0f} ms)")
    print("decode: " + " | ".join(parts))


if __name__ == "__main__":
    main()
