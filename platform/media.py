"""Images and GIFs the workloads log: evaluation episodes (RL) and sample grids (generative
models). numpy and Pillow only, imported when a picture is made."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: frames kept in one GIF (at most; longer sequences are subsampled)
MAX_GIF_FRAMES = 400


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    """The frames (H, W[, 3] uint8) as an animated GIF, subsampled to at most MAX_GIF_FRAMES."""
    from PIL import Image

    step = max(1, -(-len(frames) // MAX_GIF_FRAMES))
    images = [Image.fromarray(f) for f in frames[::step]]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=int(1000 * step / fps))
    return path


def grid(images: np.ndarray, columns: int, scale: int = 1, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) pixels in [0, 1] as one uint8 picture of `columns` per row, each image
    enlarged `scale` times (nearest neighbour: 8x8 digits stay legible), on a grey border."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    pixels = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = height * scale, width * scale
    canvas = np.full((channels, rows * (h + pad) + pad, columns * (w + pad) + pad), 0.5,
                     dtype=np.float32)
    for index in range(n):
        r, c = divmod(index, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[:, top:top + h, left:left + w] = pixels[index]
    picture = (canvas * 255).round().astype(np.uint8)
    return picture[0] if channels == 1 else picture.transpose(1, 2, 0)


def plot_curves(histories: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """One panel per metric, its (step, value) points as a line, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.4),
                             squeeze=False)
    for axis, (key, points) in zip(axes[0], histories.items(), strict=True):
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, marker="." if len(steps) < 50 else None)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_pixels(fig) -> np.ndarray:
    """A matplotlib figure as an RGB uint8 array (for MLflow images), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture
