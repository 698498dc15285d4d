"""Plotly figures of a study and of a trial, as plain dicts ({"data": [...], "layout": {...}})
that the pages hand to `Plotly.newPlot`. Built from the read model (`service.read.model`).

No plotly Python objects: building and validating 1,000-trial figures through them costs
more than the page budget, and the browser needs nothing but the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from service import formatting
from service.formatting import significant
from service.heatmap import SHAPED, Recorded, heatmap_table
from service.read.model import downsample
from service.read.schemas import SampleCredits, StudyPublic, TrialSummary
from service.tuning.contracts import CONTROL_SPARSE

Figure = dict[str, Any]

BEST = "#e8590c"
SPARSE = "#1c7ed6"
OTHERS = "rgba(110,110,110,0.35)"
VIRIDIS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
"""Plotly's Viridis in 10 steps: the colours of the parallel-coordinate bins."""
MAX_PLOTTED = 1_000
"""Completed trials a study's plots draw at most: a browser takes seconds over 10,000 (see
`thinned`)."""
CURVE_POINTS = 20_000
"""Points of the grey learning curves in all: each trial gets its share (10 at least)."""
SEEDS = ("#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599")

CURVE_PANELS = (
    ("eval/rm_mean", "held-out RM reward"),
    ("eval/gold_mean", "gold judge"),
    ("eval/kl", "KL to the reference (nats / response)"),
)


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        # Plotly's toolbar sits in the top right corner, over a long title: upright at the
        # right edge it covers neither the title nor the plot.
        "modebar": {"orientation": "v"},
        # The legend goes under the plot, left: at the top right the toolbar covered it.
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.22, "yanchor": "top"},
        "margin": {"l": 60, "r": 40, "t": 40, "b": 80},
        "height": 360,
        "hovermode": "closest",
        **extra,
    }


@dataclass(frozen=True)
class StudyView:
    """What a study's plots draw, as the read model gives it: the study, its trials' rows
    and their learning curves (step, held-out RM reward), by trial number."""

    study: StudyPublic
    trials: list[TrialSummary]
    curves: dict[int, list[tuple[int, float | None]]]

    @property
    def best(self) -> int | None:
        return self.study.best.trial if self.study.best else None

    @property
    def sparse(self) -> int | None:
        return self.study.sparse.trial if self.study.sparse else None


def _complete(view: StudyView) -> list[TrialSummary]:
    """The study's own completed trials (warm-start copies were measured by another)."""
    return [t for t in view.trials if t.state == "COMPLETE" and not t.warm_start]


def _value(t: TrialSummary) -> float:
    """A completed trial's objective (Optuna keeps one for every completed trial)."""
    return math.nan if t.value is None else t.value


def _weights(t: TrialSummary) -> dict[str, float]:
    return t.weights or {}


def _weights_text(weights: dict[str, float] | None) -> str:
    """A trial's weights in its hover text (nothing for a trial without weights)."""
    return formatting.weights(weights, sep=" ", missing="")


def comparison(view: StudyView) -> Figure | None:
    """The incumbent against the control arms: objective ± s.e. (mean over seeds)."""
    arms = [t for t in _complete(view) if t.label]
    best = next((t for t in _complete(view) if t.number == view.best), None)
    bars = [*arms, *([best] if best is not None and best not in arms else [])]
    if not bars:
        return None
    colours = [
        BEST if t is best else SPARSE if t.label == CONTROL_SPARSE else "#adb5bd" for t in bars
    ]
    names = [
        f"{t.label or 'best'} (#{t.number})" + (" ★" if t is best and t.label else "") for t in bars
    ]
    trace = {
        "type": "bar",
        "x": names,
        "y": [significant(t.value) for t in bars],
        "error_y": {"type": "data", "array": [significant(t.stderr) or 0.0 for t in bars]},
        "marker": {"color": colours},
        # Weights in the hover only: as bar text Plotly prints them sideways in the bar.
        "hovertext": [_weights_text(t.weights) for t in bars],
        "hovertemplate": "%{x}<br>%{y:.4f}<br>%{hovertext}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            "best shape vs control arms (objective ± s.e.)", yaxis={"zeroline": True}
        ),
    }


def history(view: StudyView) -> Figure | None:
    """Objective of each completed trial and the best so far."""
    done = _complete(view)
    if not done:
        return None
    pick = min if view.study.direction == "minimize" else max
    best_so_far: list[float] = []
    for t in done:
        best_so_far.append(_value(t) if not best_so_far else pick(best_so_far[-1], _value(t)))
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "trial",
                "x": [t.number for t in done],
                "y": [significant(t.value) for t in done],
                "error_y": {
                    "type": "data",
                    "array": [significant(t.stderr) or 0.0 for t in done],
                },
                "text": [t.label or _weights_text(t.weights) for t in done],
                "hovertemplate": "#%{x}: %{y:.4f}<br>%{text}<extra></extra>",
                "marker": {"size": 6, "color": SPARSE, "opacity": 0.7},
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "best so far",
                "x": [t.number for t in done],
                "y": [significant(v) for v in best_so_far],
                "line": {"shape": "hv", "color": BEST, "width": 2},
            },
        ],
        "layout": _layout(
            "optimisation history",
            xaxis={"title": {"text": "trial"}},
            yaxis={"title": {"text": "objective"}},
        ),
    }


def weights(view: StudyView) -> Figure | None:
    """The weights explored: a ternary plot for 3 methods, parallel coordinates otherwise
    (each coloured by objective)."""
    methods: list[str] = view.study.spec["methods"]
    done = [t for t in _complete(view) if t.weights]
    if len(methods) < 2 or not done:
        return None
    values = [significant(t.value) for t in done]
    if len(methods) != 3:
        axes = [Axis(m, [_weights(t)[m] for t in done], (0.0, 1.0)) for m in methods]
        return parallel("weights explored (simplex)", axes, done, view)
    a, b, c = methods
    trace = {
        "type": "scatterternary",
        "mode": "markers",
        "a": [significant(_weights(t)[a]) for t in done],
        "b": [significant(_weights(t)[b]) for t in done],
        "c": [significant(_weights(t)[c]) for t in done],
        "text": [f"#{t.number}: {significant(t.value)}" for t in done],
        "hovertemplate": f"%{{text}}<br>{a} %{{a:.2f}}, {b} %{{b:.2f}}, {c} %{{c:.2f}}"
        "<extra></extra>",
        "marker": {
            "size": 9,
            "color": values,
            "colorscale": "Viridis",
            "colorbar": {"title": {"text": "objective"}},
            "line": {"width": 0.5},
        },
        "cliponaxis": False,  # the control arms sit on the corners
    }
    axis = {"min": 0, "linewidth": 1, "ticks": "outside"}
    layout = _layout(
        "weights explored (simplex)",
        height=420,
        margin={"l": 60, "r": 20, "t": 80, "b": 50},
        ternary={
            "sum": 1,
            "aaxis": {"title": {"text": a}, **axis},
            "baxis": {"title": {"text": b}, **axis},
            "caxis": {"title": {"text": c}, **axis},
        },
    )
    return {"data": [trace], "layout": layout}


def params(view: StudyView) -> Figure | None:
    """Parallel coordinates of each trial's mixing weights and knobs, coloured by objective
    (the weights, not the sampler's stick-breaking coordinates, which mean nothing to a
    reader)."""
    done = _complete(view)
    spec = view.study.spec
    knobs = spec.get("knobs", {})
    if not done or not knobs:  # weights alone: `weights` draws them already
        return None
    axes = [Axis(m, [_weights(t).get(m) for t in done], (0.0, 1.0)) for m in spec["methods"]]
    axes += [
        Axis(k, [t.knobs.get(k) for t in done], (b["low"], b["high"]), log=bool(b.get("log")))
        for k, b in knobs.items()
    ]
    return parallel("weights and knobs (parallel coordinates)", axes, done, view)


@dataclass(frozen=True)
class Axis:
    label: str
    values: list[float | None]
    bounds: tuple[float, float]
    log: bool = False


def parallel(title: str, axes: list[Axis], done: list[TrialSummary], view: StudyView) -> Figure:
    """Parallel coordinates drawn as SVG lines, one per trial, binned into VIRIDIS colours
    by objective, the best and the sparse arm on top. Plotly's own `parcoords` needs WebGL:
    without a GPU (headless browsers, remote desktops) one costs 1.2-2 s to draw, the whole
    page budget; optuna-dashboard (`shapetune dashboard`) has the interactive one."""
    values = [significant(t.value) for t in done]
    finite = [v for v in values if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    axes = [*axes, Axis("objective", values, (low, high))]
    rows = list(zip(*(_scaled(a) for a in axes), strict=True))  # (trials, axes) in [0, 1]
    D = len(axes)
    bins: list[tuple[list[int | None], list[float | None]]] = [([], []) for _ in VIRIDIS]
    highlight = {view.best: BEST}
    if view.sparse is not None:
        highlight.setdefault(view.sparse, SPARSE)
    for t, v, row in zip(done, values, rows, strict=True):
        if v is None or t.number in highlight:
            continue
        k = min(len(VIRIDIS) - 1, int(len(VIRIDIS) * (v - low) / ((high - low) or 1.0)))
        bins[k][0].extend([*range(D), None])
        bins[k][1].extend([*row, None])
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "x": xs,
            "y": ys,
            "line": {"color": colour, "width": 1},
            "opacity": 0.6,
            "hoverinfo": "skip",
            "showlegend": False,
        }
        for colour, (xs, ys) in zip(VIRIDIS, bins, strict=True)
        if xs
    ]
    for t, row in zip(done, rows, strict=True):
        if t.number in highlight:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": _arm_name(t, view.best),
                    "x": list(range(D)),
                    "y": list(row),
                    "line": {"color": highlight[t.number], "width": 3},
                }
            )
    data.append(_colour_bar(low, high))
    return {"data": data, "layout": _parallel_layout(title, axes)}


def _colour_bar(low: float, high: float) -> dict[str, Any]:
    """A trace of no points whose only use is the colour bar of the objective."""
    return {
        "type": "scatter",
        "mode": "markers",
        "x": [None],
        "y": [None],
        "showlegend": False,
        "hoverinfo": "skip",
        "marker": {
            "color": [low, high],
            "cmin": low,
            "cmax": high,
            "colorscale": "Viridis",
            "showscale": True,
            "colorbar": {"title": {"text": "objective"}, "x": 1.02},
        },
    }


def _parallel_layout(title: str, axes: list[Axis]) -> dict[str, Any]:
    """One vertical axis per parameter, named on top, its bounds written at its ends."""
    D = len(axes)
    ends = [
        {
            "x": i,
            "y": y,
            "text": _tick(v),
            "showarrow": False,
            "yshift": shift,
            "font": {"size": 10},
        }
        for i, a in enumerate(axes)
        for y, v, shift in ((0, a.bounds[0], -10), (1, a.bounds[1], 10))
    ]
    return _layout(
        title,
        height=420,
        xaxis={
            "tickvals": list(range(D)),
            "ticktext": [a.label for a in axes],
            "side": "top",
            "showgrid": True,
            "gridcolor": "#495057",
            "zeroline": False,
            "range": [-0.3, D - 0.7],
        },
        yaxis={"visible": False, "range": [-0.1, 1.1]},
        annotations=ends,
        legend={"orientation": "h", "y": -0.02},
        margin={"l": 30, "r": 30, "t": 70, "b": 30},
    )


def _arm_name(t: TrialSummary, best: int | None) -> str:
    if t.number != best:
        return f"{t.label} (#{t.number})"
    return f"best (#{t.number}{', ' + t.label if t.label else ''})"


def _scaled(axis: Axis) -> list[float | None]:
    """The axis's values mapped to [0, 1] over its bounds (log10 for a log-scale knob)."""
    f = math.log10 if axis.log else float
    low, high = (f(b) for b in axis.bounds)
    span = (high - low) or 1.0
    return [
        None if v is None or (axis.log and v <= 0) else significant((f(v) - low) / span)
        for v in axis.values
    ]


def _tick(v: float) -> str:
    return f"{v:.3g}"


def learning_curves(view: StudyView) -> Figure | None:
    """Held-out RM reward per step, one line per trial (mean over its seeds); every other
    trial shares one grey trace (gaps between trials), so 1,000 lines draw as fast as one."""
    curves = view.curves
    if not curves:
        return None
    best, sparse = view.best, view.sparse
    xs: list[int | None] = []
    ys: list[float | None] = []
    share = max(10, CURVE_POINTS // len(curves))
    for number, points in sorted(curves.items()):
        if number in (best, sparse):
            continue
        kept = downsample(points, share)
        xs += [s for s, _ in kept] + [None]
        ys += [significant(v) for _, v in kept] + [None]
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "other trials",
            "x": xs,
            "y": ys,
            "line": {"color": OTHERS, "width": 1},
            "hoverinfo": "skip",
        }
    ]
    for highlighted, name, colour in ((sparse, CONTROL_SPARSE, SPARSE), (best, "best", BEST)):
        if highlighted is None or highlighted not in curves:
            continue
        label = (
            f"{name} (#{highlighted})"
            if name != "best" or highlighted != sparse
            else "best = sparse"
        )
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": label,
                "x": [s for s, _ in curves[highlighted]],
                "y": [significant(v) for _, v in curves[highlighted]],
                "line": {"color": colour, "width": 3},
            }
        )
    return {
        "data": data,
        "layout": _layout(
            "learning curves (held-out RM reward, mean over seeds)",
            xaxis={"title": {"text": "PPO step"}},
            yaxis={"title": {"text": "held-out RM reward"}},
        ),
    }


def pareto(view: StudyView) -> Figure | None:
    """With a gold objective: every completed trial's objective against its gold score, the
    Pareto front drawn through. A point far right and low is reward hacking: the RM went up
    and the gold judge did not follow."""
    done = [t for t in _complete(view) if t.gold is not None]
    if not done:
        return None
    front = sorted((t for t in done if t.number in view.study.pareto_front), key=_value)
    points = {
        "x": [significant(t.value) for t in done],
        "y": [significant(t.gold) for t in done],
    }
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "trial (hollow: infeasible)",
                **points,
                "text": [f"#{t.number} {t.label or _weights_text(t.weights)}" for t in done],
                "hovertemplate": "%{text}<br>%{x:.4f}, gold %{y:.4f}<extra></extra>",
                "marker": {
                    "size": 7,
                    "color": SPARSE,
                    "symbol": ["circle" if t.feasible else "circle-open" for t in done],
                },
            },
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "Pareto front",
                "x": [significant(t.value) for t in front],
                "y": [significant(t.gold) for t in front],
                "line": {"shape": "hv", "color": BEST, "width": 2},
            },
        ],
        "layout": _layout(
            "Pareto front: objective vs gold judge",
            xaxis={"title": {"text": view.study.spec.get("objective", "auc")}},
            yaxis={"title": {"text": "gold"}},
        ),
    }


def importance(view: StudyView) -> Figure | None:
    """PED-ANOVA importance of each searched parameter, largest on top."""
    if not view.study.importance:
        return None
    ranked = sorted(view.study.importance.items(), key=lambda item: item[1])
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "x": [significant(v) for _, v in ranked],
                "y": [name for name, _ in ranked],
                "marker": {"color": SPARSE},
            }
        ],
        "layout": _layout(
            "parameter importance (PED-ANOVA)",
            xaxis={"title": {"text": "share of importance"}},
            yaxis={"automargin": True},
        ),
    }


def thinned(view: StudyView, limit: int = MAX_PLOTTED) -> tuple[StudyView, str]:
    """`view` with at most about `limit` completed trials to plot, and a note saying which
    (none when all are drawn): the control arms, the best, the Pareto front and every trial
    that improved the best so far (so the history's line is exact), then the best half of
    `limit` by objective, then an even spread of the rest by number."""
    done = _complete(view)
    if len(done) <= limit:
        return view, ""
    sign = -1.0 if view.study.direction == "minimize" else 1.0  # higher is better
    keep = {t.number for t in done if t.label}
    keep |= {n for n in (view.best, *view.study.pareto_front) if n is not None}
    record = -math.inf
    for t in done:
        if sign * _value(t) > record:
            record = sign * _value(t)
            keep.add(t.number)
    ranked = sorted(done, key=lambda t: sign * _value(t), reverse=True)
    keep |= {t.number for t in ranked[: limit // 2]}
    rest = [t.number for t in done if t.number not in keep]
    room = max(0, limit - len(keep))
    keep |= {rest[i * len(rest) // room] for i in range(room)} if room else set()
    shown = replace(
        view,
        trials=[t for t in view.trials if t.number in keep],
        curves={n: c for n, c in view.curves.items() if n in keep},
    )
    note = (
        f"The plots draw {len(keep)} of the {len(done)} completed trials: the control arms, "
        f"the best {limit // 2} and every one that improved the best so far, and an even "
        "spread of the others by trial number."
    )
    return shown, note


def study_figures(view: StudyView) -> dict[str, Figure]:
    """The study page's plots by element id; plots without data are left out."""
    built = {
        "comparison": comparison(view),
        "history": history(view),
        "pareto": pareto(view),
        "importance": importance(view),
        "weights": weights(view),
        "params": params(view),
        "curves": learning_curves(view),
    }
    return {k: v for k, v in built.items() if v is not None}


def seed_curves(curves: list[dict[int, dict[str, float | None]]]) -> dict[str, Figure]:
    """One plot per signal (RM, gold, KL), one line per seed (`curves`: a trial's, step ->
    metrics); signals never recorded are left out (a task without a gold judge has no gold
    curve)."""
    out = {}
    for key, title in CURVE_PANELS:
        data = []
        for k, seed_curve in enumerate(curves):
            points = sorted((step, m[key]) for step, m in seed_curve.items() if key in m)
            if points:
                data.append(
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "name": f"seed {k}",
                        "x": [s for s, _ in points],
                        "y": [significant(v) for _, v in points],
                        "line": {"color": SEEDS[k % len(SEEDS)]},
                    }
                )
        if data:
            out[key.replace("/", "-")] = {
                "data": data,
                "layout": _layout(
                    title, height=300, xaxis={"title": {"text": "PPO step"}}, showlegend=True
                ),
            }
    return out


def sample_heatmap(sample: SampleCredits) -> str:
    """A credited sample as a heatmap table: one row per method of the trial, labelled with
    its weight, then the shaped mix (a credit JSON could not keep, NaN, shows as nan)."""
    used = [m for m in sample.methods if m.weight > 0]
    rows = [Recorded(_floats(m.credits), m.rm_rows, m.seconds) for m in sample.methods]
    rows.append(
        Recorded(_floats(sample.shaped), sum(m.rm_rows for m in used), sum(m.seconds for m in used))
    )
    labels = [f"{m.method} (w {formatting.number(m.weight, 2)})" for m in sample.methods] + [SHAPED]
    return heatmap_table(sample.tokens, rows, labels)


def _floats(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]
