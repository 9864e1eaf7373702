"""Helpers for tests and benchmarks: real servers on localhost."""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import TYPE_CHECKING

import uvicorn

from ivig_qa.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


class BackgroundServer:
    """The app under uvicorn in a daemon thread, on a free port (tests, notebooks).

    ``with BackgroundServer(app) as url:`` returns once ``/api/health`` says ready (or,
    with ``wait_ready=False``, as soon as the port accepts connections) and stops on exit.
    """

    def __init__(self, app: FastAPI, settings: Settings | None = None, *, wait_ready: bool = True) -> None:
        from ivig_qa.web.app import uvicorn_config  # here: the web stack loads only when a server starts

        config = uvicorn_config(app, settings or Settings(), host="127.0.0.1", port=0)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="ivig-qa-server", daemon=True)
        self.wait_ready = wait_ready

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 120.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not (self.server.started and (not self.wait_ready or self._ready())):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start (see the log)")
            time.sleep(0.05)
        return self.url

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
