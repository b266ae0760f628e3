"""A service's TLS: its certificate and key, and the CA whose client certificates it accepts (mTLS).

``server_credentials`` gives gRPC credentials that follow the files: before each new connection's handshake gRPC
asks ``CertificateReloader`` for a configuration, which re-reads the files when one of them changed (mtime, size or
inode). A half-written rotation (a new certificate beside the old key) is kept out: the pair must match before it is
used, else the previous configuration stays and the next connection tries again. Connections already open keep
the certificate they were made with, so long-running streams survive a rotation.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.common.security_config import HOW_TO_MAKE, ServerTLS

__all__ = ["CertificateReloader", "ServerTLS", "load_material", "server_credentials"]

log = logging.getLogger("adapterfleet.tls")


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    ca: bytes | None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidArgument(f"cannot read the TLS {what} {path}: {err.strerror}; {HOW_TO_MAKE}") from None


def load_material(tls: ServerTLS) -> _Material:
    """Read and check the files: PEM that parses, a key that belongs to the certificate."""
    from cryptography import x509  # noqa: PLC0415 - cryptography only where TLS is configured
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - as above

    cert, key = _read(tls.cert, "certificate"), _read(tls.key, "key")
    ca = _read(tls.ca, "CA") if tls.ca is not None else None
    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
    except ValueError as err:
        raise InvalidArgument(f"{tls.cert} is not a PEM certificate ({err}); {HOW_TO_MAKE}") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        raise InvalidArgument(f"{tls.key} is not an unencrypted PEM private key ({err}); {HOW_TO_MAKE}") from None
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as err:
            raise InvalidArgument(f"{tls.ca} is not a PEM CA certificate ({err}); {HOW_TO_MAKE}") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*raw) != private.public_key().public_bytes(*raw):
        raise InvalidArgument(f"the key {tls.key} does not belong to the certificate {tls.cert}: give the key the "
                              "certificate was issued for (during a rotation, replace both)")
    return _Material(cert, key, ca)


def _configuration(m: _Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)


class CertificateReloader:
    """gRPC's certificate configuration fetcher: a new configuration when the files changed, else None."""

    def __init__(self, tls: ServerTLS):
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.initial = _configuration(load_material(tls))
        self.reloads = 0

    def _stat(self) -> tuple:
        try:
            return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (Path(p).stat() for p in self.tls.files()))
        except OSError:
            return ()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._stat()
        with self._lock:
            if not stamp or stamp == self._stamp:
                return None
            try:
                config = _configuration(load_material(self.tls))
            except InvalidArgument as err:  # mid-rotation or a bad file: keep serving the previous certificate
                log.warning("TLS files changed but cannot be used yet (keeping the previous certificate): %s", err)
                return None
            self._stamp = stamp
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.tls.cert)
        return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port`` that reload the files when they change."""
    reloader = CertificateReloader(tls)
    return grpc.dynamic_ssl_server_credentials(reloader.initial, reloader,
                                               require_client_authentication=tls.mutual)
