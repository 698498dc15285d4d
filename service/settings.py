"""Deployment settings, read from the environment (and `.env`) when asked, never at import."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHAPETUNE_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path("~/.shapetune"), description="Cache of prepared tasks, studies, artifacts."
    )

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()


def get_settings() -> Settings:
    return Settings()
