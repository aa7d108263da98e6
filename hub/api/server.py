"""Serving the API with uvicorn on a background thread (the only module importing uvicorn)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from hub.errors import ConfigError

log = logging.getLogger(__name__)


class ApiServer:
    """uvicorn running ``app`` on ``host:port`` in a thread of this process."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        # Bind here, in the caller's thread: a taken port fails start-up loudly, and port 0
        # (tests) gets a real port we can report.
        self._socket = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET,
            socket.SOCK_STREAM,
            # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only then;
            # without it every small response waited ~40 ms for the client's delayed ACK
            socket.IPPROTO_TCP,
        )
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ConfigError(f"API cannot listen on {host}:{port}: {exc}") from exc
        self.port = int(self._socket.getsockname()[1])
        self.host = host
        # a stream left open (a live feed client) must not hold a stop up for long
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="hub-api", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"API did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        log.info("API listening on http://%s:%d/api/v1/docs", self.host, self.port)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish open requests and stop."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()
