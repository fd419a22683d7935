"""Fixtures for the Python client tests: the package built from this checkout and a
real flashcored on a loopback port.

The package is built from client/python with pip (no build isolation: the
grpcio-tools installed beside pytest generates the stubs) into a temporary
folder that goes first on sys.path, so the tests never import an older
flashcore installed elsewhere, and never write into the source tree.

The daemon is $FLASHCORE_DAEMON (ctest passes the built target), else
build/server/flashcored of this checkout.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_SRC = REPO / "client" / "python"


def daemon_binary() -> Path:
    return Path(os.environ.get("FLASHCORE_DAEMON") or REPO / "build" / "server" / "flashcored")


@pytest.fixture(scope="session")
def flashcore(tmp_path_factory):
    """The flashcore package, built and installed from this checkout for this session.

    $FLASHCORE_TEST_PACKAGE_DIR names one installed ahead instead (pip install
    --target DIR ./client/python), for a machine without grpcio-tools."""
    prebuilt = os.environ.get("FLASHCORE_TEST_PACKAGE_DIR")
    if prebuilt:
        sys.path.insert(0, str(Path(prebuilt).resolve()))
        import flashcore as package
        assert Path(package.__file__).resolve().is_relative_to(Path(prebuilt).resolve())
        return package
    work = tmp_path_factory.mktemp("package")
    source = work / "src"
    shutil.copytree(PACKAGE_SRC, source,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__",
                                                  "v1", "_health.binpb"))
    target = work / "site"
    env = dict(os.environ, FLASHCORE_PROTO_DIR=str(REPO / "proto"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-warn-script-location", "--target", str(target), str(source)],
        env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail("building client/python failed:\n" + result.stdout + result.stderr)
    sys.path.insert(0, str(target))
    for name in [m for m in sys.modules if m == "flashcore" or m.startswith("flashcore.")]:
        del sys.modules[name]
    import flashcore as package
    assert Path(package.__file__).resolve().is_relative_to(target.resolve()), package.__file__
    return package


class Daemon:
    """flashcored started with --listen 127.0.0.1:0 --port-file and its own folders."""

    def __init__(self, folder: Path, *extra: str, binary: Optional[Path] = None):
        folder.mkdir(parents=True, exist_ok=True)
        binary = binary or daemon_binary()
        if not binary.is_file():
            pytest.fail("%s not found: build the daemon first (./deploy/setup.sh)" % binary)
        self.folder = folder
        self.cache_dir = folder / "cache"
        self.port_file = folder / "port"
        self.log_path = folder / "flashcored.log"
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHCORE_")}
        # The driver's compute cache would make "cold" compiles cached ones.
        env["CUDA_CACHE_DISABLE"] = "1"
        self.process = subprocess.Popen(
            [str(binary), "--listen", "127.0.0.1:0", "--port-file", str(self.port_file),
             "--cache-dir", str(self.cache_dir), "--tuning-db", str(folder / "tuning.db"),
             "--log-level", "info", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.port_file.read_text().strip() if self.port_file.exists() else ""
            if text.isdigit():
                self.port = int(text)
                self.address = "127.0.0.1:%d" % self.port
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        self.process.wait()
        pytest.fail("flashcored did not start:\n" + self.log())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (drain) and the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """One daemon for the session's tests (its cache and tuning db are its own)."""
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    yield d
    rc = d.stop()
    assert rc == 0, "flashcored exited %s after SIGTERM:\n%s" % (rc, d.log())


def synthetic_daemon_binary() -> Path:
    return Path(os.environ.get("FLASHCORE_SYNTHETIC_DAEMON")
                or REPO / "build" / "tests" / "flashcore_synthetic_daemon")


@pytest.fixture(scope="session")
def synthetic_daemon(tmp_path_factory):
    """flashcored with the synthetic test objective measuring its Tune jobs
    (tests/python/synthetic_daemon.cpp): tuning that succeeds without a GPU."""
    d = Daemon(tmp_path_factory.mktemp("synthetic"), binary=synthetic_daemon_binary())
    yield d
    rc = d.stop()
    assert rc == 0, "flashcore_synthetic_daemon exited %s after SIGTERM:\n%s" % (rc, d.log())


@pytest.fixture
def start_daemon(tmp_path):
    """Starts extra daemons for one test; each is stopped at its end."""
    started = []

    def start(*extra):
        d = Daemon(tmp_path / ("daemon%d" % len(started)), *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def client(flashcore, daemon):
    c = flashcore.Client(daemon.address, timeout=120)
    yield c
    c.close()
