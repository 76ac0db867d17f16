"""``python -m serve --artifacts artifacts/VERSION [--host 127.0.0.1 --port 8000]`` (flags or RETRIEVAL_* env)."""

from __future__ import annotations

import logging
import sys

import redis
import torch
import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp

from index.artifact import ArtifactError, read_manifest
from serve.app import create_app
from serve.limits import header_deadline_protocol
from serve.settings import Settings


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = CliApp.run(Settings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        sys.exit(f"error: {e}")
    try:
        read_manifest(settings.artifacts)  # fail fast, in one line, on a missing or incomplete artifact
    except ArtifactError as e:
        sys.exit(f"error: {e}")
    if settings.redis_url:  # the live store must be there before the service says it is ready
        try:
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5).ping()
        except (redis.RedisError, OSError, ValueError) as e:
            sys.exit(f"error: Redis at {settings.redis_url} is not reachable ({e})")
    torch.set_num_threads(1)  # the user tower runs on the event loop's thread: one request, one core
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop",
                http=header_deadline_protocol(settings.header_timeout_s), timeout_keep_alive=settings.keep_alive_s,
                limit_concurrency=settings.max_connections, log_level=settings.log_level, access_log=False)


if __name__ == "__main__":
    main()
