"""Service settings: environment (RETRIEVAL_*), then command-line flags (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVAL_", extra="forbid")

    artifacts: Path = Field(description="artifact folder to serve at start-up (written by `python -m index build`)")
    artifacts_root: Path | None = Field(None, description="folder that swaps may load from (default: the parent of --artifacts)")
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    admin_token: SecretStr | None = Field(None, description="bearer token of the admin endpoints; unset = admin disabled")
    default_k: int = Field(100, ge=1, description="k when a request gives none")
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_user_len: int = Field(256, ge=1, description="longest user id accepted (characters)")
    max_new_items: int = Field(10_000, ge=1, description="most items one add-items request may carry")
    log_level: str = Field("info", description="uvicorn log level")

    @property
    def root(self) -> Path:
        return (self.artifacts_root or self.artifacts.resolve().parent).resolve()
