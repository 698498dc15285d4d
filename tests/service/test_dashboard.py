"""The dashboard's pages over a finished synthetic study: through FastAPI's test client, and
in headless Chromium (Debian's `chromium`, driven by Playwright) with screenshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import formatting
from service.dashboard import figures
from service.dashboard.routes import PLOTLY, _study_view, router
from service.executor import InlineExecutor
from service.read import model as read
from service.read.schemas import Arm, TrialSummary
from service.settings import Settings
from service.store import studies as store
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import run_study

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
Serving = Callable[[FastAPI], AbstractContextManager[str]]
SCREENSHOTS = os.environ.get("SHAPETUNE_SCREENSHOTS")
"""Folder for the browser test's screenshots (docs/screenshots to refresh the docs'); a
temporary folder when unset."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    """A completed study of 4 trials x 2 seeds on the synthetic task (its 3 control arms
    and one sampled shape), run inline."""
    home = tmp_path_factory.mktemp("dashboard-home")
    url = f"sqlite:///{home / 'studies.db'}"
    spec = parse_spec(
        {
            "name": "dash-demo",
            "task": {"name": "synthetic"},
            "methods": ["sparse", "red", "uniform"],
            "knobs": {"kl_coef": {"low": 0.01, "high": 0.1}},
            "inner": {
                "steps": 4,
                "eval_interval": 2,
                "eval_prompts": 8,
                "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 1},
            },
            "seeds": 2,
            "budget": 4,
            "sampler": "random",
            "executor": "inline",
        }
    )
    progress = run_study(spec, url, home, InlineExecutor())
    assert progress.done == 4
    return Settings(home=home, storage=url), spec.name


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def client(finished: tuple[Settings, str]) -> TestClient:
    return TestClient(_app(finished[0]))


def _figure_ids(page: str) -> list[str]:
    return re.findall(r'<div class="plot" id="([\w-]+)">', page)


def test_studies_page_lists_status_progress_and_baseline(
    client: TestClient, finished: tuple[Settings, str]
) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert f'href="/studies/{finished[1]}"' in page.text
    assert "completed" in page.text and "4/4" in page.text
    assert 'http-equiv="refresh"' not in page.text  # nothing runs
    url = finished[0].storage_url()
    gain = read.study(url, finished[1]).gain  # the read model's paired gain, not the page's
    assert gain is not None and gain.mean is not None
    assert read.studies(url).data[0].gain == gain and f"{gain.mean:+.4f}" in page.text


def test_study_page_shows_best_vs_sparse_and_every_plot(
    client: TestClient, finished: tuple[Settings, str]
) -> None:
    page = client.get(f"/studies/{finished[1]}")
    assert page.status_code == 200
    text = page.text
    assert "4 / 4" in text and "best shape" in text and "sparse control" in text
    assert "best − sparse" in text
    assert _figure_ids(text) == ["comparison", "history", "weights", "params", "curves"]
    assert '"scatterternary"' in text  # three methods: the simplex as a ternary plot
    assert f'src="/static/{PLOTLY}"' in text and "cdn" not in text.lower()
    assert text.count('href="/studies/dash-demo/trials/') >= 4
    assert 'http-equiv="refresh"' not in text


def test_the_study_plots_read_for_a_user(finished: tuple[Settings, str]) -> None:
    """Weights and knobs on the parallel axes (not the sampler's u0, u1); the weights of a
    bar in its hover, not printed sideways in it; the toolbar off the titles; best - sparse
    with its uncertainty."""
    settings, name = finished
    url = settings.storage_url()
    detail = _study_view(url, read.study(url, name))
    drawn = figures.study_figures(detail)
    assert drawn["params"]["layout"]["xaxis"]["ticktext"] == [
        "sparse",
        "red",
        "uniform",
        "kl_coef",
        "objective",
    ]
    # Without knobs the parallel axes would repeat the weights plot: one picture is shown.
    no_knobs = replace(
        detail, study=detail.study.model_copy(update={"spec": {**detail.study.spec, "knobs": {}}})
    )
    assert figures.params(no_knobs) is None and figures.weights(no_knobs) is not None
    # Legends sit under the plots, where the upright toolbar at the right edge is not.
    assert all(f["layout"]["legend"]["y"] < 0 for f in drawn.values() if "legend" in f["layout"])
    assert drawn["history"]["layout"]["legend"]["xanchor"] == "left"
    bars = drawn["comparison"]["data"][0]
    assert "text" not in bars and len(bars["hovertext"]) == len(bars["x"])
    assert all(f["layout"]["modebar"] == {"orientation": "v"} for f in drawn.values())

    # Every trial's paired difference from sparse; 2 seeds borrow the study's pooled spread.
    rows = {t.number: t for t in read.trials(url, name).data}
    sparse_values = rows[0].seed_values
    for number in (1, 2, 3):
        versus = rows[number].versus_sparse
        assert versus is not None and versus.pooled_dof == 3  # 3 trials x (2 - 1) seeds
        diffs = [a - b for a, b in zip(rows[number].seed_values, sparse_values, strict=True)]
        assert versus.mean == pytest.approx(sum(diffs) / 2) and versus.low is not None
    assert rows[0].versus_sparse is None
    page = TestClient(_app(settings)).get(f"/studies/{name}").text
    assert "minus sparse, paired (95 % CI)" in page and "borrows the spread" in page
    for number in (1, 2, 3):  # the page shows each interval (it once showed "–*" for all)
        assert formatting.paired_interval(rows[number].versus_sparse) + "*" in page

    study = read.study(url, name)
    assert study.best and study.sparse and study.best.trial != study.sparse.trial
    assert study.gain is not None and study.gain.low is not None and study.gain.high is not None
    assert study.gain.low < study.gain.mean < study.gain.high
    page = TestClient(_app(settings)).get(f"/studies/{name}").text
    shown = f"best − sparse = {study.gain.mean:+.4f} ± {study.gain.stderr:.4f}, 95 % CI ["
    assert shown in page


def test_trial_page_shows_seed_curves_values_cost_and_samples(
    client: TestClient, finished: tuple[Settings, str]
) -> None:
    page = client.get(f"/studies/{finished[1]}/trials/0")
    assert page.status_code == 200
    text = page.text
    assert "pure sparse" in text and "complete" in text
    # The synthetic task has no gold judge: RM and KL curves only.
    assert _figure_ids(text) == ["eval-rm_mean", "eval-kl"]
    assert text.count("seed 0") >= 2 and text.count("seed 1") >= 2
    assert 'id="seeds"' in text and 'id="cost"' in text and "cost/rm_rows_per_response" in text
    assert text.count('<table class="heatmap">') == 3  # one per sample, credited by the worker
    assert text.count('response <span class="sample">') == 3
    assert 'id="artifacts"' in text and text.count("checkpoint.pt</code>") == 2  # 2 seeds


def test_unknown_study_or_trial_is_404_with_a_message(
    client: TestClient, finished: tuple[Settings, str]
) -> None:
    for path, message in (
        ("/studies/nope", "no study named &#39;nope&#39;"),
        (f"/studies/{finished[1]}/trials/99", "has no trial 99"),
        ("/static/nope.js", "no asset"),
    ):
        page = client.get(path)
        assert page.status_code == 404, path
        assert message in page.text, path
    assert client.get(f"/studies/{finished[1]}/trials/x").status_code == 422


def test_heatmap_of_the_synthetic_task_has_every_method_and_the_mix(
    client: TestClient, finished: tuple[Settings, str]
) -> None:
    page = client.get(f"/studies/{finished[1]}/trials/3")
    assert page.status_code == 200
    first = page.text.split('<table class="heatmap">')[1].split("</table>")[0]
    rows = re.findall(r"<tr><th>([^<]+)</th>", first)
    assert rows[0] == "method"
    assert [r.split(" (")[0] for r in rows[1:]] == ["sparse", "red", "uniform", "shaped mix"]
    assert page.text.count("reward-model score R") == 3


def test_a_trial_without_credits_says_why(tmp_path: Path) -> None:
    """A trial that ended before its samples were credited (here: added by hand)."""
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec({"name": "uncredited", "methods": ["sparse", "red"], "budget": 1})
    store.create_study(url, spec.name, spec.model_dump(mode="json"))
    study = optuna.create_study(study_name=spec.name, storage=url, direction="maximize")
    note = "the run stopped early: its samples were not credited"
    study.add_trial(
        optuna.trial.create_trial(
            value=0.5,
            user_attrs={
                "weights": {"sparse": 1.0, "red": 0.0},
                "samples": ["It was great"],
                "sample_credits": [],
                "sample_credits_note": note,
            },
        )
    )
    client = TestClient(_app(Settings(home=tmp_path, storage=url)))
    page = client.get("/studies/uncredited/trials/0")
    assert page.status_code == 200
    assert f'<p class="note" id="credits-note">Not credited: {note}</p>' in page.text
    assert '<div class="sample">It was great</div>' in page.text
    assert '<table class="heatmap">' not in page.text


def test_pages_of_a_live_study_refresh(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(
        {"name": "waiting", "task": {"name": "synthetic"}, "methods": ["sparse"], "budget": 2}
    )
    store.create_study(url, spec.name, spec.model_dump(mode="json"))  # queued, no trial yet
    client = TestClient(_app(Settings(home=tmp_path, storage=url)))
    for path in ("/", "/studies/waiting"):
        page = client.get(path)
        assert page.status_code == 200
        assert '<meta http-equiv="refresh" content="5">' in page.text
    assert "No completed trial yet" in client.get("/studies/waiting").text


def test_plotly_is_served_from_the_python_package(client: TestClient) -> None:
    asset = client.get(f"/static/{PLOTLY}")
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith("text/javascript")
    assert len(asset.content) > 1_000_000 and b"plotly" in asset.content[:2000].lower()
    assert "max-age" in asset.headers["cache-control"]


def _guarded(finished: tuple[Settings, str], **tokens: str) -> TestClient:
    """The service's app (API and pages) over the finished study, with these tokens."""
    from service.app import create_app

    settings = finished[0]
    where = {"home": settings.home, "storage": settings.storage, "coordinator": False}
    return TestClient(create_app(Settings(**where, **tokens)), follow_redirects=False)


def test_pages_are_open_when_the_service_has_no_token(finished: tuple[Settings, str]) -> None:
    client = _guarded(finished)
    assert client.get(f"/studies/{finished[1]}").status_code == 200
    login = client.get("/login", params={"next": f"/studies/{finished[1]}"})
    assert login.status_code == 303 and login.headers["location"] == f"/studies/{finished[1]}"


def test_a_browser_signs_in_with_a_token_and_reads_the_pages(
    finished: tuple[Settings, str],
) -> None:
    client = _guarded(finished, token="wr1te", read_token="r3ad")
    study = f"/studies/{finished[1]}"
    asked = client.get(study, params={"tab": "x"})
    assert asked.status_code == 303
    assert asked.headers["location"] == "/login?next=%2Fstudies%2Fdash-demo%3Ftab%3Dx"
    form = client.get(asked.headers["location"])
    assert form.status_code == 200 and 'type="password" name="token"' in form.text
    assert f'name="next" value="{study}?tab=x"' in form.text
    assert client.get("/static/dashboard.css").status_code == 200  # the form's style is open

    wrong = client.post("/login", data={"token": "nope", "next": study})
    assert wrong.status_code == 401 and "the token is not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    assert client.get(study).status_code == 303

    signed = client.post("/login", data={"token": "r3ad", "next": study})
    assert signed.status_code == 303 and signed.headers["location"] == study
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "r3ad" not in cookie
    page = client.get(study)
    assert page.status_code == 200 and "best shape" in page.text and "sign out" in page.text
    assert client.get("/api/v1/studies").status_code == 200  # reads, as the token would
    # The cookie never writes: a page elsewhere cannot make this browser act.
    assert client.post(f"/api/v1/studies/{finished[1]}/cancel").status_code == 401

    out = client.get("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get(study).status_code == 303


def test_the_write_token_signs_in_too_but_the_session_only_reads(
    finished: tuple[Settings, str],
) -> None:
    client = _guarded(finished, token="wr1te")
    signed = client.post("/login", data={"token": "wr1te", "next": "/"})
    assert signed.status_code == 303 and "wr1te" not in signed.headers["set-cookie"]
    assert client.get(f"/studies/{finished[1]}").status_code == 200
    assert client.post(f"/api/v1/studies/{finished[1]}/cancel").status_code == 401
    bearer = {"Authorization": "Bearer wr1te"}
    scripted = _guarded(finished, token="wr1te")  # no cookie: the header alone
    assert scripted.get(f"/studies/{finished[1]}", headers=bearer).status_code == 200


@pytest.mark.parametrize("target", ["//elsewhere.example/x", "https://elsewhere.example", "/\\x"])
def test_sign_in_never_redirects_off_the_site(finished: tuple[Settings, str], target: str) -> None:
    client = _guarded(finished, read_token="r3ad")
    signed = client.post("/login", data={"token": "r3ad", "next": target})
    assert signed.status_code == 303 and signed.headers["location"] == "/"


def test_a_forged_cookie_reads_nothing(finished: tuple[Settings, str]) -> None:
    client = _guarded(finished, read_token="r3ad")
    client.cookies.set("shapetune_session", "0" * 64)
    assert client.get(f"/studies/{finished[1]}").status_code == 303
    assert client.get("/api/v1/studies").status_code == 401


@pytest.fixture(scope="module")
def served(finished: tuple[Settings, str], serving: Serving) -> Iterator[str]:
    with serving(_app(finished[0])) as base:
        yield base


def _browser_or_skip() -> Any:
    """Playwright's sync API with Debian's Chromium; under CI their absence fails the test."""
    problem = ""
    if not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing: apt-get install -y chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is missing: pip install -e '.[dev]'"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test needs Chromium and Playwright under CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


def test_pages_render_in_headless_chromium(
    served: str, finished: tuple[Settings, str], tmp_path: Path
) -> None:
    sync_playwright = _browser_or_skip()
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))

        page.goto(f"{served}/studies/{finished[1]}")
        page.wait_for_function("document.querySelectorAll('.plotly .main-svg').length >= 5")
        assert page.locator(".plot .plotly").count() == 5
        assert page.locator(".ternary").count() == 1
        assert page.locator("#params .scatterlayer .trace").count() >= 2  # SVG lines, no WebGL
        page.screenshot(path=str(shots / "study.png"), full_page=True)

        page.goto(f"{served}/studies/{finished[1]}/trials/3")
        page.wait_for_function("document.querySelectorAll('.plotly .main-svg').length >= 2")
        assert page.locator("table.heatmap").count() == 3
        assert page.locator("table.heatmap").first.locator("tr").count() == 5  # 3 methods, mix
        page.screenshot(path=str(shots / "trial.png"), full_page=True)
        browser.close()
    assert not errors, errors
    for name in ("study.png", "trial.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_browser_signs_in_where_reads_need_a_token(
    finished: tuple[Settings, str], serving: Serving
) -> None:
    from service.app import create_app

    sync_playwright = _browser_or_skip()
    settings = finished[0]
    app = create_app(
        Settings(home=settings.home, storage=settings.storage, coordinator=False, read_token="r3ad")
    )
    with serving(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{base}/studies/{finished[1]}/trials/3")
        assert page.url.startswith(f"{base}/login?next=")
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        assert page.locator("#login-error").inner_text() == "the token is not valid"
        page.fill("input[name=token]", "r3ad")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/studies/{finished[1]}/trials/3")
        assert page.locator("table.heatmap").count() == 3
        page.click("text=sign out")
        page.wait_for_url(f"{base}/login")
        browser.close()


def test_dashboard_command_serves_optuna_dashboard_on_loopback(
    finished: tuple[Settings, str], free_port: Callable[[], int]
) -> None:
    settings, name = finished
    port = free_port()
    shapetune = Path(sys.executable).parent / "shapetune"
    command = [str(shapetune) if shapetune.exists() else shutil.which("shapetune") or "shapetune"]
    process = subprocess.Popen(
        [*command, "dashboard", "--storage", str(settings.storage), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    body = r.read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.2)
        assert name in body
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_study_page_pages_its_trials(
    finished: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, name = finished
    monkeypatch.setattr("service.dashboard.routes.PAGE_ROWS", 3)
    client = TestClient(_app(settings))
    first = client.get(f"/studies/{name}").text
    assert "trials 1–3 of 4" in first and "later ›" in first and "earlier" not in first
    assert f'href="/studies/{name}/trials/2"' in first
    assert f'href="/studies/{name}/trials/3"' not in first.split('id="trials"')[1]
    last = client.get(f"/studies/{name}?offset=3").text
    assert "trials 4–4 of 4" in last and "‹ earlier" in last and "later" not in last
    assert _figure_ids(last) == _figure_ids(first)  # the plots show every trial on each page
    assert client.get(f"/studies/{name}?offset=-1").status_code == 422


def test_a_big_study_plots_its_best_and_an_even_spread(finished: tuple[Settings, str]) -> None:
    """Past MAX_PLOTTED completed trials the plots draw a sample the user can read: the
    control arms, the best, every improvement of the best so far (the history's line stays
    exact) and an even spread of the others."""
    values = [((n * 37) % 101) / 100 + n / 10_000 for n in range(3000)]
    best = max(range(3000), key=values.__getitem__)
    rows = [_row(n, v, "pure sparse" if n == 5 else "") for n, v in enumerate(values)]
    study = read.study(finished[0].storage_url(), finished[1])
    detail = figures.StudyView(
        study=study.model_copy(update={"best": _arm(rows[best]), "pareto_front": []}),
        trials=rows,
        curves={n: [(0, 0.0)] for n in range(3000)},
    )
    shown, note = figures.thinned(detail, limit=200)
    kept = [t.number for t in shown.trials]
    assert 200 <= len(kept) <= 200 + 50 and set(shown.curves) == set(kept)
    assert {5, best} <= set(kept) and f"draw {len(kept)} of the 3000 completed trials" in note
    top = sorted(range(3000), key=values.__getitem__, reverse=True)[:100]
    assert set(top) <= set(kept)
    assert max(kept) > 2900 and min(kept) < 100  # spread over the whole history
    records, running = [], -1.0
    for n, v in enumerate(values):
        if v > running:
            records.append(n)
            running = v
    assert set(records) <= set(kept)
    assert figures.thinned(detail, limit=3000) == (detail, "")


def _row(number: int, value: float, label: str) -> TrialSummary:
    return TrialSummary(
        number=number,
        state="COMPLETE",
        label=label,
        weights={"sparse": 1.0},
        knobs={},
        value=value,
        stderr=None,
        seed_values=[value],
        failed_for="",
        stopped_for="",
        started=None,
        finished=None,
        seconds=None,
    )


def _arm(row: TrialSummary) -> Arm:
    return Arm(trial=row.number, **row.model_dump(include=set(Arm.model_fields)))
