"""Per-token credit heatmaps: one row per method, one cell per response token.

Red is negative credit, blue positive, each row scaled to its own largest |credit| so that
the shape of every method shows whatever its scale.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

SHAPED = "shaped mix"
"""The row that mixes the methods' credits with a trial's weights."""


class Row(Protocol):
    """One method's credits and what they cost (`shaping.explain.Explanation` is one)."""

    @property
    def credits(self) -> Sequence[float]: ...
    @property
    def rows(self) -> int: ...
    @property
    def seconds(self) -> float: ...


class Recorded(NamedTuple):
    """A row as a trial keeps it (the dashboard's heatmaps)."""

    credits: Sequence[float]
    rows: int
    seconds: float


def _colour(value: float, scale: float) -> str:
    x = 0.0 if scale == 0 else max(-1.0, min(1.0, value / scale))
    fade = round(255 * (1 - abs(x)))
    return f"rgb({fade},{fade},255)" if x >= 0 else f"rgb(255,{fade},{fade})"


def _ink(value: float, scale: float) -> str:
    """White text on the darkest cells, so every number stays readable."""
    return ";color:#fff" if scale and abs(value) > 0.6 * scale else ""


def heatmap_table(tokens: Sequence[str], rows: Sequence[Row], labels: Sequence[str]) -> str:
    """The heatmap as one `<table class="heatmap">`, its rows named by `labels`."""
    head = "".join(f"<th>{html.escape(t)}</th>" for t in tokens)
    body = []
    for row, label in zip(rows, labels, strict=True):
        scale = max((abs(c) for c in row.credits), default=0.0)
        cells = "".join(
            f'<td style="background:{_colour(c, scale)}{_ink(c, scale)}" title="{c:+.4f}">'
            f"{c:+.2f}</td>"
            for c in row.credits
        )
        body.append(
            f"<tr><th>{html.escape(label)}</th>{cells}"
            f"<td>{row.rows}</td><td>{1000 * row.seconds:.1f}</td></tr>"
        )
    return (
        f'<table class="heatmap"><tr><th>method</th>{head}<th>RM rows</th><th>ms</th></tr>'
        + "".join(body)
        + "</table>"
    )


def heatmap_html(
    tokens: Sequence[str], score: float, rows: Sequence[Row], labels: Sequence[str]
) -> str:
    """A self-contained HTML page (no scripts, no external assets)."""
    return (
        "<!doctype html><meta charset='utf-8'><title>shapetune explain</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 6px;font-size:12px;"
        "text-align:center;white-space:pre}</style>"
        f"<p>reward-model score R = {score:+.4f}</p>" + heatmap_table(tokens, rows, labels)
    )


def heatmap_png(
    tokens: Sequence[str], score: float, rows: Sequence[Row], labels: Sequence[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([r.credits for r in rows], dtype=float)  # (methods, T)
    scaled = values / np.maximum(np.abs(values).max(axis=1, keepdims=True), 1e-12)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tokens) + 2), 0.5 * len(rows) + 1.5))
    ax.imshow(scaled, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), list(labels))
    for (i, j), v in np.ndenumerate(values):
        ink = "white" if abs(scaled[i, j]) > 0.6 else "black"
        ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7, color=ink)
    ax.set_title(f"credit per token (rows scaled to max |credit|); R = {score:+.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
