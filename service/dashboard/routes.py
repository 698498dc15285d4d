"""The dashboard's pages: each route reads one report (`service.tuning.report`), builds its
figures (`figures`) and renders a template. Mounted at `/`, assets under `/static/`.

The app that includes `router` keeps its `Settings` in `app.state.settings`; the pages
read the study database it names.
"""

from __future__ import annotations

import math
from functools import cache
from importlib.resources import files
from typing import Annotated, Any

import plotly
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from service.dashboard import figures
from service.heatmap import sample_table
from service.store.studies import StoreError, StudyNotFound
from service.tuning.report import TrialNotFound, studies_overview, study_detail, trial_report

router = APIRouter(include_in_schema=False)

REFRESH_S = 5
LIVE = ("queued", "running", "cancelling")
"""Statuses whose pages refresh themselves."""
PLOTLY = f"plotly-{plotly.__version__}.min.js"
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", PLOTLY: "text/javascript"}


def _num(value: Any, digits: int = 4, signed: bool = False) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _weights(weights: dict[str, float] | None, digits: int = 2) -> str:
    if not weights:
        return "–"
    shown = [f"{k} {v:.{digits}f}" for k, v in weights.items() if abs(v) >= 0.5 * 10**-digits]
    return ", ".join(shown) or "–"


templates = Jinja2Templates(directory=str(files("service.dashboard") / "templates"))
templates.env.filters["num"] = _num
templates.env.filters["weights"] = _weights


class Where:
    """The study database the app was started with."""

    def __init__(self, request: Request) -> None:
        settings = request.app.state.settings
        self.url: str = settings.storage_url()


WhereDep = Annotated[Where, Depends()]


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/") + "/"
    return templates.TemplateResponse(
        request,
        template,
        {
            "root": root,
            "static": lambda name: f"{root}static/{name}",
            "plotly": PLOTLY,
            **context,
        },
        status_code=status_code,
    )


def _problem(request: Request, e: StoreError) -> HTMLResponse:
    status = 404 if isinstance(e, StudyNotFound | TrialNotFound) else 503
    return _page(request, "error.html", status, code=status, message=str(e))


@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request, where: WhereDep) -> HTMLResponse:
    try:
        rows = studies_overview(where.url)
    except StoreError as e:
        return _problem(request, e)
    for r in rows:
        both = r["best"] is not None and r["sparse"] is not None
        r["gain"] = r["best"] - r["sparse"] if both else None
    live = any(r["status"] in LIVE for r in rows)
    return _page(request, "studies.html", studies=rows, refresh=REFRESH_S if live else 0)


@router.get("/studies/{name}", response_class=HTMLResponse)
def study_page(request: Request, name: str, where: WhereDep) -> HTMLResponse:
    try:
        detail = study_detail(where.url, name)
    except StoreError as e:
        return _problem(request, e)
    best = detail["trials_by_number"].get(detail["best_trial"])
    sparse = detail["sparse"]
    return _page(
        request,
        "study.html",
        s=detail,
        best=best,
        gain=best["value"] - sparse["value"] if best and sparse else None,
        figures=figures.study_figures(detail),
        refresh=REFRESH_S if detail["status"] in LIVE else 0,
    )


@router.get("/studies/{name}/trials/{number}", response_class=HTMLResponse)
def trial_page(request: Request, name: str, number: int, where: WhereDep) -> HTMLResponse:
    try:
        trial = trial_report(where.url, name, number)
    except StoreError as e:
        return _problem(request, e)
    live = trial["status"] in LIVE and trial["state"] in ("RUNNING", "WAITING")
    return _page(
        request,
        "trial.html",
        t=trial,
        heatmaps=[sample_table(sample) for sample in trial["sample_credits"]],
        figures=figures.seed_curves(trial),
        refresh=REFRESH_S if live else 0,
    )


@router.get("/static/{asset}")
def static_asset(asset: str) -> Response:
    if asset not in ASSETS:
        return Response(f"no asset {asset!r}", status_code=404, media_type="text/plain")
    # Versioned or tiny: the browser keeps them for a day, Plotly's 4.6 MB above all.
    return Response(
        _asset(asset),
        media_type=ASSETS[asset],
        headers={"Cache-Control": "public, max-age=86400"},
    )


@cache
def _asset(asset: str) -> bytes:
    if asset == PLOTLY:
        from plotly.offline import get_plotlyjs

        return get_plotlyjs().encode()
    return (files("service.dashboard") / "static" / asset).read_bytes()
