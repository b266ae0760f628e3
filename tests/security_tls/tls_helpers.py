"""Shared by the TLS tests: material made with `auth init`'s own functions, and the certificate a server presents
read by a raw TLS handshake (gRPC's Python client does not expose the peer certificate)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from adapterfleet.cli.auth_cmd import Material, issue_cert, make_ca
from adapterfleet.common.security import ClientSecurity, ServerTLS


def make_material(directory: Path) -> Material:
    """A CA and a localhost certificate (no token issuer: these tests need no PyJWT)."""
    directory.mkdir(parents=True, exist_ok=True)
    m = Material(directory)
    make_ca(m)
    issue_cert(m)
    return m


def server_tls(m: Material, mutual: bool = True) -> ServerTLS:
    return ServerTLS(cert=m.cert, key=m.key, ca=m.ca if mutual else None)


def client(m: Material, cert: bool = True, token: str | None = None) -> ClientSecurity:
    return ClientSecurity(tls_ca=m.ca, tls_cert=m.cert if cert else None, tls_key=m.key if cert else None,
                          token=token)


def serial_of(path: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


def peer_serial(port: int, m: Material, host: str = "127.0.0.1") -> int:
    """The serial number of the certificate the server at ``port`` presents to a new connection."""
    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(m.ca)
    ctx.load_cert_chain(m.cert, m.key)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
