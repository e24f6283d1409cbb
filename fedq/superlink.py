"""A private local SuperLink in simulation mode: how ``python -m fedq.simulate`` runs Flower.

Flower's supported way to simulate is ``flwr run`` against a SuperLink started
with ``--simulation`` (``run_simulation`` is deprecated). fedq starts its own
SuperLink for each simulation, so that nothing is shared with other runs on the
machine:

- its own ``FLWR_HOME`` (a temporary folder holding the connection config, the
  installed app, the SuperLink's log);
- free loopback ports;
- runtime dependency installation off (the apps run in this environment);
- Ray started fresh (``RAY_ADDRESS=local``) unless ``FEDQ_RAY_ADDRESS`` names a cluster;
- every process started under ``fedq.supervise``, which ends it and everything it
  started (Flower's simulation process, Ray's daemons) when the run ends, on
  Ctrl-C or SIGTERM, and also when the driver itself is killed (SIGKILL, the OOM
  killer): then it removes the temporary home too.

The app it runs is a generated folder with only a ``pyproject.toml``: the
ServerApp and ClientApp are imported from the installed fedq, so an installed
fedq (not only a checkout) can simulate.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import tomli_w

from fedq.config import RUN_CONFIG_EXTRA_KEYS, RUN_CONFIG_KEYS
from fedq.errors import FedqError
from fedq.supervise import descendants

CONNECTION = "fedq"
APP_COMPONENTS = {"serverapp": "server.server_app:app", "clientapp": "clients.client_app:app"}
START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
# Lines of Flower's own log that say nothing to a fedq user (shown with fl.verbose=true).
_FLOWER_NOISE = re.compile(
    r"^INFO\b|default simulated SuperNodes changed|Manually terminating ClientAppActor"
    r"|fraction_evaluate is set to 0\.0|^Successfully (installed|started)|^Using SuperLink|^Flower App configuration"
    r"|^- Recommended property|Exit Code: \d+|^An unhandled exception occurred|^For more information, visit"
    r"|^ERROR :\s+Simulation raised an exception"  # the ServerApp's own error line, or its traceback, says which
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of Flower's log lines
# The last line of a traceback of a fedq error: the ServerApp printed it as one "error: ..." line already.
_FEDQ_ERROR = re.compile(r"^(fedq|server|clients)\.[\w.]+Error: ")


class SuperLinkError(FedqError):
    """The local SuperLink could not be started."""


def app_config_defaults() -> dict[str, object]:
    """The [tool.flwr.app.config] table: every run-config key fedq reads, empty = fedq's own setting."""
    table: dict[str, object] = {key: "" for key in (*RUN_CONFIG_KEYS, *RUN_CONFIG_EXTRA_KEYS)}
    table["resume"] = False
    return table


def write_app_dir(folder: Path, version: str) -> Path:
    """A Flower app folder for the installed fedq: a pyproject.toml naming its components."""
    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "project": {
            "name": "fedq", "version": version, "license": "Apache-2.0", "dependencies": [],
            "description": "fedq's ServerApp and ClientApp, imported from the installed fedq",
        },
        "tool": {"flwr": {"app": {"publisher": "fedq", "components": APP_COMPONENTS, "config": app_config_defaults()}}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop_process_group(process: subprocess.Popen | None) -> None:
    """End a process started in its own session, and everything it started.

    SIGTERM to the session's process group first (Flower and Ray shut down), then
    SIGKILL to whatever is left of it, and of the processes it started that moved
    to sessions of their own (Ray's daemons may).
    """
    if process is None:
        return
    tree = descendants(process.pid)
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    for pid in tree | descendants(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class LocalSuperLink:
    """``with LocalSuperLink() as link: link.run(...)``; always stopped on leaving the block.

    ``supernodes=0`` (the default) starts it in simulation mode, as fedq.simulate
    does. ``supernodes=N`` starts a deployment instead: the SuperLink and N
    ``flower-supernode`` processes on loopback, node K with the node config
    ``partition-id=K num-partitions=N``, each running its ClientApp in its own
    process as on a real device (the tests and the deployment benchmark use it).
    With ``credentials`` (a folder of ``fedq.credentials``), the deployment runs
    as on real devices: the SuperLink serves TLS with the folder's CA and
    certificate and admits only registered SuperNodes; node K's public key
    ``device-K.pub`` is registered before it starts, and it connects trusting
    ``ca.crt`` and signing with ``device-K``.
    """

    def __init__(self, ray_address: str | None = None, verbose: bool = False, supernodes: int = 0,
                 credentials: Path | None = None) -> None:
        if credentials is not None and not supernodes:
            raise ValueError("credentials are for a deployment (supernodes > 0): a simulation has no devices to connect")
        self.home = Path(tempfile.mkdtemp(prefix="fedq-flwr-"))
        self.verbose = verbose
        self.supernodes = supernodes
        self.credentials = credentials
        self.http = 0
        self.env = {
            **os.environ,
            # Flower's processes start each other by name (flower-superexec, flwr-serverapp, ...): find this
            # environment's, also when fedq runs as .venv/bin/python without the environment activated
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_ADDRESS": ray_address or "local",  # never join a cluster someone left running
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONUNBUFFERED": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",  # a SuperNode starts a ClientApp 0.1 s after its message, not 1 s
        }
        self.processes: list[subprocess.Popen] = []  # SuperLink first, then SuperNodes
        self.run_process: subprocess.Popen | None = None

    def __enter__(self) -> LocalSuperLink:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _supervised(self, command: list[str]) -> list[str]:
        """``command`` under fedq.supervise: it ends with the driver, whatever ends the driver; the SuperLink's
        supervisor (the first) also removes the temporary home."""
        remove = [] if self.processes else ["--remove", str(self.home)]
        return [sys.executable, "-m", "fedq.supervise", *remove, "--", *command]

    def _launch(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 (the process keeps it)
        process = subprocess.Popen(self._supervised(command), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start(self) -> None:
        self.http, *node_ports = free_ports(1 + self.supernodes)
        mode = ["--simulation"] if self.supernodes == 0 else []
        superlink = self._launch("superlink", [
            _tool("flower-superlink"), *self._server_security(), *mode, "--isolation", "subprocess",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.http),
        ])
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _healthy(self.http, self.credentials):
            if superlink.poll() is not None or time.monotonic() > deadline:
                tail = (self.home / "superlink.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise SuperLinkError(f"flower-superlink did not start ({' '.join(tail) or 'no output'})")
            time.sleep(0.2)
        trust = ({"root-certificates": str(self.credentials / "ca.crt")} if self.credentials is not None
                 else {"insecure": True})
        connection = {"superlink": {"default": CONNECTION, CONNECTION: {"address": f"127.0.0.1:{self.http}", **trust}}}
        (self.home / "config.toml").write_text(tomli_w.dumps(connection))
        for node, port in enumerate(node_ports):
            if self.credentials is not None:
                self.register(self.credentials / f"device-{node}.pub")
            self.add_supernode(f"supernode{node}", node, port)

    def _server_security(self) -> list[str]:
        if self.credentials is None:
            return ["--insecure"]
        folder = self.credentials
        return ["--ssl-ca-certfile", str(folder / "ca.crt"), "--ssl-certfile", str(folder / "superlink.crt"),
                "--ssl-keyfile", str(folder / "superlink.key"), "--enable-supernode-auth"]

    def register(self, public_key: Path) -> None:
        """``flwr supernode register``: the SuperLink will admit the SuperNode that signs with this key's pair."""
        result = subprocess.run([_tool("flwr"), "supernode", "register", str(public_key), CONNECTION], env=self.env,
                                capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS)
        if result.returncode != 0:
            raise SuperLinkError(f"could not register {public_key.name}: {(result.stdout + result.stderr).strip()[-300:]}")

    def add_supernode(self, name: str, partition: int, port: int | None = None, private_key: Path | None = None,
                      root_certificates: Path | None = None) -> subprocess.Popen:
        """Start a SuperNode playing ``partition`` (its log: ``HOME/NAME.log``). With credentials it trusts
        ``root_certificates`` (default the folder's CA) and signs with ``private_key`` (default ``device-PARTITION``)."""
        if self.credentials is None:
            security = ["--insecure"]
        else:
            key = private_key or self.credentials / f"device-{partition}"
            security = ["--root-certificates", str(root_certificates or self.credentials / "ca.crt"),
                        "--auth-supernode-private-key", str(key)]
        return self._launch(name, [
            _tool("flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.http}",
            "--port", str(port or free_ports(1)[0]),
            "--node-config", f"partition-id={partition} num-partitions={self.supernodes}",
        ])

    def run(
        self,
        app_dir: Path,
        run_config: Path | Mapping[str, object],
        federation_config: Mapping[str, object] | None = None,
        on_line: Callable[[str], None] = print,
    ) -> int:
        """``flwr run`` the app on this SuperLink and stream its log; returns flwr's exit code.

        ``run_config`` is a TOML file or a mapping of run-config keys.
        """
        if not isinstance(run_config, Path):
            path = self.home / "run_config.toml"
            path.write_text(tomli_w.dumps(dict(run_config)))
            run_config = path
        command = [_tool("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(run_config), "--stream"]
        if federation_config:
            command += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
        self.run_process = subprocess.Popen(
            self._supervised(command), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        assert self.run_process.stdout is not None
        traceback: list[str] = []
        for line in self.run_process.stdout:
            line = line.rstrip("\n")
            if self.verbose:
                on_line(line)
                continue
            line = _ANSI.sub("", line)
            if not line.strip():
                continue
            if traceback or line.startswith("Traceback (most recent call last)"):
                traceback.append(line)
                if not line.startswith((" ", "Traceback")):  # the exception line ends the block
                    if not _FEDQ_ERROR.match(line):
                        for kept in traceback:
                            on_line(kept)
                    traceback = []
            elif not _FLOWER_NOISE.search(line):
                on_line(line)
        for kept in traceback:
            on_line(kept)
        return self.run_process.wait()

    def stop(self) -> None:
        for process in [self.run_process, *reversed(self.processes)]:
            stop_process_group(process)
        shutil.rmtree(self.home, ignore_errors=True)


def _tool(name: str) -> str:
    """A console script of this Python environment (the one fedq runs in)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _toml_value(value: object) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _healthy(port: int, credentials: Path | None = None) -> bool:
    verify: bool | ssl.SSLContext = True
    scheme = "http"
    if credentials is not None:
        scheme, verify = "https", ssl.create_default_context(cafile=str(credentials / "ca.crt"))
    try:
        return httpx.get(f"{scheme}://127.0.0.1:{port}/health", timeout=0.5, verify=verify).is_success
    except httpx.HTTPError:
        return False
