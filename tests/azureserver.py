"""A real Azure Blob Storage emulator for the tests: Azurite (the npm package, installed by
``make azurite`` into ``.azurite/``) on 127.0.0.1, started once per test session on first
use, blob service only, data in memory, telemetry off.

Like the S3 server (s3server.py): a free port chosen here, ready when the port answers
HTTP, run under the same small watchdog that stops it (SIGTERM, then SIGKILL) when the test
process closes its stdin or dies. Containers are created with one request signed with the
emulator's well-known development key (Shared Key authorization).

If Azurite is missing or cannot start, ``server()`` raises: the Azure tests fail, they
never skip.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import email.utils
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import s3server

# the emulator's published development account (the same in every Azurite installation)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
CONTAINER = "frazil-tests"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
START_TRIES = 3
API_VERSION = "2021-08-06"

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"


@dataclass
class AzuriteServer:
    """One running ``azurite-blob`` under its watchdog (``proc``)."""

    proc: subprocess.Popen[bytes]
    workdir: str
    port: int
    log_path: str
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def config(self) -> dict[str, str]:
        """``azure_storage(config=...)`` for this server."""
        return {"azure_storage_endpoint": self.endpoint, "azure_allow_http": "true"}

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"azurite exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.endpoint + "?comp=list", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # an HTTP answer (403 to an unsigned request) means it is serving
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"azurite did not answer on {self.endpoint} within {timeout:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def create_container(self, name: str) -> None:
        """Create container ``name`` (one Shared Key signed request)."""
        date = email.utils.formatdate(usegmt=True)
        canonical = (
            "PUT\n"
            + "\n" * 11  # verb, then eleven empty standard headers
            + f"x-ms-date:{date}\nx-ms-version:{API_VERSION}\n"
            + f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        )
        key = base64.b64decode(ACCOUNT_KEY)
        signature = base64.b64encode(
            hmac.new(key, canonical.encode(), hashlib.sha256).digest()
        ).decode()
        request = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container",
            method="PUT",
            headers={
                "x-ms-date": date,
                "x-ms-version": API_VERSION,
                "Authorization": f"SharedKey {ACCOUNT}:{signature}",
                "Content-Length": "0",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201, response.status
        except urllib.error.HTTPError as e:
            if e.code != 409:  # 409: it exists already
                raise RuntimeError(f"creating container {name!r}: HTTP {e.code}") from e

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start() -> AzuriteServer:
    """Start ``azurite-blob`` on a free loopback port and create the test container."""
    if not os.access(AZURITE, os.X_OK):
        raise RuntimeError(
            f"Azurite is not installed ({AZURITE.relative_to(ROOT)} is missing): run "
            "`make azurite` (npm install of the pinned version into .azurite/)"
        )
    errors = []
    for _ in range(START_TRIES):
        workdir = tempfile.mkdtemp(prefix="frazil-azurite-")
        (port,) = s3server.free_ports(1)
        args = [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        log_path = os.path.join(workdir, "azurite.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", s3server.WATCHDOG, str(STOP_TIMEOUT), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
                cwd=workdir,
            )
        server = AzuriteServer(proc, workdir, port, log_path)
        try:
            server.wait_ready()
            server.create_container(CONTAINER)
            return server
        except Exception as e:
            errors.append(f"{e}")
            server.stop()
    raise RuntimeError("could not start Azurite for the Azure tests:\n" + "\n---\n".join(errors))


_lock = threading.Lock()
_server: AzuriteServer | None = None
_owner_pid: int | None = None
_refusal: str | None = None


def refuse_to_start(why: str) -> None:
    """Make ``server()`` raise (the fast suite runs without Azurite)."""
    global _refusal
    _refusal = why


def server() -> AzuriteServer:
    """The session's Azurite, started on first use (in this process)."""
    global _server, _owner_pid
    if _refusal is not None:
        raise RuntimeError(_refusal)
    with _lock:
        if _server is None or _owner_pid != os.getpid():
            _server = start()
            _owner_pid = os.getpid()
        return _server


def shutdown() -> None:
    global _server
    with _lock:
        if _server is not None and _owner_pid == os.getpid():
            _server.stop()
        _server = None


atexit.register(shutdown)


def storage(prefix: str | None = None, **kwargs: Any) -> Any:
    """An Azure storage on the test emulator under ``prefix`` (a fresh one if None)."""
    import frazil

    srv = server()
    return frazil.azure_storage(
        account=ACCOUNT,
        container=CONTAINER,
        prefix=prefix if prefix is not None else new_prefix(),
        access_key=ACCOUNT_KEY,
        config=srv.config,
        **kwargs,
    )


def new_prefix() -> str:
    return f"t/{uuid.uuid4().hex}"
