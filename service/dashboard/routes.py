"""The dashboard's pages: each route reads the study's read model (`service.read.model`, the
API's schemas), builds its figures (`figures`) and renders a template. Mounted at `/`,
assets under `/static/`.

The app that includes `router` keeps its `Settings` in `app.state.settings`; the pages
read the study database it names. Where reads need a token, a browser signs in at `/login`
(`service.auth`); the assets hold no data and are open.
"""

from __future__ import annotations

from functools import cache, partial
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import plotly
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service import formatting
from service.api.deps import CredentialsDep, may_read
from service.auth import SESSION_COOKIE, reads_open, session_value, token_role
from service.dashboard import figures
from service.read import model as read
from service.read.model import TrialNotFound
from service.read.schemas import StudyPublic
from service.store.models import LIVE
from service.store.studies import StoreError, StudyNotFound, get_study

router = APIRouter(include_in_schema=False)

REFRESH_S = 5
PAGE_ROWS = 100
"""Trials per page of a study's table (its plots draw its finished trials: `figures.thinned`)."""
PLOTLY = f"plotly-{plotly.__version__}.min.js"
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", PLOTLY: "text/javascript"}


templates = Jinja2Templates(directory=str(files("service.dashboard") / "templates"))
# Numbers and weights read as in the CLI (`service.formatting`); a page marks a missing one "–".
templates.env.filters["num"] = partial(formatting.number, missing="–")
templates.env.filters["weights"] = partial(formatting.weights, sep=" ", missing="–")
templates.env.filters["paired"] = partial(formatting.paired_interval, missing="–")


class Where:
    """The study database the app was started with."""

    def __init__(self, request: Request) -> None:
        settings = request.app.state.settings
        self.url: str = settings.storage_url()


WhereDep = Annotated[Where, Depends()]


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + "/"


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    root = _root(request)
    return templates.TemplateResponse(
        request,
        template,
        {
            "root": root,
            "static": lambda name: f"{root}static/{name}",
            "plotly": PLOTLY,
            "signed_in": SESSION_COOKIE in request.cookies,
            **context,
        },
        status_code=status_code,
    )


def reader(request: Request, credentials: CredentialsDep) -> None:
    """Pages need what API reads need; a browser without it is sent to sign in."""
    if not may_read(request, credentials):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"{_root(request)}login?{urlencode({'next': back})}"
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in", headers={"Location": login})


Reader = [Depends(reader)]


def _problem(request: Request, e: StoreError) -> HTMLResponse:
    status = 404 if isinstance(e, StudyNotFound | TrialNotFound) else 503
    return _page(request, "error.html", status, code=status, message=str(e))


@router.get("/", response_class=HTMLResponse, dependencies=Reader)
def studies_page(request: Request, where: WhereDep) -> HTMLResponse:
    try:
        rows = [s.model_dump() for s in read.studies(where.url).data]
    except StoreError as e:
        return _problem(request, e)
    live = any(r["status"] in LIVE for r in rows)
    return _page(request, "studies.html", studies=rows, refresh=REFRESH_S if live else 0)


@router.get("/studies/{name}", response_class=HTMLResponse, dependencies=Reader)
def study_page(
    request: Request, name: str, where: WhereDep, offset: Annotated[int, Query(ge=0)] = 0
) -> HTMLResponse:
    try:
        study = read.study(where.url, name)
        page = read.trials(where.url, name, offset, PAGE_ROWS)
        plots, plots_note = _figures(where.url, study)
    except StoreError as e:
        return _problem(request, e)
    return _page(
        request,
        "study.html",
        s=study,
        rows=page.data,
        count=page.count,
        offset=offset,
        page_rows=PAGE_ROWS,
        figures=plots,
        plots_note=plots_note,
        refresh=REFRESH_S if study.status in LIVE else 0,
    )


@router.get("/studies/{name}/trials/{number}", response_class=HTMLResponse, dependencies=Reader)
def trial_page(request: Request, name: str, number: int, where: WhereDep) -> HTMLResponse:
    try:
        trial = read.trial(where.url, name, number)
        study = get_study(where.url, name)  # its spec and status only: no whole-study read
    except StoreError as e:
        return _problem(request, e)
    live = study.status in LIVE and trial.state in ("RUNNING", "WAITING")
    return _page(
        request,
        "trial.html",
        t=trial,
        study=name,
        first_seed=study.spec["seed"],
        heatmaps=[figures.sample_heatmap(sample) for sample in trial.sample_credits],
        figures=figures.seed_curves(trial.curves),
        refresh=REFRESH_S if live else 0,
    )


def _study_view(url: str, study: StudyPublic) -> figures.StudyView:
    """A study, all its trials and their curves from the read model, as its plots draw it."""
    return figures.StudyView(
        study=study,
        trials=read.trials(url, study.name).data,
        curves=read.curves(url, study.name).curves,
    )


_drawn: dict[tuple[str, str], tuple[Any, dict[str, figures.Figure], str]] = {}


def _figures(url: str, study: StudyPublic) -> tuple[dict[str, figures.Figure], str]:
    """The study's plots and the note on what they leave out (`figures.thinned`), drawn
    again only when a trial is added or changes state: they show finished trials only, and
    reading a study of 10,000 for them takes a second."""
    stamp = tuple(study.counts.items())
    kept = _drawn.get((url, study.name))
    if kept is None or kept[0] != stamp:
        shown, note = figures.thinned(_study_view(url, study))
        kept = (stamp, figures.study_figures(shown), note)
        _drawn[(url, study.name)] = kept
    return kept[1], kept[2]


MAX_LOGIN_BYTES = 4096


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if reads_open(request.app.state.settings):
        return RedirectResponse(_safe_next(request, next), status.HTTP_303_SEE_OTHER)
    return _page(request, "login.html", next=next, error="")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """The form's token, checked as a bearer token would be; a valid one leaves the session
    cookie and goes back to the page that asked for it."""
    settings = request.app.state.settings
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BYTES:
            return _page(request, "login.html", 413, next="/", error="the form is too large")
    form = parse_qs(body.decode("utf-8", "replace"))
    token, next = form.get("token", [""])[0], form.get("next", ["/"])[0]
    role = token_role(token, settings) if token else None
    if role is None:
        error = "the token is not valid" if token else "give a token"
        return _page(request, "login.html", 401, next=next, error=error)
    signed = settings.token if role == "write" else settings.read_token
    response = RedirectResponse(_safe_next(request, next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(signed),
        httponly=True,  # no script reads it
        samesite="lax",  # sent when a link from elsewhere opens a page (pages only read)
        secure=request.url.scheme == "https",
        path=_root(request),
    )
    return response


@router.get("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(f"{_root(request)}login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path=_root(request))
    return response


def _safe_next(request: Request, next: str) -> str:
    """`next` if it is a path on this site; the studies page otherwise (no open redirect
    to `//elsewhere` or `https://elsewhere`)."""
    if next.startswith("/") and not next.startswith(("//", "/\\")):
        return next
    return _root(request)


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
