"""Fine-tuning and feature extraction: start a model from another run's weights.

The source is a trainyard run (`runs:/RUN_ID`, its `best_model/state.pt` artifact) or a local
`state.pt` / best_model folder. Weights are read with `torch.load(weights_only=True)`.
Every model here names its classifier `head`; everything else is the backbone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainyard.checkpoints import STATE_FILE, load_state
from trainyard.spec import UserInputError

HEAD = "head."


def resolve_source(source: str, download) -> Path:
    """A local folder holding state.pt. `download(run_id, artifact_path) -> local path`."""
    if source.startswith("runs:/"):
        run_id, _, sub = source.removeprefix("runs:/").partition("/")
        return Path(download(run_id, sub or "best_model"))
    path = Path(source)
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not (path / STATE_FILE).is_file():
        raise UserInputError(f"init_from.source {source!r}: no {STATE_FILE} there; give a "
                                "runs:/RUN_ID of a trainyard run or a best_model folder")
    return path


def load_init_state(source: str, download) -> dict[str, torch.Tensor]:
    return load_state(resolve_source(source, download))["model"]


def apply_init(model: torch.nn.Module, weights: dict[str, torch.Tensor], init,
               backbone: tuple[str, ...] | None = None) -> list[str]:
    """Load `weights` into `model`; replace the head if asked; freeze the backbone if asked.

    `backbone`: the name prefixes that make the backbone (an encoder-decoder's encoder);
    None: everything but `head.`. With a backbone given, only its weights are taken (a new
    target vocabulary keeps its own decoder). Returns the names of the parameters left
    trainable. A backbone that does not fit (another architecture or size) is a ValueError
    naming the first mismatches.
    """
    def in_backbone(name: str) -> bool:
        return name.startswith(backbone) if backbone else not name.startswith(HEAD)

    own = model.state_dict()
    take = {k: v for k, v in weights.items()
            if in_backbone(k) or not (init.new_head or backbone)}
    problems = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in take.items()
                if k in own and v.shape != own[k].shape]
    missing = [k for k in own if in_backbone(k) and k not in take]
    if problems or missing:
        detail = "; ".join(problems[:3] + [f"missing {k}" for k in missing[:3]])
        hint = " (set init_from.new_head: true for a new task)" if any(
            p.startswith(HEAD) for p in problems) else ""
        raise ValueError(f"init_from: the source model does not fit this model: {detail}{hint}")
    model.load_state_dict(take, strict=False)
    for name, param in model.named_parameters():
        param.requires_grad = not (init.freeze_backbone and in_backbone(name))
    return [n for n, p in model.named_parameters() if p.requires_grad]
