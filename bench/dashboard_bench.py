"""Latency of the REST endpoints and the dashboard pages with many trials in the database.

    .venv/bin/python bench/dashboard_bench.py --out bench/results/dashboard.json
    .venv/bin/python bench/dashboard_bench.py --trials 10000 --studies 99 \
        --out bench/results/dashboard-10k.json

A fresh SQLite study database gets one study of `--trials` completed trials (3 methods and a
KL knob, 2 seeds, 5 evaluations per seed, 3 samples credited token by token, the final
metrics of a real inner run, 4 artifacts) and `--studies` studies of 25, written through Optuna's
storage and the service's tables as a coordinator writes them. The app
(`service.app.create_app`, without a coordinator) is served by uvicorn on loopback; each URL
is asked `--requests` times over one kept-alive connection after 3 warm-up requests (the
first, cold one is reported apart: it reads every trial once). Then headless Chromium
(Debian's, through Playwright) loads each page `--loads` times, timed from navigation to
every Plotly figure drawn (Plotly's bundle from the browser's cache after the first).
Goals: endpoint p99 < 100 ms (the studies list and a study's detail included), page load < 2 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import machine

STUDY = "big"
METHODS = ["sparse", "red", "uniform"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINAL_KEYS = [
    *(f"cost/{k}" for k in ("advantages_seconds", "attribution_seconds", "evaluate_seconds")),
    *(f"cost/{k}" for k in ("logprobs_seconds", "red_seconds", "responses", "rm_forwards")),
    *(f"cost/{k}" for k in ("rm_rows", "rm_rows_per_response", "rm_seconds", "train_seconds")),
    *(f"eval/{k}" for k in ("distinct_1", "distinct_2", "kl", "length", "rm_mean", "rm_std")),
    *(f"losses/{k}" for k in ("explained_variance", "grad_norm", "policy", "value")),
    *(f"objective/{k}" for k in ("entropy", "eval_rm_auc", "kl", "rlhf_reward", "scores")),
    *(f"policy/{k}" for k in ("approxkl", "clipfrac", "entropy", "eos_fraction", "ratio")),
    "shaping/last_token_share",
    "shaping/offset_mean",
]
"""What a real inner run keeps in a trial's `final` attribute (synthetic task)."""


def fill(url: str, name: str, trials: int, seed: int = 0) -> None:
    """A completed study of `trials` trials, written as the coordinator writes one."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from service.store import studies as store
    from service.store.artifacts import record_artifacts
    from service.tuning.optuna_storage import open_storage
    from service.tuning.search.space import control_arms, weights_from_params
    from service.tuning.spec.model import parse_spec

    rng = random.Random(seed)
    spec = parse_spec(
        {
            "name": name,
            "task": {"name": "synthetic"},
            "methods": METHODS,
            "knobs": {"kl_coef": {"low": 0.001, "high": 0.2, "log": True}},
            "inner": {"steps": 8, "eval_interval": 2},
            "seeds": 2,
            "budget": trials,
            "sampler": "gp",
            "executor": "inline",
        }
    )
    store.create_study(url, name, spec.model_dump(mode="json"))
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    study.set_user_attr("spec", spec.model_dump(mode="json"))
    study.set_user_attr("sampler", {"name": "gp", "seed": 0, "startup_trials": 8})
    distributions = {
        "u0": FloatDistribution(0, 1),
        "u1": FloatDistribution(0, 1),
        "kl_coef": FloatDistribution(0.001, 0.2, log=True),
    }
    arms = control_arms(spec)
    for i in range(trials):
        if i < len(arms):
            label, params = arms[i]
        else:
            label = ""
            params = {"u0": rng.random(), "u1": rng.random()}
            params["kl_coef"] = math.exp(rng.uniform(math.log(0.001), math.log(0.2)))
        weights = weights_from_params(METHODS, params)
        samples = [" ".join(f"w{rng.randrange(32)}" for _ in range(12)) for _ in range(3)]
        level = 0.3 + 0.4 * weights["red"] + 0.1 * weights["uniform"] - 0.5 * params["kl_coef"]
        curves = [
            {
                str(step): {
                    "eval/rm_mean": level * k / 4 + rng.gauss(0, 0.05),
                    "eval/gold_mean": 0.1 * k + rng.gauss(0, 0.05),
                    "eval/kl": 0.01 * k * rng.random(),
                    "eval/repeated_token_fraction": 0.05 + 0.01 * rng.random(),
                    "cost/train_seconds": 0.2 * k,
                }
                for k, step in enumerate(range(0, 10, 2))
            }
            for _ in range(2)
        ]
        values = [statistics.fmean(p["eval/rm_mean"] for p in c.values()) for c in curves]
        attrs = {
            "label": label,
            "weights": weights,
            "knobs": {"kl_coef": params["kl_coef"]},
            "seed_values": values,
            "stderr": statistics.stdev(values) / math.sqrt(2),
            "curves": curves,
            "final": {k: rng.random() for k in FINAL_KEYS},
            "samples": samples,
            "sample_credits": [credited(text, weights, rng) for text in samples],
            "sample_credits_note": "",
        }
        study.add_trial(
            create_trial(
                params=params,
                distributions=distributions,
                value=statistics.fmean(values),
                user_attrs=attrs,
            )
        )
        for seed in range(2):
            files = [
                {
                    "kind": "checkpoint",
                    "path": f"/runs/{name}/{i}/seed{seed}/checkpoint.pt",
                    "bytes": 2_500_000,
                },
                {
                    "kind": "result",
                    "path": f"/runs/{name}/{i}/seed{seed}/result.json",
                    "bytes": 9_000,
                },
            ]
            record_artifacts(url, name, i, seed, "worker-1", files)
    store.set_status(url, name, "completed", "")


def credited(text: str, weights: dict[str, float], rng: random.Random) -> dict[str, Any]:
    """A sample as `service.tuning.study.credits` records it: every method's credits and the mix."""
    tokens = [f" {w}" for w in text.split()]
    methods = [
        {
            "method": m,
            "weight": weights[m],
            "credits": [rng.gauss(0, 0.1) for _ in tokens],
            "rm_rows": 2,
            "seconds": 0.001,
            "offset": 0.0,
        }
        for m in METHODS
    ]
    shaped = [sum(m["weight"] * m["credits"][t] for m in methods) for t in range(len(tokens))]
    return {
        "prompt": "",
        "response": text,
        "tokens": tokens,
        "score": 0.5,
        "methods": methods,
        "shaped": shaped,
    }


def serve(home: Path, url: str) -> tuple[Any, int]:
    """The service's app on a free loopback port, in a thread."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(home=home, storage=url, coordinator=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    p99 = ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)]
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(ms[-1], 2),
        "n": len(ms),
    }


def time_urls(port: int, paths: dict[str, str], requests: int) -> dict[str, Any]:
    out = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for label, path in paths.items():
        seconds, sizes = [], set()
        for i in range(3 + requests):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
            if i == 0:
                cold = elapsed
            if i >= 3:
                seconds.append(elapsed)
            sizes.add(len(body))
        out[label] = {
            "path": path,
            **percentiles(seconds),
            "first_ms": round(1000 * cold, 1),
            "bytes": max(sizes),
        }
    connection.close()
    return out


def time_pages(
    port: int, pages: dict[str, tuple[str, int]], loads: int, shots: Path | None
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for label, (path, plots) in pages.items():
            seconds = []
            for i in range(1 + loads):
                started = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}{path}", wait_until="load")
                page.wait_for_function(
                    f"document.querySelectorAll('.plotly .main-svg').length >= {plots}"
                )
                elapsed = time.perf_counter() - started
                if i == 0:
                    first = elapsed  # Plotly's bundle not yet cached
                else:
                    seconds.append(elapsed)
            out[label] = {"path": path, **percentiles(seconds), "first_ms": round(1000 * first)}
            if shots is not None:
                page.screenshot(path=str(shots / f"{label}.png"), full_page=False)
        browser.close()
    if errors:
        raise SystemExit(f"the browser reported errors: {errors[:5]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/dashboard.json"))
    parser.add_argument("--requests", type=int, default=200, help="Timed requests per URL.")
    parser.add_argument("--loads", type=int, default=20, help="Timed loads per page.")
    parser.add_argument(
        "--screenshots", type=Path, default=None, help="Save a screenshot of each page here."
    )
    parser.add_argument("--trials", type=int, default=1000, help="Trials of the big study.")
    parser.add_argument("--studies", type=int, default=4, help="Small studies of 25 beside it.")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="Keep the filled database in this folder, and reuse it when it is there "
        "(filling 10,000 trials takes minutes).",
    )
    args = parser.parse_args()
    trials, small = args.trials, args.studies

    with tempfile.TemporaryDirectory() as tmp:
        home = args.keep or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{home / 'studies.db'}"
        filled = home / f"filled-{trials}-{small}"
        reused = filled.exists()
        started = time.perf_counter()
        if not reused:
            for k in range(small):
                fill(url, f"small-{k}", 25, seed=k + 1)
            fill(url, STUDY, trials)
            filled.touch()
        fill_s = time.perf_counter() - started
        print(f"filled {trials} + {small} x 25 trials in {fill_s:.0f} s", file=sys.stderr)

        server, port = serve(home, url)
        trial = f"/studies/{STUDY}/trials/{trials // 2}"
        endpoints = time_urls(
            port,
            {
                "api: list studies": "/api/v1/studies",
                "api: one study": f"/api/v1/studies/{STUDY}",
                "api: trials (first page)": f"/api/v1/studies/{STUDY}/trials",
                "api: trials (last page)": f"/api/v1/studies/{STUDY}/trials?offset={trials - 20}",
                "api: one trial": f"/api/v1{trial}",
                "api: artifacts (a page)": f"/api/v1/studies/{STUDY}/artifacts?offset=2000",
            },
            args.requests,
        )
        pages_http = time_urls(
            port,
            {
                "page: studies": "/",
                "page: study": f"/studies/{STUDY}",
                "page: study, its last trials": f"/studies/{STUDY}?offset={trials - 100}",
                "page: trial": trial,
            },
            args.requests,
        )
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
        browser = time_pages(
            port,
            {"study": (f"/studies/{STUDY}", 5), "trial": (trial, 3)},
            args.loads,
            args.screenshots,
        )
        server.should_exit = True

    result = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "trials": trials,
        "studies": small + 1,
        "fill_seconds": None if reused else round(fill_s, 1),
        "database_reused": reused,
        "http": {**endpoints, **pages_http},
        "chromium_page_load": browser,
        "goals": {"endpoint_p99_ms": 100, "page_load_ms": 2000},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'what':28} {'p50 ms':>8} {'p99 ms':>8} {'first ms':>9}  path")
    for label, r in {**result["http"], **{f"chromium: {k}": v for k, v in browser.items()}}.items():
        print(f"{label:28} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['first_ms']:9.0f}  {r['path']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
