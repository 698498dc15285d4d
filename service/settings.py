"""Deployment settings, read from the environment (and `.env`) when asked, never at import.

Every variable is `SHAPETUNE_` + the field name in capitals, e.g. `SHAPETUNE_TOKEN`,
`SHAPETUNE_MODEL_ROOTS=/models:/shared/models`, `SHAPETUNE_AUTH_READS=false`.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Roots = Annotated[list[Path], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHAPETUNE_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path("~/.shapetune"), description="Cache of prepared tasks, studies, artifacts."
    )
    storage: str | None = Field(
        None,
        description="SQLAlchemy URL of the study database; default SQLite under the home. "
        "PostgreSQL: postgresql+psycopg://USER@HOST/DB.",
    )

    # `shapetune serve`
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API binds to.")
    token: SecretStr | None = Field(
        None,
        description="Bearer token for every write (and read, see auth_reads). Required "
        "when the API binds to anything but loopback.",
    )
    read_token: SecretStr | None = Field(
        None, description="A second token that may read but not write (dashboards, scripts)."
    )
    auth_reads: bool = Field(
        True, description="Reads need a token too; false opens them to anyone who can connect."
    )
    model_roots: Roots = Field(
        default_factory=list,
        description="Folders (os.pathsep-separated) under which a spec submitted over the API "
        "may name model directories (the hf task's policy and reward_model).",
    )
    prompt_roots: Roots = Field(
        default_factory=list,
        description="Folders under which a spec submitted over the API may name prompt files.",
    )
    coordinator: bool = Field(
        True,
        description="Run the coordinator in `serve`; false for extra API processes in front "
        "of one that runs it.",
    )
    executor: Literal["ray", "inline"] | None = Field(
        None, description="Where the coordinator runs inner runs; default: each spec's own."
    )
    ray_address: str | None = Field(None, description="Join this Ray cluster.")

    # Fault detection: how fast a dead worker or coordinator is noticed. Tests shorten them.
    heartbeat_s: float = Field(10.0, gt=0, description="Inner runs heartbeat this often.")
    grace_s: float = Field(
        60.0, gt=0, description="A trial silent for this long is failed and retried."
    )
    lease_s: float = Field(
        60.0, gt=0, description="A coordinator silent for this long loses its studies."
    )
    poll_s: float = Field(2.0, gt=0, description="The coordinator looks for work this often.")

    # What one study submitted over the API may ask for.
    max_budget: int = Field(500, ge=1, description="Most trials per study.")
    max_seeds: int = Field(8, ge=1, description="Most inner runs per trial.")
    max_inner_steps: int = Field(5000, ge=1, description="Most PPO steps per inner run.")
    max_eval_prompts: int = Field(
        1024, ge=1, description="Most held-out prompts per evaluation (inner run and task)."
    )
    max_train_prompts: int = Field(100_000, ge=1, description="Most training prompts of a task.")
    max_rollout_batch: int = Field(1024, ge=1, description="Most prompts per PPO step.")
    max_response_length: int = Field(512, ge=1, description="Most tokens per response.")
    max_torch_threads: int = Field(64, ge=1, description="Most torch threads per inner run.")
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Largest request body.")

    @field_validator("storage", "token", "read_token", "executor", "ray_address", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        """`SHAPETUNE_TOKEN=` means no token, never the empty token."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("model_roots", "prompt_roots", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):  # like PATH: /models:/shared/models
            return [part for part in v.split(os.pathsep) if part.strip()]
        return v

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    def storage_url(self) -> str:
        from service.store.db import default_url  # sqlalchemy: not on `shapetune --help`'s path

        return self.storage or default_url(self.resolved_home())

    def loopback_only(self) -> bool:
        """True when the API binds to a loopback address only (no token needed then)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost may resolve anywhere
            return False


def get_settings(**overrides: Any) -> Settings:
    """Read the settings now (environment, then `.env`); keywords override both."""
    return Settings(**overrides)
