"""`lipsync-server`: runs the real `tritonserver` binary from the nvidia-pytriton wheel on model_repository/.

`EmbeddedTritonServer` starts it on loopback ports (fixed or free), forwards its log, waits until the
models are ready and shuts it down on a signal. With `--url` the command instead checks an existing
(remote) Triton and tells clients how to use it: that is how a deployment grows past one machine.

The wheel's backend directory has no Python-backend stub (it ships one per Python version). Rather
than writing into site-packages, each run copies the Python backend (1.5 MB) and the stub for this
interpreter into its own temporary backend directory, which `stop()` removes.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import importlib.util
import logging
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
from dataclasses import dataclass, field
from pathlib import Path

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.cli_config import add_dataclass_arguments, config_from_args

log = logging.getLogger(__name__)
server_log = logging.getLogger("tritonserver")

LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 60
_LOG_LEVELS = {"E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO}
# What this CUDA-enabled build says on every start on a machine without a GPU: expected, not a problem.
_NO_GPU_NOISE = ("CudaDriverHelper has not been initialized", "pinned memory", "CUDA driver version is insufficient")


_RUNNING: set[EmbeddedTritonServer] = set()


@atexit.register
def _stop_leftover_servers() -> None:
    # A program that exits without stop() would leave tritonserver running in its own session.
    for server in list(_RUNNING):
        server.kill()


SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region_"


def process_group(pgid: int) -> list[int]:
    """The pids of the live processes in a process group (Linux /proc; empty elsewhere)."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _is_stub(pid: int) -> bool:
    try:
        return STUB_NAME in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _shm_regions() -> set[str]:
    return {p.name for p in SHM_DIR.glob(SHM_PREFIX + "*")} if SHM_DIR.is_dir() else set()


def _shm_mapped_by(pids: list[int]) -> set[str]:
    """The Python backend's shared-memory regions these processes have mapped (from /proc/PID/maps).

    What a server owns is what its own processes map: a region that merely appeared while it started
    may be another server's, started at the same moment (a test beside a running benchmark)."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.rsplit(None, 1)[-1] if line.count(" ") >= 5 else ""
            if path.startswith(f"{SHM_DIR}/{SHM_PREFIX}"):
                names.add(Path(path).name)
    return names


class TritonServerError(RuntimeError):
    """tritonserver could not be found, started, or made ready."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the nvidia-pytriton wheel keeps tritonserver, its Python backend, the stubs and its libraries."""

    binary: Path
    python_backend: Path
    stub: Path
    libraries: Path

    @classmethod
    def locate(cls) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonServerError(
                "tritonserver not found: the nvidia-pytriton wheel is not installed "
                "(pip install -e '.[serve]'), or point clients at an existing server with --url"
            )
        package = Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            binary=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libraries=package.parent / "nvidia_pytriton.libs",
        )
        for what, path in (
            ("tritonserver binary", found.binary),
            ("Python backend", found.python_backend / "libtriton_python.so"),
            (f"Python {version} backend stub", found.stub),
            ("bundled libraries", found.libraries),
        ):
            if not path.exists():
                raise TritonServerError(f"{what} not found at {path}; reinstall nvidia-pytriton")
        return found


def check_port(name: str, port: int) -> None:
    if not 0 <= port < 65536:
        raise ValueError(f"{name} must be in [0, 65535] (0: a free port), got {port}")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def check_repository(repository: Path, models: tuple[str, ...]) -> None:
    """Fail before launch, naming the missing piece, when a model or its artifacts are absent."""
    if not repository.is_dir():
        raise TritonServerError(f"model repository not found: {repository}")
    for model in models:
        config = layout.config_path(repository, model)
        if not config.is_file():
            present = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
            raise TritonServerError(
                f"model {model!r} not found: {config} does not exist (models in {repository}: {', '.join(present) or 'none'})"
            )
        export = "lipsync-export --avatar DIR" if layout.is_avatar_model(model) else "lipsync-export"
        for path in layout.missing_files(repository, model):
            raise TritonServerError(f"model {model!r} is missing {path}; create it with `{export}`")


class EmbeddedTritonServer:
    """A tritonserver child process on loopback; use as a context manager or start()/wait_ready()/stop().

    Port 0 (the default) picks a free port at the first start; a restart keeps the same ports, so
    clients reconnect to the same address.
    """

    def __init__(
        self,
        model_repository: str | Path = layout.DEFAULT_REPOSITORY,
        models: tuple[str, ...] = (contract.EMBEDDED_MODEL,),
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        startup_timeout_s: float = 180.0,
        exit_timeout_s: int = 10,
        log_verbose: int = 0,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.models = tuple(models)
        if not self.models:
            raise ValueError("at least one model must be loaded")
        for name, port in (("grpc_port", grpc_port), ("http_port", http_port), ("metrics_port", metrics_port)):
            check_port(name, port)
        self._requested_ports = (grpc_port, http_port, metrics_port)
        self.grpc_port = self.http_port = self.metrics_port = 0
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self._process: subprocess.Popen[str] | None = None
        self._log_thread: threading.Thread | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._workdir: Path | None = None
        self._stubs: set[int] = set()  # the model processes of this run, seen once the models were ready
        self._shm_before: set[str] = set()
        self._shm_ours: set[str] = set()

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        return "\n".join(self._log_tail)

    def _resolve_ports(self) -> None:
        if self.grpc_port:
            return  # a restart keeps the ports of the first start
        taken: set[int] = set()
        ports = []
        for port in self._requested_ports:
            while port == 0 or port in taken:
                port = free_port()
            taken.add(port)
            ports.append(port)
        self.grpc_port, self.http_port, self.metrics_port = ports

    def _prepare_backends(self, dist: TritonDistribution) -> Path:
        self._workdir = Path(tempfile.mkdtemp(prefix="lipsync-tritonserver-"))
        python_dir = self._workdir / "backends" / "python"
        shutil.copytree(dist.python_backend, python_dir, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(dist.stub, python_dir / "triton_python_backend_stub")
        return self._workdir / "backends"

    def command(self, dist: TritonDistribution, backends: Path) -> list[str]:
        return [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            # Only the named models: the ONNX and TensorRT models need backends this build lacks.
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]

    def start(self) -> None:
        """Launch tritonserver (returns at once; see wait_ready)."""
        if self.is_running():
            raise TritonServerError(f"tritonserver is already running (pid {self.pid})")
        check_repository(self.model_repository, self.models)
        dist = TritonDistribution.locate()
        self._resolve_ports()
        backends = self._prepare_backends(dist)
        env = dict(os.environ)
        # The Python-backend stub ignores PYTHONPATH and runs the first `python3` on PATH: make it ours,
        # the project is installed in that environment, so model.py imports it like any package.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(dist.libraries), env.get("LD_LIBRARY_PATH")]))
        cmd = self.command(dist, backends)
        log.info("starting %s", " ".join(cmd))
        self._shm_before, self._stubs = _shm_regions(), set()
        self._log_tail.clear()
        self._process = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own session: a Ctrl-C in the terminal reaches us, and we stop the server in order.
            start_new_session=True,
        )
        self._log_thread = threading.Thread(
            target=self._forward_log, args=(self._process,), name="tritonserver-log", daemon=True
        )
        self._log_thread.start()
        _RUNNING.add(self)

    def _forward_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if not line:
                continue
            self._log_tail.append(line)
            # Triton prefixes its lines with E/W/I and the date; the rest (start-up tables) is detail.
            level = _LOG_LEVELS.get(line[0], logging.INFO) if line[1:5].isdigit() else logging.DEBUG
            if level >= logging.WARNING and any(text in line for text in _NO_GPU_NOISE):
                level = logging.DEBUG
            server_log.log(level, "%s", line)

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def is_ready(self) -> bool:
        """The server and every model are ready."""
        if not self.is_running() or self._get("/v2/health/ready") != 200:
            return False
        return all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the server and its models are ready; raise with the server's last log lines otherwise."""
        if self._process is None:
            raise TritonServerError("tritonserver was not started")
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._join_log()
                code = self._process.returncode
                self._cleanup()
                raise TritonServerError(
                    f"tritonserver exited with code {code} before its models were ready; last log lines:\n"
                    f"{self.log_tail()}"
                )
            if self.is_ready():
                self._stubs = {pid for pid in process_group(self._process.pid) if _is_stub(pid)}
                self._shm_ours = (_shm_regions() - self._shm_before) & _shm_mapped_by(process_group(self._process.pid))
                log.info(
                    "tritonserver ready: gRPC %s, HTTP %s, models %s",
                    self.grpc_url,
                    self.http_url,
                    ", ".join(self.models),
                )
                return
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise TritonServerError(f"tritonserver was not ready after {timeout_s:.0f} s; last log lines:\n{tail}")

    def problem(self) -> str | None:
        """Why this server cannot answer, or None: the server exited, or a model process (stub) died.

        Triton keeps reporting ready when a Python-backend stub is killed, and every request to that
        model then times out: readiness alone does not tell, the stub's life does.
        """
        if self._process is None:
            return "tritonserver was not started"
        code = self._process.poll()
        if code is not None:
            return f"tritonserver exited with code {code}"
        alive = set(process_group(self._process.pid))
        if dead := sorted(self._stubs - alive):
            return f"model process (Python-backend stub) {', '.join(map(str, dead))} died"
        return None

    def reap(self) -> None:
        """After a crash: kill whatever of the process group is left (an orphaned stub ignores SIGTERM
        and holds hundreds of MB) and remove the shared-memory regions this run created."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
        self._clear_leftovers()
        self._join_log()
        self._cleanup()

    def _clear_leftovers(self) -> None:
        """Kill what is left of the server's process group and remove this run's shared memory.

        Needed after every exit, not only a crash: a server that died on its own (or was stopped after
        it had) leaves its Python-backend stub running, orphaned, with 300 MB (seen in the soak)."""
        if self._process is not None and process_group(self._process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while process_group(self._process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for name in self._shm_ours:
            with contextlib.suppress(OSError):
                (SHM_DIR / name).unlink()
        self._stubs, self._shm_ours = set(), set()

    def stop(self) -> int | None:
        """Ask the server to exit (SIGTERM), wait for in-flight requests, kill it if it hangs; return its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit within %d s; killing it", self.exit_timeout_s + 10)
                process.kill()
                process.wait()
        self._clear_leftovers()
        self._join_log()
        self._cleanup()
        log.info("tritonserver stopped (exit code %s)", process.returncode)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the server and its model processes, as a crash would, and clean up after them."""
        self.reap()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server process to exit on its own; its exit code, or None on timeout."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _join_log(self) -> None:
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
            self._log_thread = None

    def _cleanup(self) -> None:
        _RUNNING.discard(self)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> EmbeddedTritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path = field(
        default=layout.DEFAULT_REPOSITORY,
        metadata={"flag": "--model-repository", "help": "Triton model repository (written by lipsync-export)"},
    )
    models: tuple[str, ...] = field(
        default=(),
        metadata={
            "flag": "--models",
            "nargs": "+",
            "help": f"models to load, e.g. wav2lip_python avatar_anna (an avatar's own model, written by "
            f"`lipsync-export --avatar DIR`); default: {contract.EMBEDDED_MODEL}, and {contract.LIVE_MODEL} (the "
            "gateway's) when the repository has it. This build of tritonserver has only the Python backend, so the "
            "ONNX and TensorRT models are for the official container",
        },
    )
    grpc_port: int = field(
        default=8001, metadata={"flag": "--grpc-port", "help": "gRPC port on 127.0.0.1 (0: a free port)"}
    )
    http_port: int = field(
        default=8000, metadata={"flag": "--http-port", "help": "HTTP port on 127.0.0.1 (0: a free port)"}
    )
    metrics_port: int = field(
        default=8002,
        metadata={"flag": "--metrics-port", "help": "Prometheus metrics port on 127.0.0.1 (0: a free port)"},
    )
    startup_timeout: float = field(
        default=180.0, metadata={"flag": "--startup-timeout", "help": "seconds to wait for the models to load"}
    )
    log_verbose: int = field(default=0, metadata={"flag": "--log-verbose", "help": "tritonserver --log-verbose level"})
    url: str | None = field(
        default=None,
        metadata={
            "flag": "--url",
            "help": "do not start a server: check the Triton at this gRPC address (host:port) and print how "
            "clients use it",
        },
    )

    def __post_init__(self) -> None:
        if not self.models:
            object.__setattr__(self, "models", default_models(self.model_repository))
        for name in ("grpc_port", "http_port", "metrics_port"):
            check_port(name, getattr(self, name))
        if self.startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be > 0, got {self.startup_timeout}")


def default_models(repository: Path) -> tuple[str, ...]:
    """The embedded model (the offline command's), and the live one (the gateway's) when it was exported."""
    live = layout.config_path(repository, contract.LIVE_MODEL).is_file()
    return (contract.EMBEDDED_MODEL, contract.LIVE_MODEL) if live else (contract.EMBEDDED_MODEL,)


def _check_remote(config: ServerConfig) -> int:
    from lipsync.client.backends.triton import TritonBackend

    model = config.models[0]
    backend = TritonBackend(url=config.url, model=model)
    try:
        if not backend.wait_until_ready(config.startup_timeout):
            print(f"Triton at {config.url} is not ready, or does not serve {model!r}", file=sys.stderr)
            return 1
        print(f"Triton at {config.url} serves {model!r} and is ready.")
        print(f"Point clients at it: lipsync --backend triton --triton_url {config.url}")
        return 0
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lipsync-server", description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(parser, ServerConfig)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(ServerConfig, args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if config.url:
        return _check_remote(config)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server = EmbeddedTritonServer(
        config.model_repository,
        config.models,
        grpc_port=config.grpc_port,
        http_port=config.http_port,
        metrics_port=config.metrics_port,
        startup_timeout_s=config.startup_timeout,
        log_verbose=config.log_verbose,
    )
    try:
        server.start()
        server.wait_ready()
    except TritonServerError as exc:
        print(f"lipsync-server: {exc}", file=sys.stderr)
        server.stop()
        return 1
    print(
        f"tritonserver ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}; "
        f"models {', '.join(config.models)}. Ctrl-C to stop.",
        flush=True,
    )
    code = supervise(server, stop)
    return code if code is not None else (0 if server.stop() in (0, None) else 1)


# More restarts than this within RESTART_WINDOW_S is a crash loop: stop and say so.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0


def supervise(server: EmbeddedTritonServer, stop: threading.Event, poll_s: float = 0.5) -> int | None:
    """Watch the server until `stop` is set; restart it (same ports) when it or a model process dies.

    Returns None when asked to stop, 1 when the server crash-loops or cannot be restarted.
    """
    restarts: collections.deque[float] = collections.deque()
    while not stop.wait(poll_s):
        problem = server.problem()
        if problem is None:
            continue
        now = time.monotonic()
        while restarts and now - restarts[0] > RESTART_WINDOW_S:
            restarts.popleft()
        tail = server.log_tail()
        server.reap()
        if len(restarts) >= MAX_RESTARTS:
            print(
                f"lipsync-server: {problem}; {len(restarts)} restarts in {RESTART_WINDOW_S:.0f} s, giving up. "
                f"Last log lines:\n{tail}",
                file=sys.stderr,
            )
            return 1
        restarts.append(now)
        log.warning("%s: restarting tritonserver (restart %d)", problem, len(restarts))
        try:
            server.start()
            server.wait_ready()
        except TritonServerError as exc:
            print(f"lipsync-server: restart failed: {exc}", file=sys.stderr)
            server.reap()
            return 1
        print(f"tritonserver ready again after: {problem}", flush=True)
    return None


if __name__ == "__main__":
    sys.exit(main())
