"""`shapetune submit` and the `--url` forms of `status`, `resume` and `cancel`: the same
commands against a running `shapetune serve`, over its REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from service.cli_common import OwnerOption, TokenOption, console, default_owner, fail
from service.cli_study import _num, _weights
from service.redaction import safe_url


def submit(
    spec_file: Annotated[Path, typer.Argument(help="Study spec, YAML or JSON.")],
    url: Annotated[str, typer.Option("--url", help="The service, e.g. http://127.0.0.1:8000.")],
    token: TokenOption = None,
    owner: OwnerOption = None,
) -> None:
    """Queue a study on a running service; its coordinator runs it."""
    import yaml

    from service.remote import RemoteError, ServiceClient

    try:
        data = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise fail(f"cannot read the spec {str(spec_file)!r}: {e.strerror}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise fail(f"{spec_file}: not valid YAML/JSON: {e}") from e
    # The service validates: it names every problem, and checks what a local run cannot
    # (its allowed folders and limits).
    try:
        with ServiceClient(url, token) as client:
            study = client.submit(data, owner or default_owner())
    except RemoteError as e:
        raise fail(str(e)) from e
    console.print(
        f"study [bold]{study['name']}[/bold] {study['status']} at {safe_url(url)}: "
        f"`shapetune status {study['name']} --url {safe_url(url)}` follows it"
    )


def status(url: str, token: str | None, name: str | None, as_json: bool) -> None:
    from service.remote import RemoteError, ServiceClient

    try:
        with ServiceClient(url, token) as client:
            if name:
                study = client.study(name)
                trials = list(client.trials(name))
            else:
                rows = list(client.studies())
    except RemoteError as e:
        raise fail(str(e)) from e
    if name and as_json:
        typer.echo(json.dumps({**study, "trials": trials}, indent=2))
    elif name:
        _print_study(study, trials)
    elif as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"studies at {safe_url(url)}")
        for column in ("name", "status", "trials", "owner", "message"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r["name"], r["status"], f"{r['done']}/{r['budget']}", r["owner"], r["message"]
            )
        console.print(table)


def _print_study(study: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    best = study["best"]["trial"] if study["best"] else None
    table = Table(
        title=f"{study['name']}: {study['status']}, {study['done']}/{study['budget']} trials"
    )
    for column in ("trial", "arm", "weights", "objective", "± s.e.", "state"):
        table.add_column(column, justify="right" if column in ("objective", "± s.e.") else "left")
    for t in trials:
        table.add_row(
            str(t["number"]),
            t["label"] or ("best" if t["number"] == best else ""),
            _weights(t["weights"]),
            _num(t["value"]),
            _num(t["stderr"]),
            t["state"] + (f": {t['failed_for']}" if t["failed_for"] else ""),
        )
    console.print(table)
    if study["message"]:
        console.print(study["message"])
    if study["best"]:
        b, s = study["best"], study["sparse"]
        line = f"best: trial {b['trial']} {_weights(b['weights'])} = {_num(b['value'])} ± {_num(b['stderr'])}"
        if s:
            line += f"; pure sparse = {_num(s['value'])} ± {_num(s['stderr'])}"
        console.print(line)
    from service.cli_study import print_reevaluation

    print_reevaluation(study.get("reevaluation"))


def act(url: str, token: str | None, name: str, action: str) -> None:
    """POST resume or cancel, and print the study's status after it."""
    from service.remote import RemoteError, ServiceClient

    try:
        with ServiceClient(url, token) as client:
            now = client.resume(name) if action == "resume" else client.cancel(name)
    except RemoteError as e:
        raise fail(str(e)) from e
    console.print(f"{name}: {now}")
