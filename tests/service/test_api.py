"""The REST API against a real server on loopback, on SQLite and PostgreSQL: auth, refusals
(always JSON, always 4xx), what a remote spec may name, the remote CLI, and a schemathesis
run over the OpenAPI document that must find no 5xx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from optuna.trial import TrialState
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli_app
from service.settings import Settings, get_settings
from service.store.db import get_engine
from service.store.studies import (
    acquire_lease,
    claimable_studies,
    create_study,
    get_study,
    lease_holder,
    set_status,
)

TOKEN, READ_TOKEN = "write-token", "read-token"
TINY_INNER: dict[str, Any] = {
    "steps": 4,
    "eval_interval": 2,
    "eval_prompts": 8,
    "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 1},
}
runner = CliRunner()


NewDatabase = Callable[[], str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def new_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> NewDatabase:
    """Fresh study databases on each backend in turn: one per server, so that one server's
    coordinator never runs what a test queued on another."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path_factory.mktemp('db') / 'studies.db'}"
    new: NewDatabase = request.getfixturevalue("pg_databases")
    return new


@dataclass
class Roots:
    models: Path
    prompts: Path
    outside: Path


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    """Allowed folders with a model and a prompt file, a folder outside them, and symlinks
    from inside to outside (escapes) and from inside to inside (fine)."""
    base = tmp_path_factory.mktemp("roots")
    r = Roots(base / "models", base / "prompts", base / "outside")
    for folder in (r.models / "policy", r.prompts, r.outside / "secret-model"):
        folder.mkdir(parents=True)
    (r.prompts / "prompts.jsonl").write_text('{"prompt": "hello"}\n')
    (r.outside / "secret.jsonl").write_text('{"prompt": "secret"}\n')
    (r.models / "escape").symlink_to(r.outside / "secret-model")
    (r.prompts / "escape.jsonl").symlink_to(r.outside / "secret.jsonl")
    (r.models / "alias").symlink_to(r.models / "policy")
    return r


def server_settings(storage: str, home: Path, **overrides: Any) -> Settings:
    """Settings of a test server: tokens, short fault timings, small limits."""
    fields: dict[str, Any] = {
        "home": home,
        "storage": storage,
        "token": TOKEN,
        "read_token": READ_TOKEN,
        "executor": "inline",
        "heartbeat_s": 1,
        "grace_s": 3,
        "lease_s": 3,
        "poll_s": 0.2,
        "max_budget": 8,
        "max_inner_steps": 50,
        **overrides,
    }
    return get_settings(**fields)


@contextmanager
def running(settings: Settings) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free loopback port; its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


@dataclass
class Api:
    base: str
    roots: Roots
    storage: str

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base + "/api/v1", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def api(
    new_database: NewDatabase, roots: Roots, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """A server with its coordinator, on each backend in turn."""
    settings = server_settings(
        new_database(),
        tmp_path_factory.mktemp("home"),
        model_roots=[roots.models],
        prompt_roots=[roots.prompts],
    )
    with running(settings) as base:
        yield Api(base, roots, settings.storage_url())


@pytest.fixture(scope="module")
def idle_api(new_database: NewDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A server without a coordinator: what is queued stays queued."""
    home = tmp_path_factory.mktemp("idle-home")
    settings = server_settings(new_database(), home, coordinator=False)
    with running(settings) as base:
        yield Api(base, Roots(home, home, home), settings.storage_url())


def spec(**fields: Any) -> dict[str, Any]:
    return {
        "name": f"t-{uuid.uuid4().hex[:12]}",
        "task": {"name": "synthetic"},
        "methods": ["sparse", "uniform"],
        "inner": TINY_INNER,
        "seeds": 1,
        "budget": 3,
        "sampler": "random",
        "executor": "inline",
        **fields,
    }


def wait_for(check: Callable[[], Any], timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# --- auth -----------------------------------------------------------------------------


def test_health_needs_no_token(api: Api) -> None:
    reply = httpx.get(api.base + "/api/v1/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "database": "ok", "coordinator": True}


def test_tokens_guard_reads_and_writes(idle_api: Api) -> None:
    with idle_api.client(None) as anonymous, idle_api.client("wrong") as wrong:
        for client in (anonymous, wrong):
            for reply in (client.get("/studies"), client.post("/studies", json=spec())):
                assert reply.status_code == 401, reply.text
                assert reply.headers["www-authenticate"] == "Bearer"
                assert reply.json()["detail"] in (
                    "a bearer token is required",
                    "the token is not valid",
                )
    with idle_api.client(READ_TOKEN) as reader, idle_api.client(TOKEN) as writer:
        assert reader.get("/studies").status_code == 200
        refused = reader.post("/studies", json=spec())
        assert refused.status_code == 403 and "may read but not write" in refused.json()["detail"]
        name = writer.post("/studies", json=spec()).json()["name"]
        for action in ("cancel", "resume"):
            assert reader.post(f"/studies/{name}/{action}").status_code == 403
        assert reader.get(f"/studies/{name}").json()["status"] == "queued"


def test_reads_open_when_the_operator_says_so(tmp_path: Path) -> None:
    settings = server_settings(
        f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, coordinator=False, auth_reads=False
    )
    with running(settings) as base:
        assert httpx.get(base + "/api/v1/studies").status_code == 200
        assert httpx.post(base + "/api/v1/studies", json=spec()).status_code == 401


def test_serve_refuses_a_public_bind_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHAPETUNE_TOKEN", raising=False)
    result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without a token" in result.output and "SHAPETUNE_TOKEN" in result.output
    monkeypatch.setenv("SHAPETUNE_TOKEN", " ")  # set but blank: still no token
    settings = get_settings(host="0.0.0.0")
    assert settings.token is None and not settings.loopback_only()
    bad = runner.invoke(cli_app, ["serve", "--executor", "gpu"])
    assert bad.exit_code == 2 and "executor: Input should be 'ray' or 'inline'" in bad.output


# --- refusals -------------------------------------------------------------------------


def test_a_bad_spec_names_every_field_and_writes_nothing(idle_api: Api) -> None:
    with idle_api.client() as client:
        before = client.get("/studies").json()["count"]
        bad = spec(name="bad name!", budget=0, methods=["sparse", "nope"], surprise=1)
        reply = client.post("/studies", json=bad)
        assert reply.status_code == 422
        problems = reply.json()["problems"]
        for field in ("name", "budget", "methods", "surprise"):
            assert any(p.startswith(f"{field}:") for p in problems), (field, problems)
        assert all(p in reply.json()["detail"] for p in problems)
        assert client.get("/studies").json()["count"] == before


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (spec(budget=9), ["budget: 9 is over this server's limit of 8", "MAX_BUDGET"]),
        (spec(inner={**TINY_INNER, "steps": 51}), ["inner.steps: 51 is over"]),
        (spec(task={"name": "synthetic", "options": {"train_prompts": 10**9}}), ["train_prompts"]),
        (spec(storage="sqlite:////tmp/elsewhere.db"), ["storage: studies submitted to a server"]),
    ],
)
def test_a_spec_over_the_servers_limits_is_refused(
    idle_api: Api, body: dict[str, Any], names: list[str]
) -> None:
    with idle_api.client() as client:
        reply = client.post("/studies", json=body)
    assert reply.status_code == 422, reply.text
    assert all(n in reply.json()["detail"] for n in names), reply.json()


def test_bad_requests_are_json_4xx(idle_api: Api) -> None:
    with idle_api.client() as client:
        name = client.post("/studies", json=spec()).json()["name"]
        cases: list[tuple[httpx.Response, int, str]] = [
            (client.post("/studies", content=b"{not json"), 422, "not a JSON spec"),
            (client.post("/studies", json=[1, 2]), 422, "a spec is a mapping"),
            (client.post("/studies", content=b'{"budget": NaN}'), 422, "NaN"),
            (client.post("/studies", content=b'{"budget": 1e999}'), 422, "too large"),
            (client.post("/studies", content=b"[" * 5000 + b"]" * 5000), 422, "nested deeper than"),
            (client.post("/studies", content=b" " * 300_000), 413, "SHAPETUNE_MAX_BODY_BYTES"),
            (client.post("/studies", json=spec(name=name)), 409, "exists"),
            (client.get("/studies?limit=0"), 422, "query.limit"),
            (client.get("/studies?limit=101"), 422, "query.limit"),
            (client.get("/studies?offset=-1"), 422, "query.offset"),
            (client.get("/studies?limit=many"), 422, "query.limit"),
            (client.get("/studies?status=sleeping"), 422, "query.status"),
            (client.get("/studies/no-such-study"), 404, "no study named 'no-such-study'"),
            (client.get("/studies/..%2Fetc"), 404, "Not Found"),
            (client.get("/studies/-dash%20space"), 422, "path.name"),
            (client.get("/studies/no-such-study/trials"), 404, "no study named"),
            (client.get(f"/studies/{name}/trials/0"), 404, f"study {name!r} has no trial 0"),
            (client.get(f"/studies/{name}/trials/-1"), 422, "path.number"),
            (client.get(f"/studies/{name}/trials/{2**63}"), 422, "path.number"),
            (client.post("/studies/no-such-study/cancel"), 404, "no study named"),
            (client.get("/nowhere"), 404, "Not Found"),
        ]
        for reply, code, words in cases:
            assert reply.status_code == code, (reply.request.url, reply.text)
            assert words in reply.json()["detail"], (reply.request.url, reply.json())


def hf_spec(policy: str, prompts: str) -> dict[str, Any]:
    options = {"policy": policy, "reward_model": policy, "prompts": prompts}
    return spec(task={"name": "hf", "options": options}, methods=["sparse"], budget=1)


def test_model_and_prompt_paths_stay_under_the_allowed_roots(api: Api) -> None:
    r = api.roots
    good_model, good_prompts = str(r.models / "policy"), str(r.prompts / "prompts.jsonl")
    refused = {
        "policy": [
            (str(r.outside / "secret-model"), "outside the folders"),
            (f"{r.models}/../outside/secret-model", "climbs out with '..'"),
            (str(r.models / "escape"), "outside the folders"),  # a symlink out
            ("models/policy", "is relative"),
            ("/etc", "outside the folders"),
        ],
        "prompts": [
            (str(r.prompts / "escape.jsonl"), "outside the folders"),
            ("/etc/passwd", "outside the folders"),
            (str(r.prompts / "missing.jsonl"), "is not a file"),
        ],
    }
    with api.client() as client:
        for option, cases in refused.items():
            for path, reason in cases:
                body = hf_spec(path if option == "policy" else good_model, good_prompts)
                if option == "prompts":
                    body = hf_spec(good_model, path)
                reply = client.post("/studies", json=body)
                assert reply.status_code == 422, (path, reply.text)
                problem = next(p for p in reply.json()["problems"] if option in p)
                assert reason in problem and str(r.outside) not in problem.replace(path, "")
        # A symlink that stays inside passes the roots and is resolved; the folder it names
        # holds no model, which admission then says (nothing is queued to fail later).
        reply = client.post("/studies", json=hf_spec(str(r.models / "alias"), good_prompts))
        assert reply.status_code == 422, reply.text
        (problem,) = reply.json()["problems"]
        assert f"{(r.models / 'policy').resolve()}' has no config.json" in problem


def _terminal(client: httpx.Client, name: str) -> dict[str, Any] | None:
    study: dict[str, Any] = client.get(f"/studies/{name}").json()
    return study if study["status"] in ("completed", "failed", "cancelled") else None


# --- studies over the API and the remote CLI ------------------------------------------


def test_paging_and_filtering(idle_api: Api) -> None:
    with idle_api.client() as client:
        names = [
            client.post("/studies", json=spec(), headers={"Shapetune-Owner": owner}).json()["name"]
            for owner in ("ann@lab", "bob@lab", "ann@lab")
        ]
        client.post(f"/studies/{names[0]}/cancel")
        page = client.get("/studies", params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["count"] >= 3
        newest = [s["name"] for s in page["data"]]
        assert newest == names[::-1][:2]  # newest first
        rest = client.get("/studies", params={"offset": 2, "limit": 100}).json()
        assert len(rest["data"]) == page["count"] - 2
        cancelled = client.get("/studies", params={"status": "cancelled"}).json()
        assert names[0] in [s["name"] for s in cancelled["data"]]
        assert all(s["status"] == "cancelled" for s in cancelled["data"])
        anns = client.get("/studies", params={"owner": "ann@lab", "limit": 100}).json()
        assert {s["name"] for s in anns["data"]} == {names[0], names[2]}
        assert all(s["owner"] == "ann@lab" for s in anns["data"])
        assert client.get(f"/studies/{names[1]}").json()["owner"] == "bob@lab"
        bad = client.post("/studies", json=spec(), headers={"Shapetune-Owner": "eve; rm -rf"})
        assert bad.status_code == 422 and "Shapetune-Owner" in bad.json()["detail"]


def test_cancel_and_resume(idle_api: Api) -> None:
    with idle_api.client() as client:
        name = client.post("/studies", json=spec()).json()["name"]
        assert client.post(f"/studies/{name}/resume").json()["status"] == "queued"
        assert client.post(f"/studies/{name}/cancel").json() == {
            "name": name,
            "status": "cancelled",
        }
        assert client.post(f"/studies/{name}/resume").json()["status"] == "queued"
        study = client.get(f"/studies/{name}").json()
        assert study["status"] == "queued" and study["message"] == "resume requested"


def test_submit_and_watch_through_the_cli(api: Api, tmp_path: Path) -> None:
    body = spec()
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(json.dumps(body))  # JSON is YAML
    remote = ["--url", api.base, "--token", TOKEN]
    submitted = runner.invoke(cli_app, ["submit", str(spec_file), *remote, "--owner", "cli@lab"])
    assert submitted.exit_code == 0, submitted.output
    assert f"study {body['name']} queued" in submitted.output.replace("\n", " ")

    def finished() -> dict[str, Any] | None:
        shown = runner.invoke(cli_app, ["status", body["name"], "--json", *remote])
        assert shown.exit_code == 0, shown.output
        study: dict[str, Any] = json.loads(shown.output)
        return study if study["status"] in ("completed", "failed") else None

    study = wait_for(finished)
    assert study["status"] == "completed", study["message"]
    assert study["done"] == body["budget"]
    assert [t["state"] for t in study["trials"]].count("COMPLETE") == body["budget"]
    labels = {arm["label"] for arm in study["control_arms"]}
    assert labels == {"pure sparse", "pure uniform"}
    assert study["sparse"]["label"] == "pure sparse"
    assert study["best"]["value"] >= study["sparse"]["value"]
    assert set(study["best"]["weights"]) == {"sparse", "uniform"}

    # One read model: the study's table is the same read from the store and from the API.
    local = ["--storage", api.storage]
    for args in (["status", body["name"]], ["status", body["name"], "--json"]):
        here, there = (runner.invoke(cli_app, [*args, *where]) for where in (local, remote))
        assert here.exit_code == there.exit_code == 0, (here.output, there.output)
        assert here.output == there.output

    with api.client(READ_TOKEN) as reader:
        trial = reader.get(f"/studies/{body['name']}/trials/0").json()
    assert trial["weights"] == {"sparse": 1.0, "uniform": 0.0}
    assert len(trial["seed_values"]) == 1 and trial["seed_values"][0] == trial["value"]
    assert trial["stderr"] is None  # one seed: no standard error (NaN is not JSON)
    assert set(trial["curves"][0]) == {"0", "2", "4"}  # evaluated every 2 of 4 steps
    assert "eval/rm_mean" in trial["curves"][0]["4"]
    assert trial["cost"] and all(k.startswith("cost/") for k in trial["cost"])
    # The worker credited the samples token by token under both methods and the mix.
    assert trial["samples"] and len(trial["sample_credits"]) == len(trial["samples"])
    assert trial["sample_credits_note"] == ""
    for text, sample in zip(trial["samples"], trial["sample_credits"], strict=True):
        assert sample["prompt"] + sample["response"] == text
        sparse, uniform = sample["methods"]
        assert (sparse["method"], sparse["weight"], uniform["weight"]) == ("sparse", 1.0, 0.0)
        T = len(sample["tokens"])
        assert len(sparse["credits"]) == len(uniform["credits"]) == T
        assert sparse["credits"][:-1] == [0.0] * (T - 1)  # the score on the last token
        assert sum(sparse["credits"]) + sparse["offset"] == pytest.approx(sample["score"])
        assert uniform["credits"] == pytest.approx([uniform["credits"][0]] * T)
        assert sample["shaped"] == pytest.approx(sparse["credits"])

    # Each trial's run left its checkpoint and result; the index says where.
    with api.client(READ_TOKEN) as reader:
        everything = reader.get(f"/studies/{body['name']}/artifacts", params={"limit": 100})
        first = reader.get(f"/studies/{body['name']}/artifacts", params={"trial": 0}).json()
        assert reader.get("/studies/nope/artifacts").status_code == 404
    listed = everything.json()
    assert listed["count"] == 2 * body["budget"]  # one seed: a checkpoint and a result each
    assert first["data"] == trial["artifacts"]
    assert [(a["seed_index"], a["kind"]) for a in first["data"]] == [
        (0, "checkpoint"),
        (0, "result"),
    ]
    for a in listed["data"]:
        assert Path(a["path"]).stat().st_size == a["bytes"] > 0
        assert a["host"] == socket.gethostname()

    assert study["owner"] == "cli@lab"
    listed = runner.invoke(cli_app, ["status", *remote])
    assert listed.exit_code == 0 and body["name"] in listed.output and "cli@lab" in listed.output
    table = runner.invoke(cli_app, ["status", body["name"], *remote])
    assert "pure sparse" in table.output and "best: trial" in table.output
    again = runner.invoke(cli_app, ["resume", body["name"], *remote])
    assert again.exit_code == 2 and "409" in again.output and "only an interrupted" in again.output
    stopped = runner.invoke(cli_app, ["cancel", body["name"], *remote])
    assert stopped.exit_code == 0 and f"{body['name']}: completed" in stopped.output
    unauthorised = runner.invoke(cli_app, ["status", "--url", api.base, "--token", "wrong"])
    assert unauthorised.exit_code == 2 and "401" in unauthorised.output


def test_a_stopping_service_puts_its_study_back_in_the_queue(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    settings = server_settings(new_database(), tmp_path)
    body = spec(budget=8)
    with (
        running(settings) as base,
        Api(base, Roots(tmp_path, tmp_path, tmp_path), settings.storage_url()).client() as c,
    ):
        c.post("/studies", json=body)
        wait_for(lambda: c.get(f"/studies/{body['name']}").json()["done"] >= 1)
    left = get_study(settings.storage_url(), body["name"])
    assert (left.status, left.message) == ("queued", "the service stopped; it continues on restart")
    assert lease_holder(settings.storage_url(), body["name"]) is None
    with (
        running(settings) as base,
        Api(base, Roots(tmp_path, tmp_path, tmp_path), settings.storage_url()).client() as c,
    ):
        done = wait_for(lambda: _terminal(c, body["name"]))
        assert done["status"] == "completed" and done["done"] == body["budget"]


def test_the_coordinator_queue(new_database: NewDatabase) -> None:
    """Queued studies first, oldest first; then those whose coordinator died; never one with
    a live coordinator, nor one interrupted on purpose (it waits for a resume)."""
    url = new_database()
    get_engine(url)
    for name, status in [
        ("q1", "queued"),
        ("orphan", "running"),
        ("lapsed", "running"),
        ("live", "running"),
        ("q2", "queued"),
        ("stopped", "interrupted"),
        ("done", "completed"),
    ]:
        create_study(url, name, spec(name=name))
        set_status(url, name, status)
    acquire_lease(url, "lapsed", "dead", ttl_s=-1)
    acquire_lease(url, "live", "alive", ttl_s=60)
    assert claimable_studies(url) == ["q1", "q2", "orphan", "lapsed"]


def test_a_study_cancelled_while_its_coordinator_was_dead_ends_cancelled(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    settings = server_settings(new_database(), tmp_path)
    url, body = settings.storage_url(), spec()
    get_engine(url)
    create_study(url, body["name"], body)
    set_status(url, body["name"], "cancelling")
    acquire_lease(url, body["name"], "dead", ttl_s=-1)
    with running(settings):
        wait_for(lambda: get_study(url, body["name"]).status == "cancelled", timeout_s=30)
    assert lease_holder(url, body["name"]) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shapetune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "shapetune"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@contextmanager
def serve_process(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`shapetune serve` as its own process; killed at the end if still alive."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "shapetune"), "serve", "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # imports of torch and transformers on a busy CPU
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(base + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


@pytest.mark.e2e
def test_a_killed_service_resumes_its_study_on_restart(tmp_path: Path) -> None:
    """kill -9 mid-study, start again: the new coordinator takes the study over once the
    dead one's lease lapses, and it ends with exactly its budget of completed trials."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = {
        **os.environ,
        "SHAPETUNE_TOKEN": TOKEN,
        "SHAPETUNE_HOME": str(tmp_path / "home"),
        "SHAPETUNE_STORAGE": url,
        "SHAPETUNE_EXECUTOR": "inline",
        "SHAPETUNE_HEARTBEAT_S": "1",
        "SHAPETUNE_GRACE_S": "3",
        "SHAPETUNE_LEASE_S": "3",
        "SHAPETUNE_POLL_S": "0.2",
    }
    # Runs of 24 steps (a few seconds each): the kill below lands inside one, not in the
    # instant between one trial's end and the next one's start.
    body = spec(budget=6, inner={**TINY_INNER, "steps": 24, "eval_interval": 8})
    (tmp_path / "study.json").write_text(json.dumps(body))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with serve_process(env, tmp_path / "serve.log") as (first, base):
        submitted = shapetune("submit", str(tmp_path / "study.json"), "--url", base, env=env)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        def mid_trial() -> bool:
            study = httpx.get(f"{base}/api/v1/studies/{body['name']}", headers=headers).json()
            return int(study["done"]) >= 2 and int(study["running"]) == 1

        wait_for(mid_trial, timeout_s=120)
        first.kill()  # SIGKILL: no handler runs, the lease stays until it lapses
        first.wait(30)
    assert get_study(url, body["name"]).status == "running"
    trials = optuna.load_study(study_name=body["name"], storage=url).get_trials()
    in_flight = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert in_flight  # an inline coordinator always has the next trial running
    with serve_process(env, tmp_path / "serve.log") as (_, base):

        def finished() -> dict[str, Any] | None:
            shown = shapetune("status", body["name"], "--url", base, "--json", env=env)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            study: dict[str, Any] = json.loads(shown.stdout)
            return study if study["status"] in ("completed", "failed") else None

        study = wait_for(finished, timeout_s=120)
    states = {t["number"]: t["state"] for t in study["trials"]}
    assert study["status"] == "completed" and study["done"] == body["budget"]
    assert list(states.values()).count("COMPLETE") == body["budget"]
    assert "RUNNING" not in states.values()
    assert all(states[n] == "FAIL" for n in in_flight)  # the killed run, retried elsewhere


# --- fuzzing ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_never_answers_5xx(idle_api: Api, mode: GenerationMode) -> None:
    """Every operation of the OpenAPI document, with data that fits its schema (positive)
    and data that breaks it (negative): no 5xx, and every answer is as documented.

    Driven by hand rather than by schemathesis's pytest plugin, whose lazy fixture
    loading does not work with pytest 9."""
    schema = schemathesis.openapi.from_url(idle_api.base + "/openapi.json")
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tried.append(f"{operation.method.upper()} {operation.path}")
        if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
            continue  # nothing to break: no parameters, no body (the health check)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            case.call_and_validate(
                base_url=idle_api.base,
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[not_a_server_error, response_schema_conformance],
                timeout=30,
            )

        call()
    assert "POST /api/v1/studies" in tried and len(tried) == 10  # every operation, /curves included
