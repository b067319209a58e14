"""Sequence to sequence as a task of the one training loop (see tasks.py): teacher forcing for
training; greedy decoding of every held-out example for exact match and character error rate
(per test group: dates in seen and in unseen formats); beam search when `model.beam_size` > 1;
BLEU through sacrebleu; attention heat maps and a table of translations as artifacts; and
`trainyard translate RUN_ID "text"`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainyard.checkpoints import save_state
from trainyard.supervised.seq2seq import (
    GRUSeq2Seq,
    TransformerSeq2Seq,
    beam_search,
    edit_distance,
    greedy,
)
from trainyard.supervised.seq2seq_data import PAD, Vocab
from trainyard.supervised.tasks import Nets, Task

HEATMAPS = 4  # held-out examples whose attention is drawn


def build_seq2seq(model_spec, source: int, target: int, max_len: int = 256):
    if model_spec.arch == "seq2seq_gru":
        return GRUSeq2Seq(source, target, model_spec.embed_dim, model_spec.hidden,
                          model_spec.attention == "bahdanau", model_spec.dropout)
    return TransformerSeq2Seq(source, target, model_spec.d_model, model_spec.heads,
                              model_spec.layers, model_spec.ff_mult, model_spec.dropout,
                              max_len=max_len)


class Seq2SeqTask(Task):
    #: what `init_from` carries over: the encoder (and its embeddings), so a new target
    #: language starts from a trained reader of the source
    backbone = ("src_embed.", "encoder.", "bridge.", "net.encoder.", "positions.")

    def __init__(self, spec, info=None):
        super().__init__(spec, info)
        if info is not None:
            self.source = Vocab(info.vocab, info.word_tokens)
            self.target = Vocab(info.target_vocab, info.word_tokens)

    def build(self, sample: torch.Tensor) -> Nets:
        return {"model": build_seq2seq(self.spec.model, len(self.source.tokens),
                                       len(self.target.tokens))}

    def loss(self, model, src, tgt, step: int):
        logits = model(src, tgt[:, :-1])
        labels = tgt[:, 1:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=PAD)
        real = labels != PAD
        tokens = int(real.sum())
        hits = ((logits.argmax(-1) == labels) & real).sum()
        return loss, {"loss": loss.detach() * tokens, "token_accuracy": hits}, tokens

    # --------------------------------------------------------------------------- decoding
    def decode(self, model, src: torch.Tensor, device, beam: int = 1) -> list[str]:
        cap = self.spec.model.max_output_len
        if beam > 1:
            return [self.target.decode(beam_search(model, row[None].to(device), beam, cap,
                                                   self.spec.model.length_penalty))
                    for row in src]
        out = []
        for chunk in src.split(512):
            ids, _ = greedy(model, chunk.to(device), cap)
            out += [self.target.decode(row) for row in ids.tolist()]
        return out

    def scores(self, model, dataset, device, beam: int = 1) -> dict[str, np.ndarray]:
        src, tgt = dataset.tensors[0], dataset.tensors[1]
        guesses = self.decode(model, src, device, beam)
        truths = [self.target.decode(row[1:]) for row in tgt.tolist()]
        exact = np.array([g == t for g, t in zip(guesses, truths, strict=True)], dtype=float)
        cer = np.array([edit_distance(g, t) / max(1, len(t))
                        for g, t in zip(guesses, truths, strict=True)])
        return {"exact": exact, "cer": cer, "guesses": guesses, "truths": truths}

    @torch.no_grad()
    def evaluate(self, nets: Nets, dataset, device, autocast=None,
                 found: dict | None = None) -> dict[str, float]:
        """Teacher-forced loss and token accuracy, and greedy decoding's exact match and CER
        (`found`: this split's greedy `scores`, when the caller has them already)."""
        metrics = super().evaluate(nets, torch.utils.data.TensorDataset(*dataset.tensors[:2]),
                                   device, autocast)
        if found is None:
            found = self.scores(nets["model"], dataset, device)
        return {**metrics, "exact_match": float(found["exact"].mean()),
                "cer": float(found["cer"].mean())}

    def test_metrics(self, nets: Nets, data, device, autocast) -> dict[str, float]:
        import sacrebleu

        model, test = nets["model"], data.test
        greedy_found = self.scores(model, test, device)  # decoded once, used twice
        metrics = {f"test/{k}": v for k, v in
                   self.evaluate(nets, test, device, autocast, greedy_found).items()}
        groups = test.tensors[2].numpy()
        beam = self.spec.model.beam_size
        found = greedy_found if beam == 1 else self.scores(model, test, device, beam)
        suffix = f"_beam{beam}" if beam > 1 else ""
        for index, name in enumerate(self.info.groups):
            pick = groups == index
            if pick.any() and len(self.info.groups) > 1:
                key = name.replace(" ", "_")
                metrics[f"test/{key}/exact_match{suffix}"] = float(found["exact"][pick].mean())
                metrics[f"test/{key}/cer{suffix}"] = float(found["cer"][pick].mean())
        if beam > 1:
            metrics[f"test/exact_match{suffix}"] = float(found["exact"].mean())
        tokenize = "13a" if self.info.word_tokens else "char"
        metrics["test/bleu"] = float(sacrebleu.corpus_bleu(
            found["guesses"], [found["truths"]], tokenize=tokenize).score)
        self._table = [(self.source.decode(s.tolist()), g, t, self.info.groups[k])
                       for s, g, t, k in zip(test.tensors[0], found["guesses"],
                                             found["truths"], groups, strict=True)]
        return metrics

    # --------------------------------------------------------------------------- artifacts
    def _examples(self, data) -> list[int]:
        """A few test rows of every group, the same every epoch."""
        groups = data.test.tensors[2].numpy()
        per = max(1, HEATMAPS // max(1, len(self.info.groups)))
        return [int(i) for k in range(len(self.info.groups))
                for i in np.flatnonzero(groups == k)[:per]]

    def epoch_images(self, nets: Nets, data, records, step: int, epoch: int) -> None:
        if epoch % self.spec.eval.images_every_epochs:
            return
        model = nets["model"]
        if isinstance(model, GRUSeq2Seq) and not model.attention:
            return  # the control has no attention to draw
        device = next(model.parameters()).device
        for n, row in enumerate(self._examples(data)):
            src = data.test.tensors[0][row:row + 1]
            ids, weights = greedy(model, src.to(device), self.spec.model.max_output_len)
            if weights is None:
                continue
            source = [self.source.tokens[i] for i in src[0].tolist() if i != PAD]
            output = [self.target.tokens[i] for i in ids[0].tolist()]
            picture = heatmap(weights[0].cpu().numpy(), source, output)
            records.log_image(picture, f"attention_{n}", step)

    def final_artifacts(self, nets: Nets, data, records, device) -> None:
        model = nets["model"]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp, "best_model")
            save_state(folder, {"model": model.state_dict()})
            (folder / "info.json").write_text(json.dumps({
                "model": self.spec.model.model_dump(mode="json"), "task": "seq2seq",
                "source_vocab": self.source.tokens, "target_vocab": self.target.tokens,
                "word_tokens": self.info.word_tokens}))
            records.log_artifacts(folder, "best_model")
        table = getattr(self, "_table", [])
        wrong = [r for r in table if r[1] != r[2]]
        shown = wrong[:20] + [r for r in table if r[1] == r[2]][:10]
        lines = ["| group | source | output | reference |", "|---|---|---|---|"]
        lines += [f"| {k} | {s} | {g} | {t} |" for s, g, t, k in shown]
        records.log_text("\n".join(lines) + "\n", "translations.md")


def heatmap(weights: np.ndarray, source: list[str], output: list[str]) -> np.ndarray:
    """Attention weights (output steps x source tokens) drawn with their tokens, as RGB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(len(output), weights.shape[0])
    fig, axis = plt.subplots(figsize=(0.3 * len(source) + 1.5, 0.3 * rows + 1.2))
    axis.imshow(weights[:rows, :len(source)], cmap="viridis", aspect="auto", vmin=0)
    axis.set_xticks(range(len(source)), [repr(t)[1:-1] or "␣" for t in source], fontsize=7)
    axis.set_yticks(range(rows), output[:rows], fontsize=7)
    axis.set_xlabel("source")
    axis.set_ylabel("output")
    from trainyard.media import figure_pixels

    return figure_pixels(fig)


def translate(run_dir: Path, text: str, beam: int) -> str:
    """The saved model's output for `text` (run_dir: a downloaded best_model folder)."""
    from pydantic import TypeAdapter

    from trainyard.checkpoints import load_state
    from trainyard.supervised.spec import ModelSection

    info = json.loads((run_dir / "info.json").read_text())
    if info.get("task") != "seq2seq":
        raise ValueError(f"not a sequence-to-sequence run (its task is {info.get('task')!r})")
    model_spec = TypeAdapter(ModelSection).validate_python(info["model"])
    source = Vocab(info["source_vocab"], info["word_tokens"])
    target = Vocab(info["target_vocab"], info["word_tokens"])
    model = build_seq2seq(model_spec, len(source.tokens), len(target.tokens))
    model.load_state_dict(load_state(run_dir)["model"])
    ids = source.encode(text)
    if not ids:
        raise ValueError(f"none of {text!r} is in the model's source vocabulary")
    src = torch.tensor([ids])
    if beam > 1:
        out = beam_search(model, src, beam, model_spec.max_output_len,
                          model_spec.length_penalty)
    else:
        out = greedy(model, src, model_spec.max_output_len)[0][0].tolist()
    return target.decode(out)
