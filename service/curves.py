"""Learning curves of an inner run as a PNG: held-out reward, gold judge, KL, repetition."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PANELS = (
    ("eval/rm_mean", "held-out RM reward"),
    ("eval/gold_mean", "gold judge (VADER)"),
    ("eval/kl", "KL to the reference (nats / response)"),
    ("eval/repeated_token_fraction", "repeated-token fraction"),
)


def learning_curve_png(curves: Mapping[int, Mapping[str, float]], path: Path, title: str) -> None:
    """One panel per signal against PPO steps; panels the run has no values for are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    steps = sorted(curves)
    panels = [(k, label) for k, label in PANELS if any(k in curves[s] for s in steps)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        xs = [s for s in steps if key in curves[s]]
        ax.plot(xs, [curves[s][key] for s in xs], marker="o", markersize=3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
