"""``python -m serve --artifacts artifacts/VERSION [--host 127.0.0.1 --port 8000] [--workers N]`` (flags or
RETRIEVAL_* env). With N > 1, uvicorn's supervisor runs N processes on one socket; admin operations reach every
one through a journal in a fresh folder (serve/journal.py), removed when the service stops."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import redis
import uvicorn
from pydantic import SecretStr, ValidationError
from pydantic_settings import CliApp
from uvicorn.supervisors import Multiprocess

from index.artifact import ArtifactError, read_manifest
from serve.admission import Admission
from serve.app import create_app, one_thread
from serve.limits import HeaderDeadline, ServeConfig
from serve.settings import Settings


def check(settings: Settings) -> None:
    """Fail fast, in one line, on what would stop the service later."""
    try:
        read_manifest(settings.artifacts)  # a missing or incomplete artifact
    except ArtifactError as e:
        sys.exit(f"error: {e}")
    if settings.redis_url:  # the live store must be there before the service says it is ready
        try:
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5).ping()
        except (redis.RedisError, OSError, ValueError) as e:
            sys.exit(f"error: Redis at {settings.redis_url} is not reachable ({e})")
    elif settings.workers > 1 and settings.events_token:
        sys.exit("error: POST /events with several workers needs RETRIEVAL_REDIS_URL: each process would keep "
                 "its own live histories, and a user's next request may reach another")


def worker_env(settings: Settings, control: Path) -> dict[str, str]:
    """The settings as RETRIEVAL_* variables: what each spawned worker reads (serve.app.from_env)."""
    env = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        value = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(value, frozenset):  # pydantic-settings reads a collection from the environment as JSON
            value = json.dumps(sorted(value))
        env[f"RETRIEVAL_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["RETRIEVAL_CONTROL_DIR"] = str(control)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(control / "metrics")  # read by prometheus-client at import
    return env


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = CliApp.run(Settings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        sys.exit(f"error: {e}")
    check(settings)
    one_thread()
    admission = Admission(settings.connection_rate, settings.connection_burst, settings.connection_max_wait_s,
                          settings.unlimited_addresses)
    options = dict(host=settings.host, port=settings.port, loop="uvloop", http=HeaderDeadline, admission=admission,
                   header_timeout_s=settings.header_timeout_s, timeout_keep_alive=settings.keep_alive_s,
                   limit_concurrency=settings.max_connections, log_level=settings.log_level, access_log=False)
    if settings.workers == 1:
        server = uvicorn.Server(ServeConfig(create_app(settings), **options))
        server.run()
        if not server.started:
            sys.exit(3)  # uvicorn's start-up failure code
        return
    control = Path(tempfile.mkdtemp(prefix="retrieval-serve-"))
    (control / "metrics").mkdir()
    os.environ.update(worker_env(settings, control))  # the spawned workers inherit them
    config = ServeConfig("serve.app:from_env", factory=True, workers=settings.workers, **options)
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(control, ignore_errors=True)


if __name__ == "__main__":
    main()
