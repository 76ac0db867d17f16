"""Service settings: environment (RETRIEVAL_*), then command-line flags (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVAL_", extra="forbid")

    artifacts: Path = Field(description="artifact folder to serve at start-up (written by `python -m index build`)")
    artifacts_root: Path | None = Field(None, description="folder that swaps may load from (default: the parent of --artifacts)")
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    admin_token: SecretStr | None = Field(None, description="bearer token of the admin endpoints; unset = admin disabled")
    default_k: int = Field(100, ge=1, description="k when a request gives none (at most max_k; lowered to it when unset)")
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_user_len: int = Field(256, ge=1, description="longest user id accepted (characters)")
    max_new_items: int = Field(10_000, ge=1, description="most items one add-items request may carry")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="largest request body (bytes); larger: 413, unread")
    body_timeout_s: float = Field(30.0, gt=0, description="time a request body may take to arrive; slower: 408")
    header_timeout_s: float = Field(5.0, gt=0, description="time a client may take to send a request's headers "
                                    "(from connecting, or from its first byte); slower: the connection is closed")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(2048, ge=1, description="open connections and requests in flight before new "
                                 "requests get 503 (uvicorn's limit_concurrency); keep under the open-file limit")
    connection_rate: float = Field(100.0, ge=0, description="new connections a second one client address may "
                                   "open (after connection_burst at once) before the next ones wait unread for "
                                   "their turn; 0 = no limit (serve/admission.py)")
    connection_burst: int = Field(50, ge=1, description="new connections one address may open at once")
    connection_max_wait_s: float = Field(1.0, ge=0, description="a new connection whose turn is further away is "
                                         "refused (429, unread)")
    unlimited_addresses: frozenset[str] = Field(frozenset(), description="client addresses never paced, e.g. a "
                                                "front proxy's (JSON list)")
    events_token: SecretStr | None = Field(None, description="bearer token of POST /events; unset = /events disabled")
    redis_url: str | None = Field(None, description="Redis for the live histories (e.g. redis://127.0.0.1:6379/0): "
                                  "shared by every process, kept across restarts; unset = this process's memory")
    live_max_users: int = Field(100_000, ge=1, description="users whose live history the in-memory store keeps "
                                "(least recently used evicted)")
    live_batch: int = Field(64, ge=1, description="most live users one run of the user tower embeds: requests "
                            "that arrive together are embedded together (serve/batcher.py); 1 = each alone")
    live_wait_s: float = Field(0.002, ge=0, le=1, description="how long a run of the user tower may wait for the "
                               "live requests still reading their user's live events (Redis) when it was asked for "
                               "(serve/batcher.py); 0 = only for requests that reach it within a few rounds of the "
                               "event loop")
    max_request_events: int = Field(200, ge=1, description="most events one POST /candidates may carry")
    max_post_events: int = Field(1000, ge=1, description="most events one POST /events may carry")
    log_level: str = Field("info", description="uvicorn log level")
    workers: int = Field(1, ge=1, le=64, description="service processes sharing the port (uvicorn's supervisor "
                         "restarts one that dies); admin swaps and adds reach every one (serve/journal.py). Each "
                         "holds its own copy of the artifact")
    control_dir: Path | None = Field(None, description="folder the workers share for the admin journal; "
                                     "`--workers N` makes a fresh one (set it only to run workers by hand)")
    sync_timeout_s: float = Field(120.0, gt=0, description="how long an admin request waits for every worker to "
                                  "apply it before answering with how many did")
    journal_poll_s: float = Field(0.1, gt=0, description="how often a worker looks for admin operations that "
                                  "another worker received")
    gc_freeze: bool = Field(True, description="after the artifact loads (and after each swap or add), move every "
                            "object alive then out of the garbage collector's sight (gc.freeze), so that a full "
                            "collection no longer walks the libraries' and the artifact's objects and pauses every "
                            "request in flight")
    gpu: bool = Field(False, description="hold Flat and IVF indexes on the GPU (faiss-gpu and a CUDA device); "
                      "without one the service logs one line and searches on the CPU")

    @model_validator(mode="after")
    def _default_k_within_max_k(self) -> Settings:
        if self.default_k > self.max_k:
            if "default_k" in self.model_fields_set:
                raise ValueError(f"default_k ({self.default_k}) is above max_k ({self.max_k})")
            self.default_k = self.max_k  # only max_k was set: the default follows it down
        return self

    @property
    def root(self) -> Path:
        return (self.artifacts_root or self.artifacts.resolve().parent).resolve()
