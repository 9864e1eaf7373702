"""Test and benchmark helpers: real servers on localhost (app, Chroma, PostgreSQL, Redis); a small corpus."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self

import httpx
import uvicorn
from pydantic import SecretStr

from ivig_qa.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


# Two of the bundled documents: a corpus small enough to build an index in a test.
SMALL_DOCS = ("ivig-chronic-pain-review", "ivig-infantile-spasms")


def small_corpus(corpus_dir: Path, dst: Path) -> Path:
    """Copy ``SMALL_DOCS`` and ``sources.toml`` from ``corpus_dir`` into a new folder ``dst``."""
    dst.mkdir(parents=True)
    for doc_id in SMALL_DOCS:
        shutil.copy(corpus_dir / f"{doc_id}.txt", dst)
    shutil.copy(corpus_dir / "sources.toml", dst)
    return dst


def kill_index_build_at(settings: Settings, progress: str, *args: str) -> str:
    """Run ``ivig-qa --verbose index *args`` and SIGKILL it when a stderr line matches ``progress``
    (e.g. ``embedded 1/\\d+ chunks``); its stderr. Fails when it finished or died otherwise."""
    proc = subprocess.Popen(
        [script_path("ivig-qa"), "--verbose", "index", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=quiet_env(**settings_env(settings)),
    )
    lines: list[str] = []
    killed = threading.Event()

    def watch() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if re.search(progress, line):
                os.kill(proc.pid, signal.SIGKILL)
                killed.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert killed.wait(timeout=240), "".join(lines[-20:])
    finally:
        if proc.poll() is None and not killed.is_set():
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-20:])
    return "".join(lines)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``check`` until it is true; fail early when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not up after {timeout:.0f} s")
        time.sleep(0.1)


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def quiet_env(**overrides: str) -> dict[str, str]:
    """The environment for child processes: offline, no telemetry, and exactly the given settings.

    Inherited ``IVIG_QA_*`` variables are dropped so a child gets only what the caller chose.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_QA_")}
    env.update(HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", GRADIO_ANALYTICS_ENABLED="False")
    env.update(overrides)
    return env


def script_path(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


class _ServerProcess:
    """A server child process on a loopback port; ``with`` starts it and stops it."""

    port: int
    log_file: Path
    proc: subprocess.Popen | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _launch(self, cmd: list[str], env: dict[str, str], health: str, timeout: float, what: str) -> None:
        """Start ``cmd``, output appended to the log file; return once ``health`` (a path) answers."""
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: answers(f"{self.url}{health}"), timeout, what, self.proc)

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class ChromaServer(_ServerProcess):
    """A ``chroma run`` server on a loopback port, persisting to ``path``; restartable.

    ``stop()`` kills it (SIGKILL: a crash, not a clean shutdown), ``pause()`` freezes it
    (SIGSTOP: a hung server that accepts connections but never answers), ``start()``
    brings it back on the same port and path.
    """

    def __init__(self, path: Path, port: int | None = None, log_file: Path | None = None) -> None:
        self.path = Path(path)
        self.port = port or free_port()
        self.log_file = log_file or self.path.with_name(f"{self.path.name}-chroma.log")
        self.proc = None

    def start(self, timeout: float = 60.0) -> Self:
        cmd = [script_path("chroma"), "run", "--path", str(self.path)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self._launch(cmd, quiet_env(), "/api/v2/heartbeat", timeout, "chroma server")
        return self

    def pause(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


class AppServer(_ServerProcess):
    """An ``ivig-qa serve`` process on a free loopback port, configured through environment settings."""

    def __init__(self, settings_env: dict[str, str], log_file: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = quiet_env(
            **{**settings_env, "IVIG_QA_SERVER__HOST": "127.0.0.1", "IVIG_QA_SERVER__PORT": str(self.port)}
        )
        self.log_file = log_file
        self.proc = None
        self.ready_s = math.nan

    def start(self, timeout: float = 180.0) -> Self:
        started = time.perf_counter()
        self._launch([script_path("ivig-qa"), "serve"], self.env, "/api/health", timeout, "ivig-qa serve")
        self.ready_s = time.perf_counter() - started
        return self

    def memory_mb(self) -> tuple[float, float]:
        """(peak RSS, current RSS) of the server process in MB, from /proc."""
        if self.proc is None:
            return math.nan, math.nan
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MB (10^6 bytes); NaN where /proc is not available."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan, math.nan
    kb = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M)}
    return kb.get("VmHWM", 0) * 1024 / 1e6, kb.get("VmRSS", 0) * 1024 / 1e6


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as an ``IVIG_QA_*`` variable, so child processes run exactly these settings.

    ``IVIG_QA_CONFIG`` points at a file that does not exist: nothing else is read.
    """
    env: dict[str, str] = {}
    as_json = settings.model_dump(mode="json")
    for group, fields in settings:
        for name, value in fields:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            else:
                plain = as_json[group][name]
                text = plain if isinstance(plain, str) else json.dumps(plain)
            env[f"IVIG_QA_{group.upper()}__{name.upper()}"] = text
    env["IVIG_QA_CONFIG"] = str(Path(tempfile.gettempdir()) / "ivig-qa-bench-no-config.toml")
    return env


class BackgroundServer:
    """The app under uvicorn in a daemon thread, on a free port (tests, notebooks).

    ``with BackgroundServer(app) as url:`` returns once ``/api/health`` says ready (or,
    with ``wait_ready=False``, as soon as the port accepts connections) and stops on exit.
    Pass ``port`` to come back on the port of a server stopped before (a restart).
    """

    def __init__(
        self, app: FastAPI, settings: Settings | None = None, *, wait_ready: bool = True, port: int = 0
    ) -> None:
        from ivig_qa.web.app import uvicorn_config  # here: the web stack loads only when a server starts

        config = uvicorn_config(app, settings or Settings(), host="127.0.0.1", port=port)
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


# --- PostgreSQL and Redis from Debian's packages (the scale-out tests) ------------------------------
def postgres_bin() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``: the newest /usr/lib/postgresql/*/bin, else PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def postgres_missing() -> str | None:
    """Why the tests cannot start PostgreSQL here (None when they can)."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (initdb/pg_ctl; `apt-get install postgresql`, run by `make test`)"
    if os.geteuid() == 0 and not _user_exists("postgres"):
        return "running as root without a 'postgres' user to run initdb as"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser to start PostgreSQL as 'postgres'"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb`` in a temp folder) on a free loopback port.

    Trust authentication on 127.0.0.1 only, no other listener. ``stop()`` is a fast shutdown
    (clients disconnected, like a database restart), ``start()`` brings it back on the same
    port and data. As root it runs as the ``postgres`` user (initdb refuses root).
    """

    def __init__(self, port: int | None = None) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError(postgres_missing() or "PostgreSQL is not installed")
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ivig-qa-pg-"))  # outside pytest's 0700 root-only tmp
        self.data = self.root / "data"
        self.log_file = self.root / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._pg(
            ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        )

    def _pg(self, cmd: list[str]) -> None:
        assert self.bin is not None
        full = [str(self.bin / cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            full = ["runuser", "-u", "postgres", "--", *full]
        subprocess.run(full, check=True, capture_output=True, cwd=self.root, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> Self:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg(["pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", options, "-w", "start"])
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def create_database(self, name: str) -> str:
        """A new database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def redis_missing() -> str | None:
    """Why the tests cannot start Redis here (None when they can)."""
    if shutil.which("redis-server") is None:
        return "Redis is not installed (redis-server; `apt-get install redis-server`, run by `make test`)"
    return None


class RedisServer:
    """A ``redis-server`` on a free loopback port, nothing saved to disk; restartable on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ivig-qa-redis-"))
        self.log_file = self.root / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> Self:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.root), "--protected-mode", "yes"]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, timeout, "redis-server", self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
