"""Rolling out adapter versions from Python: the store's Rollouts service, as plain values.

    with Rollouts("store:50051") as rollouts:
        s = rollouts.start("acme/summarizer", "prod", to=4, steps=(5, 25, 50, 100), interval="60s",
                           max_error_rate=0.01, min_requests=100)
        print(rollouts.status("acme/summarizer", "prod").state)   # running | paused | done | rolled_back | aborted
        rollouts.pause("acme/summarizer", "prod"); rollouts.resume(...); rollouts.abort(...)

The store drives the rollout on its own (warm, steps, gates, rollback): nothing here needs to keep running.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import open_channel
from adapterfleet.common.security_config import ClientSecurity, PathLike, client_security
from adapterfleet.store.config import ADDRESS as DEFAULT_ADDRESS
from adapterfleet.store.rollout_record import RolloutStatus, status_from_pb
from adapterfleet.v1 import rollout_pb2, rollout_pb2_grpc

__all__ = ["RolloutStatus", "Rollouts", "parse_duration"]
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """``"60s"``, ``"2m"``, ``"500ms"``, ``"1h"`` or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    raw = str(text).strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if raw.endswith(unit):
            number, scale = raw[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = raw, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise InvalidArgument(f"duration {str(text)[:30]!r} is not a number with a unit: use e.g. 60s, 2m, 500ms"
                              ) from None
    if not seconds > 0:
        raise InvalidArgument(f"duration {text!r} must be positive")
    return seconds


def parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"5,25,50,100"`` or a sequence of ints -> the steps (checked by the store)."""
    if isinstance(text, str):
        try:
            return tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise InvalidArgument(f"--steps {text[:40]!r} must be whole percentages, e.g. 5,25,50,100") from None
    return tuple(int(s) for s in text)


class Rollouts:
    """A client of the store's Rollouts service. Security as in :class:`~adapterfleet.sdk.store.AdapterStore`."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = 30.0, tls_ca: PathLike = None,
                 tls_cert: PathLike = None, tls_key: PathLike = None, token: str | None = None,
                 security: ClientSecurity | None = None):
        self.address = address
        self.security = client_security(security, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
        self._channel = open_channel(address, self.security)
        self._stub = rollout_pb2_grpc.RolloutsStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Rollouts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def start(self, name: str, alias: str, *, to: int, steps: str | Sequence[int] = (),
              interval: str | float | None = None, max_error_rate: float | None = None,
              max_p99_ms: float | None = None, min_requests: int | None = None, regions: Sequence[str] = (),
              warm: bool = True, warm_timeout: str | float | None = None) -> RolloutStatus:
        """Start rolling ``name@alias`` from the version it points at to version ``to``; returns at once (the store
        drives it). Defaults: steps 5,25,50,100, interval 60s, max_error_rate 0.01, min_requests 100."""
        request = rollout_pb2.StartRolloutRequest(
            name=name, alias=alias, to_version=int(to), steps=parse_steps(steps),
            interval_seconds=parse_duration(interval) if interval is not None else 0.0,
            max_error_rate=max_error_rate or 0.0, has_max_error_rate=max_error_rate is not None,
            max_p99_ms=max_p99_ms or 0.0, min_requests=min_requests or 0, has_min_requests=min_requests is not None,
            regions=list(regions), no_warm=not warm,
            warm_timeout_seconds=parse_duration(warm_timeout) if warm_timeout is not None else 0.0)
        return status_from_pb(self._call(self._stub.Start, request))

    def status(self, name: str, alias: str) -> RolloutStatus:
        return status_from_pb(self._call(self._stub.Status, rollout_pb2.RolloutRef(name=name, alias=alias)))

    def pause(self, name: str, alias: str) -> RolloutStatus:
        """Hold the alias where it is; gates keep being reported, nothing moves until resume."""
        return status_from_pb(self._call(self._stub.Pause, rollout_pb2.RolloutRef(name=name, alias=alias)))

    def resume(self, name: str, alias: str) -> RolloutStatus:
        """Continue a paused rollout; the current step's interval starts again."""
        return status_from_pb(self._call(self._stub.Resume, rollout_pb2.RolloutRef(name=name, alias=alias)))

    def abort(self, name: str, alias: str) -> RolloutStatus:
        """Stop and send all traffic back to the old version (compare-and-set)."""
        return status_from_pb(self._call(self._stub.Abort, rollout_pb2.RolloutRef(name=name, alias=alias)))

    def list(self, prefix: str = "") -> list[RolloutStatus]:
        response = self._call(self._stub.List, rollout_pb2.ListRolloutsRequest(prefix=prefix))
        return [status_from_pb(s) for s in response.rollouts]
