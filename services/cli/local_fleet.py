"""A whole fleet on localhost as child processes: store (embedded default), N workers, a router.

Each part is started with the same command an operator would use (``adapterfleet store serve`` ...), logs to
``<data-dir>/<part>.log`` and is ready once it prints its "... listening" line. Used by ``adapterfleet up`` and
``adapterfleet demo``::

    fleet = LocalFleet(FleetConfig(data_dir, base_model, workers=2))
    with fleet:              # launch: every part started, the store is up; the rest are booting (importing torch)
        ...                  # do something useful meanwhile
        fleet.wait_ready()   # every part printed its "listening" line
    # leaving the block stops the router, then the workers (they drain), then the store

Every listener is checked before anything starts, and held until its part binds it (see
:mod:`adapterfleet.common.ports`): the gRPC and HTTP ports are PORT, PORT+10.., PORT+20, PORT+21 (``port=0``: all
chosen free), the Prometheus /metrics ports are always chosen free. A port in use stops the launch with a line that
names it; a part that fails to start is reported with the root cause from its log (:mod:`.fleet_log`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from adapterfleet.cli import auth_cmd, fleet_log
from adapterfleet.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from adapterfleet.common.ports import PortInUse, reserve
from adapterfleet.common.security_config import INSECURE, ClientSecurity
from adapterfleet.store.config import PORT as STORE_PORT
from adapterfleet.worker.config import WorkerConfig

DATA_DIR = ".adapterfleet"  # `adapterfleet up` and `demo`: the store, worker caches, logs and the demo's files
MAX_WORKERS = 10  # workers take PORT+10 .. PORT+19; the router PORT+20
# the fleet's fixed ports: gRPC PORT..PORT+20; the router's OpenAI-compatible HTTP PORT+21 (/metrics: chosen free)
SPAN = 22


@dataclass(frozen=True)
class FleetPorts:
    """The ports a launched fleet listens on (127.0.0.1)."""

    store: int
    workers: tuple[int, ...]
    router: int
    http: int
    metrics: tuple[tuple[str, int], ...]  # (part, /metrics port): "store", "router", "worker-N"


@dataclass(frozen=True)
class FleetConfig:
    data_dir: Path
    base_model: str  # a directory written by save_pretrained
    port: int = STORE_PORT  # the store's; workers take PORT+10.., the router PORT+20 (+21); 0: every port chosen
    workers: int = 2
    max_slots: int = WorkerConfig.max_slots
    ready_timeout_s: float = 180.0  # for every part together; a worker spends seconds importing torch
    stop_timeout_s: float = 15.0  # per part, after SIGTERM; then it is killed
    ports: FleetPorts | None = None  # set by LocalFleet.launch, which checks (or chooses) and holds them
    secure: bool = True  # mTLS and tokens, with material made on first run under DATA_DIR/security (else --insecure)
    service_token_ttl_s: float = 30 * 86400.0  # the tokens minted for the fleet's own processes at each launch

    def __post_init__(self):
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidArgument(f"--workers {self.workers} must be 1..{MAX_WORKERS}: workers take ports "
                                  f"PORT+10..PORT+{9 + MAX_WORKERS}")
        if not 0 <= self.port <= 65535 - SPAN:
            raise InvalidArgument(f"--port {self.port} must be 1..{65535 - SPAN} (the fleet takes PORT..PORT+"
                                  f"{SPAN - 1}), or 0 for free ports")

    def _ports(self) -> FleetPorts:
        if self.ports is None:
            raise RuntimeError("the fleet's ports are known once LocalFleet.launch has checked them")
        return self.ports

    @property
    def store_address(self) -> str:
        return f"127.0.0.1:{self._ports().store}"

    @property
    def worker_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self._ports().workers]

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self._ports().router}"

    @property
    def http_url(self) -> str:
        """The router's OpenAI-compatible API (``base_url`` for the openai client)."""
        return f"http://127.0.0.1:{self._ports().http}/v1"

    @property
    def security_dir(self) -> Path:
        return Path(self.data_dir) / "security"

    def material(self) -> auth_cmd.Material | None:
        return auth_cmd.Material(self.security_dir) if self.secure else None

    def client_security(self) -> ClientSecurity:
        """What a client of this fleet presents: the fleet's certificate and the admin token."""
        m = self.material()
        if m is None:
            return INSECURE
        return ClientSecurity(tls_ca=m.ca, tls_cert=m.cert, tls_key=m.key,
                              token=m.admin_token_file.read_text().strip())

    def metrics_port(self, part: str) -> int:
        """Where ``part`` ("store", "router", "worker-N") serves Prometheus /metrics."""
        return dict(self._ports().metrics)[part]


def reserve_ports(port: int, workers: int) -> FleetPorts:
    """Check and hold the fleet's ports: PORT, PORT+10.., PORT+20, PORT+21 (``port`` 0: chosen free, as the
    /metrics ports always are). FailedPrecondition, naming the port and its part, when one is in use."""

    def take(offset: int, what: str) -> int:
        wanted = port + offset if port else 0
        try:
            return reserve(wanted)
        except PortInUse:
            raise FailedPrecondition(
                f"port {wanted} ({what}) is in use on 127.0.0.1: another process listens there (a fleet that is "
                f"still running?). Stop it, or move the fleet: --port P takes P, P+10..P+{9 + workers}, P+20 and "
                "P+21; --port 0 chooses free ports") from None

    names = [f"worker-{i}" for i in range(workers)]
    return FleetPorts(store=take(0, "the store's gRPC port"),
                      workers=tuple(take(10 + i, f"{name}'s gRPC port") for i, name in enumerate(names)),
                      router=take(20, "the router's gRPC port"), http=take(21, "the router's HTTP port"),
                      metrics=tuple((name, reserve()) for name in ("store", "router", *names)))


@dataclass
class _Part:
    name: str  # "store", "worker-0", "router"
    proc: subprocess.Popen[str]
    log: Path
    ready_line: str
    log_start: int = 0  # this run's first byte in the (appended-to) log
    ready: bool = False

    def output(self) -> str:
        """What this run of the part wrote to its log."""
        return fleet_log.read_since(self.log, self.log_start)

    def why(self) -> str:
        """Why it stopped: the root cause from its log (not the interpreter's follow-on noise)."""
        return fleet_log.explain(self.output())

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None  # started with stdout=PIPE
        return self.proc.stdout


class LocalFleet:
    def __init__(self, cfg: FleetConfig):
        self.cfg = cfg
        self._parts: list[_Part] = []
        self._security: dict[str, tuple[list[str], dict[str, str]]] = {}

    # --- lifecycle --------------------------------------------------------------------------------------------------
    def launch(self) -> None:
        """Start every part at once (their ports are known now; workers and the router retry the store until it
        answers) and wait for the store only: the workers and the router keep booting (importing torch)."""
        if self._parts:
            raise RuntimeError("this fleet was already launched")
        self.cfg = replace(self.cfg, ports=reserve_ports(self.cfg.port, self.cfg.workers))
        cfg, data, ports = self.cfg, Path(self.cfg.data_dir), self.cfg.ports
        assert ports is not None
        data.mkdir(parents=True, exist_ok=True)
        self._security = self._prepare_security()
        self._spawn("store", ["store", "serve", "--port", str(ports.store), "--data-dir", str(data / "store")],
                    "store listening")
        store = ["--store", cfg.store_address]
        for i, address in enumerate(cfg.worker_addresses):  # all at once: each spends seconds importing torch
            self._spawn(f"worker-{i}", ["worker", "serve", "--port", address.rsplit(":", 1)[1], *store,
                                        "--base-model", str(cfg.base_model), "--disk-cache-dir",
                                        str(data / f"worker-{i}"), "--max-slots", str(cfg.max_slots)],
                        "worker listening")
        self._spawn("router", ["router", "serve", "--port", str(ports.router), *store, "--http-port",
                               str(ports.http), "--tokenizer", str(cfg.base_model)], "router listening")
        self._wait(self._parts[:1], time.monotonic() + cfg.ready_timeout_s)

    def wait_ready(self) -> None:
        """Block until every part printed its "listening" line; Unavailable (naming the log) if one did not."""
        self._wait(self._parts, time.monotonic() + self.cfg.ready_timeout_s)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def dead(self) -> list[str]:
        """The parts that have exited."""
        return [p.name for p in self._parts if p.proc.poll() is not None]

    def check(self) -> None:
        """Raise Unavailable (naming the log) if a part has exited; cheap enough to call between steps of work."""
        for part in self._parts:
            code = part.proc.poll()
            if code is None:
                continue
            if not part.ready:
                self._wait([part], time.monotonic())  # reads what it printed, raises with the reason
            raise Unavailable(f"the fleet's {part.name} exited (status {code}); see {part.log}:\n{part.why()}")

    def wait(self, poll_s: float = 0.5) -> list[str]:
        """Block until some part exits; return the parts that did."""
        while not self.dead():
            time.sleep(poll_s)
        return self.dead()

    def stop(self) -> None:
        """SIGTERM the router, then the workers (they drain and tell the registry), then the store; each stage is
        waited for before the next, and a part that outlives the timeout is killed."""
        parts, self._parts = self._parts, []
        stages = [[p for p in parts if p.name == "router"], [p for p in parts if p.name.startswith("worker")],
                  [p for p in parts if p.name == "store"]]
        try:
            for stage in stages:
                for part in stage:
                    if part.proc.poll() is None:
                        part.proc.send_signal(signal.SIGTERM)
                for part in stage:
                    try:
                        part.proc.wait(self.cfg.stop_timeout_s)
                    except subprocess.TimeoutExpired:
                        part.proc.kill()
                        part.proc.wait()
        except BaseException:  # a second Ctrl-C (or SIGTERM) while stopping: no more patience
            for part in parts:
                if part.proc.poll() is None:
                    part.proc.kill()
            raise
        finally:
            for part in parts:
                part.stdout.close()

    def __enter__(self) -> LocalFleet:
        try:
            self.launch()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what to tell the user --------------------------------------------------------------------------------------
    def describe(self) -> str:
        cfg = self.cfg
        return (f"store   {cfg.store_address}\nworkers {' '.join(cfg.worker_addresses)}\n"
                f"router  {cfg.router_address}\nopenai  {cfg.http_url} (model: an adapter ref, or "
                f"{Path(cfg.base_model).name})\nbase    {cfg.base_model}\nlogs    {cfg.data_dir}/*.log\n"
                f"metrics http://127.0.0.1:PORT/metrics: store {cfg.metrics_port('store')}, router "
                f"{cfg.metrics_port('router')}, workers "
                f"{' '.join(str(cfg.metrics_port(f'worker-{i}')) for i in range(cfg.workers))}"
                + (f"\nsecurity mTLS and tokens (material in {cfg.security_dir}); for the CLI in this shell:\n"
                   f"        {self.client_env()}" if cfg.secure else "\nsecurity OFF (plaintext, no tokens)"))

    def client_env(self) -> str:
        """The shell line that points the CLI (and SDK users' code) at this fleet's CA, certificate and token."""
        m = self.cfg.material()
        if m is None:
            return ""
        return (f"export ADAPTERFLEET_TLS_CA={m.ca} ADAPTERFLEET_TLS_CERT={m.cert} ADAPTERFLEET_TLS_KEY={m.key} "
                f"ADAPTERFLEET_TOKEN=\"$(cat {m.admin_token_file})\"")

    def summary(self) -> dict:
        """What :meth:`describe` says, as JSON-ready values (``up --json``, ``demo --json``)."""
        cfg = self.cfg
        return {"store": cfg.store_address, "workers": cfg.worker_addresses, "router": cfg.router_address,
                "http": cfg.http_url, "metrics": dict(cfg._ports().metrics),  # noqa: SLF001 - our own config
                "base_model": str(cfg.base_model), "logs": str(cfg.data_dir),
                "security": m.as_json() if (m := cfg.material()) else None}

    # --- plumbing ---------------------------------------------------------------------------------------------------
    def _prepare_security(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Per part: (its TLS flags, its environment: the issuer's public key and its own service token). The
        material is made on the first run and reused; the tokens are minted afresh at each launch (tokens go
        through the environment, not argv, which every local user can read in ps)."""
        m = auth_cmd.ensure(self.cfg.security_dir) if self.cfg.secure else None
        if m is None:
            return {}
        flags = ["--tls-cert", str(m.cert), "--tls-key", str(m.key), "--tls-ca", str(m.ca)]
        ttl = self.cfg.service_token_ttl_s

        def token(scopes: list[str], worker_id: str | None = None) -> str:
            return auth_cmd.mint(m.issuer_key, ["*"], scopes, ttl, worker_id=worker_id).token

        def env(tok: str) -> dict[str, str]:
            return {"ADAPTERFLEET_AUTH_PUBLIC_KEY": str(m.issuer_public_key), "ADAPTERFLEET_TOKEN": tok}

        out = {"store": (flags, env(token(["read", "serve"]))), "router": (flags, env(token(["read", "serve"])))}
        for i in range(self.cfg.workers):
            out[f"worker-{i}"] = (flags, env(token(["read", "worker"], worker_id=f"local-worker-{i}")))
        return out

    def _spawn(self, name: str, args: list[str], ready_line: str) -> None:
        log = Path(self.cfg.data_dir) / f"{name}.log"
        args = [*args, "--metrics-port", str(self.cfg.metrics_port(name)), "--metrics-host", "127.0.0.1"]
        flags, env = self._security.get(name, (["--insecure"], {}))
        with open(log, "ab") as err:  # the child keeps its own handle
            start = err.tell()  # logs are appended to: this run's lines begin here
            proc = subprocess.Popen([sys.executable, "-u", "-m", "adapterfleet.cli.main", *args, *flags],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **env})
        self._parts.append(_Part(name, proc, log, ready_line, start))

    def _wait(self, parts: list[_Part], deadline: float) -> None:
        """Read each part's first line, all at once: a part that fails is reported as soon as it exits."""
        pending = {p.stdout: p for p in parts if not p.ready}
        while pending:
            # Nothing was read from these pipes before, so select() sees every byte the children wrote.
            readable, _, _ = select.select(list(pending), [], [], max(deadline - time.monotonic(), 0))
            if not readable:
                names = ", ".join(p.name for p in pending.values())
                part = next(iter(pending.values()))
                raise Unavailable(f"the fleet's {names} did not start in {self.cfg.ready_timeout_s:.0f}s; see "
                                  f"{part.log}:\n{fleet_log.tail(part.output())}")
            for pipe in readable:
                part = pending.pop(pipe)
                line = pipe.readline()
                if part.ready_line not in line:
                    why = (f"printed {line.strip()!r} instead of {part.ready_line!r}" if line
                           else f"exited (status {part.proc.wait()}) before it was ready")
                    raise Unavailable(f"the fleet's {part.name} {why}; see {part.log}:\n{part.why()}")
                part.ready = True


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, so it stops a fleet the way Ctrl-C does."""

    def handler(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
