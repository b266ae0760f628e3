"""One line instead of gRPC's "failed to connect to all addresses; last error: UNKNOWN: ipv4:...: Failed to connect
to remote host: Connection refused": what could not be reached, why, and what to do about it."""

from __future__ import annotations

import re

_REFUSED = "Connection refused"
_RESOLVE = re.compile(r"DNS resolution failed|errors resolving|Domain name not found|Name or service not known")
_CONNECT = "failed to connect to all addresses"
_TLS = re.compile(r"ssl|handshake|certificate|WRONG_VERSION_NUMBER|tls", re.IGNORECASE)
_REASON = re.compile(r"(Connection timed out|No route to host|Network is unreachable|Connection reset by peer|"
                     r"Socket closed|Deadline Exceeded)", re.IGNORECASE)


def unreachable(detail: str, address: str, role: str, option: str) -> str | None:
    """The message for a call to the ``role`` ("store", "router", "worker") at ``address`` that failed with gRPC's
    ``detail``, when the failure is that nothing could be reached there; None for any other failure. ``option``
    is where the address came from, e.g. "--router or ADAPTERFLEET_ROUTER"."""
    if _REFUSED in detail:
        return (f"no {role} at {address}: nothing is listening there (connection refused). Start one "
                f"(`adapterfleet {role} serve`, or `adapterfleet up` for a local fleet), or point {option} at "
                "the one that runs")
    if _RESOLVE.search(detail):
        return f"cannot resolve the host of {address} (the {role}'s address); check {option}"
    if _CONNECT in detail:
        why = _REASON.search(detail)
        if _TLS.search(detail):
            return (f"cannot connect to the {role} at {address}: the TLS handshake failed; a TLS service needs "
                    "--tls-ca (and --tls-cert/--tls-key when it requires client certificates), or "
                    "ADAPTERFLEET_TLS_CA/_CERT/_KEY, from the same CA as its certificate; a plaintext one needs none")
        return (f"cannot connect to the {role} at {address}: {why.group(1).lower() if why else 'no answer'}; "
                f"is it running, is {option} right, and does it serve TLS (then pass --tls-ca, and --tls-cert/"
                "--tls-key for mTLS)?")
    return None
