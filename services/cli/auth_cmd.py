"""`adapterfleet auth init DIR` (a local CA, a certificate, a token issuer, an admin token) and
`adapterfleet token create` (mint a token offline with the issuer's private key).

The files carry cert-manager's names (``tls.crt``, ``tls.key``, ``ca.crt``), so the same paths work for a local
fleet, docker-compose and a Kubernetes secret. The certificate names localhost, 127.0.0.1 and ::1 (plus any
``--san``) and is usable as a server and as a client certificate: one identity for every service of a local fleet.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterfleet.common.errors import FailedPrecondition, InvalidArgument

ALL_SCOPES = ("read", "push", "admin", "serve", "worker")  # tokens.SCOPES, without importing PyJWT for --help
ADMIN_SCOPES = ["read", "push", "admin", "serve"]  # the operator: everything but announcing as a worker
ADMIN_TTL_S = 365 * 86400.0
CA_DAYS, CERT_DAYS = 3650, 397  # 397: the longest leaf lifetime browsers and most policies accept
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Material:
    """The paths `auth init` writes under one directory."""

    dir: Path

    ca = property(lambda self: self.dir / "ca.crt")
    ca_key = property(lambda self: self.dir / "ca.key")
    cert = property(lambda self: self.dir / "tls.crt")
    key = property(lambda self: self.dir / "tls.key")
    issuer_key = property(lambda self: self.dir / "issuer.key")
    issuer_public_key = property(lambda self: self.dir / "issuer.pub")
    admin_token_file = property(lambda self: self.dir / "admin.token")

    def as_json(self) -> dict[str, str]:
        return {k: str(getattr(self, k)) for k in ("ca", "cert", "key", "issuer_key", "issuer_public_key",
                                                   "admin_token_file")}

    def complete(self) -> bool:
        return all(Path(p).is_file() for p in (*self.as_json().values(), self.ca_key))

    def present(self) -> list[Path]:
        return [p for p in (*map(Path, self.as_json().values()), self.ca_key) if p.exists()]


def add_parsers(sub) -> None:
    auth = sub.add_parser("auth", help="security material for a fleet").add_subparsers(dest="auth_cmd", required=True)
    s = auth.add_parser("init", help="write a local CA, a certificate for localhost (server and client), a token "
                                     "issuer key pair and an admin token into DIR")
    s.add_argument("dir")
    s.add_argument("--san", default="", help="more names or IPs for the certificate, comma-separated "
                                             "(e.g. store,worker-0,router for docker-compose)")
    s.add_argument("--rotate-cert", action="store_true",
                   help="keep DIR's CA and issuer; issue a new certificate and key in place (services reload them)")
    s.add_argument("--force", action="store_true", help="replace all of DIR's material (a new CA and issuer: "
                                                        "every certificate and token made before stops working)")
    s.add_argument("--if-missing", action="store_true",
                   help="when DIR already holds complete material, keep it and exit 0 (for init jobs)")
    s.add_argument("--json", action="store_true", help="print the paths as one JSON object")

    token = sub.add_parser("token", help="tokens for callers and services").add_subparsers(dest="token_cmd",
                                                                                          required=True)
    s = token.add_parser("create", help="mint a token offline with the issuer's private key")
    s.add_argument("--key", required=True, help="the issuer's private key (issuer.key from `auth init`)")
    s.add_argument("--tenant", required=True, help="tenant(s) the token may act for, comma-separated; '*' for "
                                                   "service identities such as workers and routers")
    s.add_argument("--scopes", required=True, help=f"comma-separated, of {','.join(ALL_SCOPES)}")
    s.add_argument("--ttl", default="24h", help="lifetime: 3600, 90s, 30m, 24h, 7d")
    s.add_argument("--worker-id", default="", help="with the worker scope: the one worker id the token may "
                                                   "announce as (the worker takes it from its token)")
    s.add_argument("--json", action="store_true", help="print {token, id, expires}; default: the token alone")


def parse_ttl(text: str) -> float:
    m = _TTL.match(text)
    if not m or float(m.group(1)) <= 0:
        raise InvalidArgument(f"--ttl {text!r} is not a duration: write e.g. 3600, 90s, 30m, 24h or 7d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def split_list(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InvalidArgument(f"{flag} is empty: give at least one value")
    return items


def run(args) -> int:
    if args.command == "auth":
        m = Material(Path(args.dir))
        kept = args.if_missing and not (args.rotate_cert or args.force) and m.complete()
        if not kept:
            m = init(Path(args.dir), sans=split_list(args.san, "--san") if args.san.strip() else [],
                     rotate_cert=args.rotate_cert, force=args.force)
        if args.json:
            print(json.dumps(m.as_json(), sort_keys=True))
        else:
            verb = "kept the material in" if kept else "issued a new certificate in" if args.rotate_cert else "wrote"
            print(f"{verb} {m.dir}: CA {m.ca.name}, certificate {m.cert.name} + {m.key.name}, issuer "
                  f"{m.issuer_key.name} (public {m.issuer_public_key.name}), admin token {m.admin_token_file.name}")
        return 0
    scopes = split_list(args.scopes, "--scopes")
    if "worker" in scopes and not args.worker_id:
        raise InvalidArgument("--scopes worker needs --worker-id ID: a worker token may announce that worker only")
    minted = mint(Path(args.key), split_list(args.tenant, "--tenant"), scopes, parse_ttl(args.ttl),
                  worker_id=args.worker_id or None)
    if args.json:
        print(json.dumps({"token": minted.token, "id": minted.id, "expires": minted.expires}, sort_keys=True))
    else:
        print(minted.token)
    return 0


def mint(issuer_key: Path, tenants: list[str], scopes: list[str], ttl_s: float, worker_id: str | None = None):
    from adapterfleet.common.tokens import mint_token  # noqa: PLC0415 - PyJWT only for this command

    if not issuer_key.is_file():
        raise InvalidArgument(f"--key {issuer_key}: no such file; `adapterfleet auth init DIR` writes DIR/issuer.key")
    return mint_token(issuer_key, tenants, scopes, ttl_s, worker_id=worker_id)


def init(directory: Path, sans: Sequence[str] = (), rotate_cert: bool = False, force: bool = False,
         admin_ttl_s: float = ADMIN_TTL_S) -> Material:
    """Write (or with ``rotate_cert`` renew the certificate of) the material under ``directory``."""
    m = Material(directory)
    if rotate_cert:
        if not (m.ca.is_file() and m.ca_key.is_file()):
            raise FailedPrecondition(f"{directory} has no CA to sign with (ca.crt, ca.key): run "
                                     f"`adapterfleet auth init {directory}` first")
        issue_cert(m, sans)
        return m
    if m.present() and not force:
        held = ", ".join(p.name for p in m.present())
        raise FailedPrecondition(f"{directory} already holds security material ({held}): reuse it, renew the "
                                 "certificate with --rotate-cert, or replace everything with "
                                 "--force (certificates and tokens made from the old CA and issuer stop working)")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    make_ca(m)
    issue_cert(m, sans)
    from adapterfleet.common.tokens import generate_issuer_keypair  # noqa: PLC0415 - PyJWT only for this command

    generate_issuer_keypair(m.issuer_key, m.issuer_public_key)
    os.chmod(m.issuer_key, 0o600)
    write_admin_token(m, admin_ttl_s)
    return m


def write_admin_token(m: Material, ttl_s: float = ADMIN_TTL_S) -> None:
    """An all-tenants token for the fleet's operator: every scope but ``worker``."""
    minted = mint(m.issuer_key, ["*"], ADMIN_SCOPES, ttl_s)
    _write(m.admin_token_file, (minted.token + "\n").encode(), secret=True)


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    """Atomically: a service reloading the file sees the old bytes or the new ones, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(m: Material) -> None:
    from cryptography import x509  # noqa: PLC0415 - cryptography only for this command
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - as above
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - as above
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - as above

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adapterfleet local CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(m.ca_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), secret=True)
    _write(m.ca, cert.public_bytes(serialization.Encoding.PEM))


def issue_cert(m: Material, sans: Sequence[str] = ()) -> int:
    """A new key and certificate (server and client auth) signed by the CA; returns its serial number. The key
    is written first, then the certificate: services reload once the pair matches."""
    from cryptography import x509  # noqa: PLC0415 - cryptography only for this command
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - as above
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - as above
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415 - as above

    ca_cert = x509.load_pem_x509_certificate(m.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(m.ca_key.read_bytes(), password=None)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adapterfleet")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    _write(m.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()), secret=True)
    _write(m.cert, cert.public_bytes(serialization.Encoding.PEM))
    return serial


def ensure(directory: Path) -> Material:
    """For `up` and `demo`: the material under ``directory``, created on first run and reused after; an admin
    token that expired or is missing is minted again."""
    m = Material(directory)
    if not m.complete():
        if m.present():
            raise FailedPrecondition(f"{directory} holds part of a fleet's security material "
                                     f"({', '.join(p.name for p in m.present())}): complete it with "
                                     f"`adapterfleet auth init {directory} --force` (new CA and issuer)")
        return init(directory)
    if _expires(m.admin_token_file.read_text().strip()) < time.time() + 86400:
        write_admin_token(m)
    return m


def _expires(token: str) -> float:
    """A token's ``exp`` as its issuer wrote it (not verified: only to tell when to mint a fresh one); 0 when the
    file does not hold a JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims.get("exp", 0))
    except (IndexError, ValueError, TypeError, AttributeError):
        return 0.0


