"""Running the application under uvicorn on one host and port until SIGINT or SIGTERM."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from fastapi import FastAPI

from annotate2model.errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090


def _log_config() -> dict[str, Any]:
    """uvicorn's own lines and ours on stderr, one format, no colours."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "annotate2model.serve": {
                "handlers": ["stderr"],
                "level": "INFO",
                "propagate": False,
            },
        },
    }


def run_server(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve `app` until stopped (SIGINT or SIGTERM: requests in flight are finished first)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # httptools' C parser and uvloop (the serve extra) when installed: a fraction of h11's
        # and asyncio's time per request (bench/serve.py); else the pure-Python pair.
        http="httptools" if find_spec("httptools") else "h11",
        loop="uvloop" if find_spec("uvloop") else "asyncio",
        log_config=_log_config(),
        server_header=False,
        timeout_graceful_shutdown=10,
        # One process: the models are loaded once and the batcher sees every request.
        workers=1,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except (OSError, SystemExit):  # uvicorn logs why (the port is taken...) and exits
        if server.started:
            raise
        raise InputError(
            f"the server could not listen on {host}:{port}; the log above says why."
        ) from None
