"""Real parts for the client tests: a redis-server and the featureproxy binary on free ports.

The proxy binary is $FEATUREPROXY_BIN, else target/release/featureproxy, else
target/debug/featureproxy; when none exists, `cargo build --bin featureproxy` builds the debug one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "protocol" / "vectors"
REGISTRY = REPO / "examples" / "features.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(
    port: int, proc: subprocess.Popen | None = None, what: str = "server", limit: float = 30.0, log: Path | None = None
) -> None:
    """Polls until something accepts on port; fails early if proc exits."""
    end = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"{what} exited with {proc.returncode} before listening on {port}\n{tail}")
        if time.monotonic() > end:
            pytest.fail(f"nothing listens on port {port} after {limit}s ({what})")
        time.sleep(0.01)


def wait_for(cond, limit: float = 10.0, what: str = "condition"):
    """Polls cond() for events that have no notification of their own."""
    end = time.monotonic() + limit
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            pytest.fail(f"timed out after {limit}s waiting for {what}")
        time.sleep(0.005)


def stopped(pid: int) -> bool:
    """True once every thread of pid is stopped (SIGSTOP takes effect asynchronously)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]
    except OSError:
        return False
    return bool(states) and all(s in ("T", "t") for s in states)


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP, and wait until it has taken effect."""
    proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: stopped(proc.pid), what=f"pid {proc.pid} to stop")


def find_binary() -> Path:
    env = os.environ.get("FEATUREPROXY_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.fail(f"FEATUREPROXY_BIN={env} is not a file")
        return path
    for profile in ("release", "debug"):
        path = REPO / "target" / profile / "featureproxy"
        if path.is_file():
            return path
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("no featureproxy binary in target/release or target/debug, and cargo is not on PATH to build one")
    proc = subprocess.run([cargo, "build", "--bin", "featureproxy"], cwd=REPO, capture_output=True, text=True)
    path = REPO / "target" / "debug" / "featureproxy"
    if proc.returncode != 0 or not path.is_file():
        pytest.fail(f"cargo build --bin featureproxy failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return path


class RedisServer:
    def __init__(self, port: int | None = None):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH (apt-get install redis-server)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="fp-redis-")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def freeze(self) -> None:
        assert self.proc is not None
        freeze(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: bytes | str) -> bytes:
        """One command over RESP; returns the raw reply."""
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"".join(out))
            reply = s.recv(65536)
        return reply


class ProxyProcess:
    """The featureproxy binary serving a registry file, on a fixed port across restarts."""

    def __init__(
        self,
        binary: Path,
        redis: RedisServer,
        registry: str | None = None,
        shards: int = 2,
        extra: tuple[str, ...] = (),
    ):
        self.binary = binary
        self.redis = redis
        self.port = free_port()
        self.stats_port = free_port()
        self.shards = shards
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix="fp-proxy-"))
        self.log = self.dir / "proxy.log"
        self.proc: subprocess.Popen | None = None
        self.start(registry)

    def start(self, registry: str | None = None) -> None:
        config = self.dir / "features.toml"
        config.write_text(registry if registry is not None else REGISTRY.read_text())
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--stats-listen",
                f"127.0.0.1:{self.stats_port}",
                "--redis",
                self.redis.url,
                "--shards",
                str(self.shards),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
        )
        wait_port(self.port, self.proc, "featureproxy", log=self.log)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of metric ``name`` on the stats endpoint's /metrics, of those
        with every label given (``reason="ok"``) when some are."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            series, value = line.rsplit(" ", 1)
            base, _, rest = series.partition("{")
            if base == name and all(w in rest.rstrip("}").split(",") for w in want):
                total += float(value)
        return total

    def freeze(self) -> None:
        assert self.proc is not None
        freeze(self.proc)

    def kill(self) -> None:
        """SIGKILL (works on a SIGSTOPped process too) and reap."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy_binary() -> Path:
    return find_binary()


@pytest.fixture(scope="session")
def redis_server():
    r = RedisServer()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def proxy(proxy_binary, redis_server):
    px = ProxyProcess(proxy_binary, redis_server)
    yield px
    px.stop()


@pytest.fixture
def make_proxy(proxy_binary):
    """Factory for a private redis-server + proxy pair, for tests that kill or freeze things."""
    made: list = []

    def make(registry: str | None = None, extra: tuple[str, ...] = ()) -> ProxyProcess:
        r = RedisServer()
        made.append(r)
        px = ProxyProcess(proxy_binary, r, registry, extra=extra)
        made.append(px)
        return px

    yield make
    for thing in reversed(made):
        thing.stop()


@pytest.fixture
def client(proxy):
    import featureproxy

    c = featureproxy.Client("127.0.0.1", proxy.port, timeout=5.0)
    yield c
    c.close()


@pytest.fixture
def uniq() -> str:
    """A per-test key prefix, so tests sharing the session's Redis never see each other's rows."""
    return uuid.uuid4().hex[:12] + ":"
