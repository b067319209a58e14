"""What a supervised run leaves in MLflow at the end: the best model (weights-only state and
the MLflow pytorch flavour), a confusion matrix (classifiers) or text samples (LMs)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainyard.checkpoints import save_state


@torch.no_grad()
def confusion_matrix(model, dataset, device, num_classes: int) -> np.ndarray:
    model.eval()
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for inputs, targets in torch.utils.data.DataLoader(dataset, batch_size=256):
        predicted = model(inputs.to(device)).argmax(-1).cpu().numpy()
        np.add.at(matrix, (targets.numpy(), predicted), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(names) + 2)
    fig, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    axis.set_title(f"test confusion matrix (accuracy {accuracy:.3f})")
    if len(names) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axis.text(j, i, str(count), ha="center", va="center", fontsize=7,
                          color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def sample_text(model, vocab: list[str], prompt: str, context: int, length: int,
                temperature: float = 0.8, seed: int = 0) -> str:
    """Generate `length` characters after `prompt`, one at a time, from the model's softmax."""
    model.eval()
    device = next(model.parameters()).device
    lookup = {ch: i for i, ch in enumerate(vocab)}
    ids = [lookup[ch] for ch in prompt if ch in lookup] or [0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(length):
        window = torch.tensor([ids[-context:]], device=device)
        logits = model(window)[0, -1].float().cpu() / temperature
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)))
    return "".join(vocab[i] for i in ids)


def log_run_artifacts(spec, records, model, data, device) -> None:
    """Rank 0, after training, with the best weights loaded into `model`."""
    info = data.info
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "best_model")
        save_state(folder, {"model": model.state_dict()})
        (folder / "info.json").write_text(json.dumps({
            "model": spec.model.model_dump(mode="json"), "task": info.task,
            "class_names": info.class_names, "vocab": info.vocab, "seq_len": info.seq_len,
            "in_channels": info.in_channels, "pixel_mean": info.pixel_mean,
            "pixel_std": info.pixel_std}))
        records.log_artifacts(folder, "best_model")
        if info.task == "lm":
            prompts = ["The ", "def ", "In "][: spec.output.samples]
            text = "\n\n----\n\n".join(sample_text(model, info.vocab, p, info.seq_len, 300,
                                                    seed=i) for i, p in enumerate(prompts))
            if text:
                records.log_text(text, "samples.txt")
        else:
            matrix = confusion_matrix(model, data.test, device, info.num_classes)
            plot_confusion(matrix, info.class_names, Path(tmp, "confusion_matrix.png"))
            records.log_artifact(Path(tmp, "confusion_matrix.png"), "plots")
    if spec.output.log_model:
        example = data.val.tensors[0][:2]
        records.log_torch_model(model.cpu().eval(), example.numpy(),
                                spec.output.register_as)
        model.to(device)
