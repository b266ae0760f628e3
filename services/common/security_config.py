"""Security settings as config values: what a client presents (``ClientSecurity``) and what a server serves
(``ServerTLS``). Light on purpose (no grpc, no cryptography): the typed configs and the CLI import it;
:mod:`adapterfleet.common.security` opens channels and :mod:`adapterfleet.common.tls` builds server credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterfleet.common.errors import InvalidArgument

HOW_TO_MAKE = "`adapterfleet auth init DIR` writes a CA, a certificate and its key for a local fleet"


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidArgument(f"cannot read {flag} {path}: {err.strerror}; {HOW_TO_MAKE}, or point the flag at "
                              "your PEM file") from None


@dataclass(frozen=True)
class ClientSecurity:
    """``tls_ca`` turns TLS on (the server's certificate must chain to it); ``tls_cert``/``tls_key`` present a
    client certificate (mTLS); ``token`` is sent as ``authorization: Bearer <token>`` on every call;
    ``server_name`` overrides the name the server's certificate is checked against (default: the address's host)."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("a client certificate needs both --tls-cert and --tls-key (or "
                                  "ADAPTERFLEET_TLS_CERT and ADAPTERFLEET_TLS_KEY); one of them is missing")
        if self.tls_cert is not None and self.tls_ca is None:
            raise InvalidArgument("--tls-cert/--tls-key need --tls-ca (ADAPTERFLEET_TLS_CA): the CA that signed the "
                                  "server's certificate")
        if self.token is not None and not self.token.strip():
            raise InvalidArgument("the token is empty: pass the token's text with --token or ADAPTERFLEET_TOKEN")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    @classmethod
    def from_dir(cls, directory: str | Path, token_file: str | Path | None = "admin.token") -> ClientSecurity:
        """The material `adapterfleet auth init DIR` (or `up`, in DATA_DIR/security) wrote: ca.crt, tls.crt,
        tls.key, and the token in ``token_file`` (relative to ``directory``; None: no token)."""
        d = Path(directory)
        token = None
        if token_file is not None:
            path = d / token_file
            try:
                token = path.read_text().strip()
            except OSError as err:
                raise InvalidArgument(f"cannot read the token file {path}: {err.strerror}; {HOW_TO_MAKE}") from None
        return cls(tls_ca=d / "ca.crt", tls_cert=d / "tls.crt", tls_key=d / "tls.key", token=token)

    def with_token(self, token: str | None) -> ClientSecurity:
        return ClientSecurity(self.tls_ca, self.tls_cert, self.tls_key, token, self.server_name)

    def read_pem(self) -> tuple[bytes, bytes | None, bytes | None]:
        """(CA, client key, client certificate chain) as the files are now (only when ``tls``)."""
        assert self.tls_ca is not None
        root = _read(self.tls_ca, "--tls-ca")
        key = _read(self.tls_key, "--tls-key") if self.tls_key else None
        chain = _read(self.tls_cert, "--tls-cert") if self.tls_cert else None
        return root, key, chain

    def channel_options(self, options: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
        out = list(options)
        if self.tls and self.server_name:
            out.append(("grpc.ssl_target_name_override", self.server_name))
        return out


INSECURE = ClientSecurity()


@dataclass(frozen=True)
class ServerTLS:
    """``cert``/``key``: the service's certificate chain and private key (PEM); ``ca``: when set, clients must
    present a certificate that chains to it (mTLS)."""

    cert: Path
    key: Path
    ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.ca is not None

    def files(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.ca is None else (self.cert, self.key, self.ca)

    def client(self, token: str | None = None, server_name: str | None = None) -> ClientSecurity:
        """What this service presents when it calls another one: the same certificate (usable as a client
        certificate, as `auth init` makes it) and the same CA."""
        if self.ca is None:
            return ClientSecurity(token=token)
        return ClientSecurity(tls_ca=self.ca, tls_cert=self.cert, tls_key=self.key, token=token,
                              server_name=server_name)


PathLike = str | Path | None


def client_security(security: ClientSecurity | None = None, *, tls_ca: PathLike = None, tls_cert: PathLike = None,
                    tls_key: PathLike = None, token: str | None = None) -> ClientSecurity:
    """The SDK's keywords -> a ClientSecurity: either ``security=`` or the separate ones, not both."""
    loose = (tls_ca, tls_cert, tls_key, token)
    if security is not None:
        if any(x is not None for x in loose):
            raise InvalidArgument("give either security=ClientSecurity(...) or tls_ca=/tls_cert=/tls_key=/token=, "
                                  "not both")
        return security

    def path(p: PathLike) -> Path | None:
        return None if p is None else Path(p)

    return ClientSecurity(tls_ca=path(tls_ca), tls_cert=path(tls_cert), tls_key=path(tls_key), token=token)
