"""Start a local ``bqemulator`` (BigQuery REST emulator on DuckDB) for tests.

Usage::

    from tests.support.bq_emulator import start_emulator

    with start_emulator() as emu:
        client = emu.client()
        client.query("SELECT 1").result()

The emulator runs as a subprocess (``sys.executable -m bqemulator start``)
on a free 127.0.0.1 port, ephemeral (in-memory DuckDB).

bqemulator runs ``INSTALL spatial; LOAD spatial`` at startup and fails if
that is impossible. CI/dev machines cannot reach DuckDB's extension server,
so :func:`ensure_spatial_extension` first installs the extension from the
``duckdb-extension-spatial`` PyPI wheel (whose version must equal
``duckdb``'s) into DuckDB's local extension directory. After that the
emulator's ``INSTALL spatial`` is a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from google.cloud import bigquery

DEFAULT_PROJECT = "pipestate-test"
DEFAULT_LOCATION = "US"
"""The location the emulator's clients name (the adapter wants an explicit one)."""
DEFAULT_STARTUP_TIMEOUT_S = 60.0

_spatial_lock = threading.Lock()
_spatial_ready = False


def _spatial_wheel_file() -> Path:
    """Locate ``spatial.duckdb_extension`` inside the installed wheel."""
    import duckdb

    try:
        import duckdb_extension_spatial
    except ImportError as exc:  # pragma: no cover - environment problem
        raise RuntimeError(
            "duckdb-extension-spatial is not installed; "
            f"pip install duckdb-extension-spatial=={duckdb.__version__}",
        ) from exc
    roots = [Path(p) for p in getattr(duckdb_extension_spatial, "__path__", [])]
    candidates = sorted(f for root in roots for f in root.rglob("spatial.duckdb_extension"))
    if not candidates:
        raise RuntimeError(f"spatial.duckdb_extension not found under {roots}")
    wanted = f"v{duckdb.__version__}"
    for cand in candidates:
        if wanted in cand.parts:
            return cand
    found = ", ".join(str(c) for c in candidates)
    raise RuntimeError(
        f"duckdb {duckdb.__version__} needs duckdb-extension-spatial=="
        f"{duckdb.__version__}; wheel only contains: {found}",
    )


def ensure_spatial_extension() -> None:
    """Install DuckDB's ``spatial`` extension from the PyPI wheel (idempotent).

    Installs into DuckDB's default extension directory
    (``~/.duckdb/extensions/v<ver>/<platform>/``), which the emulator
    subprocess shares as long as it runs with the same ``HOME``.
    """
    global _spatial_ready
    with _spatial_lock:
        if _spatial_ready:
            return
        import duckdb

        con = duckdb.connect(":memory:")
        try:
            row = con.execute(
                "SELECT installed FROM duckdb_extensions() WHERE extension_name = 'spatial'",
            ).fetchone()
            if not (row and row[0]):
                path = str(_spatial_wheel_file()).replace("'", "''")
                con.execute(f"INSTALL '{path}'")
            con.execute("LOAD spatial")  # verify it actually loads
        finally:
            con.close()
        _spatial_ready = True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BigQueryEmulator:
    """A running ``bqemulator`` subprocess. Use as a context manager."""

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        *,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        log_level: str = "warning",
    ) -> None:
        self.project: str = project
        self.port: int = 0
        self.endpoint: str = ""
        self.startup_seconds: float = 0.0
        self._startup_timeout_s = startup_timeout_s
        self._log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=60)
        self._stderr_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> BigQueryEmulator:
        if self._proc is not None:
            return self
        ensure_spatial_extension()
        t0 = time.monotonic()
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # Run in an empty temp dir so a stray ``.bqemu.toml`` cannot leak in.
        self._workdir = tempfile.TemporaryDirectory(prefix="bqemu-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BQEMU_")}
        env.pop("BIGQUERY_EMULATOR_HOST", None)
        cmd = [
            sys.executable,
            "-m",
            "bqemulator",
            "start",
            "--rest-host",
            "127.0.0.1",
            "--rest-port",
            str(self.port),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--ephemeral",
            "--project",
            self.project,
            "--log-level",
            self._log_level,
            "--log-format",
            "console",
        ]
        self._proc = subprocess.Popen(
            cmd,
            cwd=self._workdir.name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._proc.stderr is not None
        self._stderr_thread = threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True)
        self._stderr_thread.start()
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._stderr_tail.append(raw.decode("utf-8", "replace").rstrip())
        stream.close()

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None
        deadline = t0 + self._startup_timeout_s
        url = f"{self.endpoint}/readyz"
        last_err: str = ""
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                if self._stderr_thread is not None:
                    self._stderr_thread.join(timeout=2)
                raise RuntimeError(
                    f"bqemulator exited with code {rc} during startup.\n"
                    f"--- stderr tail ---\n{self.stderr_tail()}",
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last_err = f"HTTP {resp.status}"
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                last_err = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(
            f"bqemulator did not become ready on {self.endpoint} within "
            f"{self._startup_timeout_s:.0f}s (last probe error: {last_err}).\n"
            f"--- stderr tail ---\n{self.stderr_tail()}",
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2)
            self._stderr_thread = None
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                self._workdir.cleanup()
            self._workdir = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- clients -------------------------------------------------------------

    def client(self) -> bigquery.Client:
        """A real ``google.cloud.bigquery.Client`` pointed at this emulator. It checks every
        statement the adapter sends against the ZetaSQL gate's catalogue
        (:mod:`tests.support.bq_statements`)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        from tests.support.bq_statements import RecordingClient

        if not self.endpoint:
            raise RuntimeError("emulator not started")
        return RecordingClient(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.endpoint),
            location=DEFAULT_LOCATION,
        )

    # -- context manager -------------------------------------------------

    def __enter__(self) -> BigQueryEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_shared_lock = threading.Lock()
_shared: BigQueryEmulator | None = None
_shared_client: bigquery.Client | None = None
_shared_failure: str | None = None


def missing_packages() -> list[str]:
    """The packages the emulator and the BigQuery adapter need that are not installed."""
    wanted = ("bqemulator", "duckdb", "duckdb_extension_spatial", "google.cloud.bigquery")
    missing = []
    for name in wanted:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def shared_emulator() -> BigQueryEmulator:
    """The one emulator of this process (a pytest session), started on first use.

    Installs the spatial extension if needed, starts the emulator on a free loopback port, and
    stops it when the interpreter exits. A failure to start is remembered, so later callers fail
    at once with the same reason instead of waiting for another start-up timeout.

    Raises:
        RuntimeError: the packages are missing or the emulator did not start.
    """
    global _shared, _shared_failure
    with _shared_lock:
        if _shared is not None and _shared.running:
            return _shared
        if _shared_failure is not None:
            raise RuntimeError(_shared_failure)
        missing = missing_packages()
        if missing:
            _shared_failure = f"not installed: {', '.join(missing)} (pip install -e '.[dev,bigquery]')"
            raise RuntimeError(_shared_failure)
        emulator = BigQueryEmulator()
        try:
            emulator.start()
        except Exception as exc:
            _shared_failure = f"bqemulator did not start: {exc}"
            raise RuntimeError(_shared_failure) from exc
        atexit.register(_stop_shared)
        _shared = emulator
        return emulator


def shared_client() -> bigquery.Client:
    """One client on the shared emulator (the client is thread-safe)."""
    global _shared_client
    emulator = shared_emulator()
    with _shared_lock:
        if _shared_client is None:
            _shared_client = emulator.client()
        return _shared_client


def _stop_shared() -> None:
    global _shared, _shared_client
    with _shared_lock:
        if _shared_client is not None:
            _shared_client.close()  # type: ignore[no-untyped-call]
            _shared_client = None
        if _shared is not None:
            _shared.stop()
            _shared = None


def start_emulator(
    project: str = DEFAULT_PROJECT,
    *,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> BigQueryEmulator:
    """Start an emulator and return it (already running; call ``.stop()``
    or use it as a context manager)."""
    return BigQueryEmulator(project, startup_timeout_s=startup_timeout_s).start()


__all__ = [
    "DEFAULT_PROJECT",
    "BigQueryEmulator",
    "ensure_spatial_extension",
    "missing_packages",
    "shared_client",
    "shared_emulator",
    "start_emulator",
]
