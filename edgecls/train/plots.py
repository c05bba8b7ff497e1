"""Training curves."""
from __future__ import annotations

from pathlib import Path


def plot_history(history: dict[str, list[float]], phase_boundary: int, path: str | Path) -> Path:
    """Loss and accuracy curves for training and validation, with the fine-tuning start marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker="o", ms=3,
                        label=("validation " if prefix else "training ") + key)
        if 0 < phase_boundary < len(history.get(key, [])):
            ax.axvline(phase_boundary + 0.5, color="gray", linestyle=":", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
