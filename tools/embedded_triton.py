"""Run the real Triton Inference Server that the nvidia-pytriton wheel ships.

This is the embedded CPU default used by `make run` and by the tests: the
wheel carries a complete Triton 2.51 binary with the Python backend, so no
Docker or GPU is needed. Only the binary is used; pytriton is never imported.

A model that fails to load harms no other: Triton runs with
``--exit-on-error=false`` (it stays up and serves the models that loaded) and
``--strict-readiness=false`` (server readiness means "the server is up", not
"every model is READY"), the same flags as the image's CMD
(docker/triton.Dockerfile). The versions that failed are UNAVAILABLE in the
repository index with Triton's load error as their ``reason``
(`TritonProcess.unavailable_versions`). Each start writes a fresh log; the
previous start's log is kept beside it (`previous_log_path`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

ISOLATION_ARGS = ("--exit-on-error=false", "--strict-readiness=false")
"""Keep serving when a model fails to load; server readiness does not wait on every model."""

_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+\s+\d+\s+(?P<source>\S+)\]\s*(?P<message>.*)$")
HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)
"""Error lines Triton logs on every start without a GPU."""
ERROR_LINES_SHOWN = 12


def previous_log_path(log_path: Path) -> Path:
    """Where the previous start's log is kept: ``triton.log`` -> ``triton.previous.log``."""
    return log_path.with_name(f"{log_path.stem}.previous{log_path.suffix}")


def rotate_log(log_path: Path) -> Path | None:
    """Move a non-empty `log_path` to `previous_log_path` (replacing the older one).

    Returns where the previous log now is, or None when there was none.
    """
    if not log_path.exists() or log_path.stat().st_size == 0:
        return None
    previous = previous_log_path(log_path)
    log_path.replace(previous)
    return previous


def error_lines(log_text: str) -> list[str]:
    """The error messages of a Triton log, one line each, oldest first.

    Triton's glog lines (``E1207 10:54:06.938512 17218 model_lifecycle.cc:642]
    "failed to load ..."``) quote and escape their message; it is unquoted and
    its newlines folded into one line. The lines Triton logs on every start
    without a GPU are left out, and so are the option and model tables (they
    are not error lines).
    """
    found: list[str] = []
    for line in log_text.splitlines():
        if line.startswith("error: "):
            found.append(line)
            continue
        match = _ERROR_LINE.match(line)
        if match is None:
            continue
        message = _unquote(match["message"].strip())
        if not any(noise in message for noise in HARMLESS_ERRORS):
            found.append(" ".join(message.split()))
    return found


def _unquote(message: str) -> str:
    """A glog message as Triton writes it (a JSON-style quoted string) as plain text."""
    if len(message) >= 2 and message[0] == message[-1] == '"':
        try:
            return str(json.loads(message))
        except ValueError:
            return message[1:-1]
    return message


@dataclass(frozen=True)
class UnavailableVersion:
    """A model version of the repository that Triton does not serve, and why."""

    model: str
    version: str
    """The version; empty when Triton could not even read the model's directory."""
    state: str
    reason: str


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put the server binary, its backends and its libraries."""

    binary: Path
    backends: Path
    libs: Path
    stubs: Path

    @classmethod
    def locate(cls) -> TritonInstall:
        """Find the Triton files inside the installed nvidia-pytriton wheel."""
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "nvidia-pytriton is not installed; run `make install` to create .venv"
            )
        package = Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        return cls(
            binary=root / "bin" / "tritonserver",
            backends=root / "backends",
            libs=package.parent / "nvidia_pytriton.libs",
            stubs=root / "python_backend_stubs",
        )

    def prepare(self) -> None:
        """Put the Python backend stub matching this interpreter where Triton looks for it."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = self.stubs / version / "triton_python_backend_stub"
        target = self.backends / "python" / "triton_python_backend_stub"
        if not source.exists():
            raise RuntimeError(f"the wheel has no Python backend stub for Python {version}")
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
        target.chmod(0o755)


@dataclass(frozen=True)
class TritonPorts:
    """The three ports Triton listens on."""

    http: int
    grpc: int
    metrics: int


class TritonProcess:
    """A tritonserver child process with start, readiness wait and clean stop."""

    def __init__(
        self,
        model_repository: Path,
        ports: TritonPorts,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_repository = model_repository.resolve()
        self.ports = ports
        self.log_path = log_path
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """Address for tritonclient.grpc."""
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    def command(self, install: TritonInstall) -> list[str]:
        """The tritonserver command line."""
        return [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={install.backends}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--allow-metrics=true",
            "--log-verbose=0",
            *ISOLATION_ARGS,
            *self.extra_args,
        ]

    def environment(self, install: TritonInstall) -> dict[str, str]:
        """Environment for the server.

        The Python backend stub ignores PYTHONPATH and finds its packages from
        the `python3` first on PATH, so this interpreter's bin/ goes first.
        """
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env

    def start(self) -> None:
        """Start the server in the background (returns at once).

        The log starts empty; the previous start's log is moved beside it.
        """
        install = TritonInstall.locate()
        install.prepare()
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            rotate_log(self.log_path)
            self._log_file = self.log_path.open("wb")
            output = self._log_file
        self._process = subprocess.Popen(
            self.command(install),
            env=self.environment(install),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.info("triton_starting", pid=self._process.pid, grpc_port=self.ports.grpc)

    def is_ready(self) -> bool:
        """Whether Triton answers ready on its HTTP health endpoint."""
        url = f"http://127.0.0.1:{self.ports.http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until Triton is ready; raise with the log's errors if it dies or times out.

        Triton binds its ports only after it tried to load every model, so
        ready means the repository is loaded (READY or UNAVAILABLE), not that
        every model serves: see `unavailable_versions`.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self._process.returncode}; {self.log_errors()}"
                )
            if self.is_ready():
                log.info("triton_ready", pid=self.pid)
                return
            time.sleep(0.2)
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f}s; {self.log_errors()}")

    def repository_index(self, timeout_s: float = 5.0) -> list[dict[str, str]]:
        """Triton's repository index (``POST /v2/repository/index``): one entry per version.

        Each entry has ``name``, and ``version``, ``state`` and ``reason`` where
        Triton has them (a model whose config could not be read has only its name).
        """
        url = f"http://127.0.0.1:{self.ports.http}/v2/repository/index"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            entries: list[dict[str, str]] = json.loads(response.read())
        return entries

    def unavailable_versions(self) -> list[UnavailableVersion]:
        """The versions of the repository that are not READY, each with Triton's reason.

        A model whose directory Triton could not read (an unparsable
        config.pbtxt) is listed without version or state; its reason is then
        the log's line about it.
        """
        found = []
        for entry in self.repository_index():
            state = entry.get("state", "")
            if state == "READY":
                continue
            name = entry.get("name", "")
            reason = entry.get("reason", "") or self._logged_failure(name)
            found.append(UnavailableVersion(name, entry.get("version", ""), state, reason))
        return found

    def log_errors(self) -> str:
        """The error lines of this start's log (the last few), for an exception message."""
        if self.log_path is None or not self.log_path.exists():
            return "no log file"
        errors = error_lines(self.log_path.read_text(errors="replace"))
        if not errors:
            return f"no error lines in {self.log_path}"
        shown = errors[-ERROR_LINES_SHOWN:]
        return f"errors in {self.log_path}:\n" + "\n".join(shown)

    def _logged_failure(self, model: str) -> str:
        """The last error line of the log that names `model` (quoted), or a pointer to the log."""
        if self.log_path is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
            named = [line for line in error_lines(text) if f"'{model}'" in line]
            if named:
                return named[-1]
        return "Triton could not load the model (see its log)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the server, wait for it, SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("triton_stopped", pid=process.pid, returncode=process.returncode)
        if process is not None:
            _kill_group(process.pid)  # Python-backend stubs that outlived the server
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL the server and its Python-backend stubs at once (used by fault tests).

        The stubs (one process per model instance, ~300 MB for the LSTM) do
        not die with a SIGKILLed server: the whole process group is killed.
        """
        if self._process is not None and self._process.poll() is None:
            _kill_group(self._process.pid)
            self._process.wait()


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the server's process group (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def main() -> None:
    """`python -m tools.embedded_triton --prepare` sets up the wheel's backend."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepare", action="store_true", help="install the backend stub and exit")
    args = parser.parse_args()
    install = TritonInstall.locate()
    if args.prepare:
        install.prepare()
        sys.stdout.write(f"Triton ready to run: {install.binary}\n")


if __name__ == "__main__":
    main()
