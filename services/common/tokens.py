"""Signed bearer tokens: the issuer's key pair, minting (offline, `adapterfleet token create`) and local verification
(every service, no round trip).

A token is a JWT signed with EdDSA (Ed25519; ES256 with a P-256 key works too) carrying::

    sub        who it was made for (free text, for logs)
    tenants    ["acme"] or ["*"] (service identities: workers, routers)
    scopes     a subset of SCOPES
    jti        the token id (what revocation names)
    iat, exp   issued at / expires, unix seconds
    worker_id  only in worker tokens: the one worker id it may announce as
    aud        "adapterfleet"

Verification takes several public keys (rotation: old and new issuer keys side by side) and is cached per token
string, so a service pays for one signature check per token, not per call.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from adapterfleet.common.errors import InvalidArgument, Unauthenticated

SCOPES = ("read", "push", "admin", "serve", "worker")
ANY_TENANT = "*"
AUDIENCE = "adapterfleet"
MAX_TOKEN_CHARS = 8192  # a bearer header longer than this is refused before it is parsed
_ALGORITHMS = ("EdDSA", "ES256")


@dataclass(frozen=True)
class MintedToken:
    token: str
    id: str
    expires: float  # unix seconds


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is."""

    subject: str
    tenants: tuple[str, ...]
    scopes: frozenset[str]
    token_id: str
    expires: float
    worker_id: str | None = None

    @property
    def service(self) -> bool:
        """A service identity (tenant ``*``): may act on every tenant its scopes allow."""
        return ANY_TENANT in self.tenants

    def has_tenant(self, tenant: str) -> bool:
        return self.service or tenant in self.tenants


def _key_id(public_key) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _algorithm(key) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256"
    raise InvalidArgument(f"unsupported issuer key type {type(key).__name__}: use an Ed25519 key (`adapterfleet "
                          "auth init` makes one) or an EC P-256 key")


def generate_issuer_keypair(private: Path, public: Path) -> None:
    """Write a new Ed25519 issuer key pair as PEM: ``private`` (PKCS#8, mode 0600) and ``public`` (SPKI)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private.parent.mkdir(parents=True, exist_ok=True)
    public.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private.touch(mode=0o600, exist_ok=True)
    private.chmod(0o600)
    private.write_bytes(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def _check_claims(tenants: Sequence[str], scopes: Sequence[str]) -> None:
    if not tenants or any(not isinstance(t, str) or not t or "/" in t for t in tenants):
        raise InvalidArgument(f"a token needs one or more tenants (names without '/', or '*' for a service "
                              f"identity); got {list(tenants)!r}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise InvalidArgument(f"unknown scopes {unknown!r}: choose from {', '.join(SCOPES)}" if unknown else
                              f"a token needs at least one scope: {', '.join(SCOPES)}")


def mint_token(issuer_key: Path, tenants: list[str], scopes: list[str], ttl_s: float, *, subject: str = "",
               worker_id: str | None = None, now: float | None = None) -> MintedToken:
    """Sign a token with the issuer's private key (PEM). A ``worker``-scoped token should name its ``worker_id``:
    the registry accepts announcements from it for that id only."""
    _check_claims(tenants, scopes)
    if "worker" in scopes and not worker_id:
        raise InvalidArgument("a token with the `worker` scope must name the worker it is for (worker_id): the "
                              "registry lets it announce that worker id only")
    key = serialization.load_pem_private_key(Path(issuer_key).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"the issuer key {issuer_key} is a {type(key).__name__}: use the Ed25519 key that "
                              "`adapterfleet auth init` wrote (issuer.key), or an EC P-256 key")
    issued = time.time() if now is None else now
    token_id = secrets.token_hex(16)
    expires = issued + ttl_s
    claims: dict[str, object] = {"sub": subject or f"{','.join(tenants)}:{','.join(scopes)}",
                                 "tenants": list(tenants), "scopes": list(dict.fromkeys(scopes)), "jti": token_id,
                                 "iat": int(issued), "exp": expires, "aud": AUDIENCE}
    if worker_id:
        claims["worker_id"] = worker_id
    token = jwt.encode(claims, key, algorithm=_algorithm(key), headers={"kid": _key_id(key.public_key())})
    return MintedToken(token=token, id=token_id, expires=expires)


def worker_id_of(token: str | None) -> str | None:
    """The ``worker_id`` a token names, read without checking its signature (a worker learns its own id from its
    own token; the registry verifies it when the worker announces)."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    value = claims.get("worker_id")
    return value if isinstance(value, str) and value else None


class TokenVerifier:
    """Checks tokens against the issuer public keys (PEM files; several while keys rotate) locally."""

    def __init__(self, public_keys: Sequence[Path], *, leeway_s: float = 30.0, cache_size: int = 4096,
                 clock: Callable[[], float] = time.time):
        if not public_keys:
            raise InvalidArgument("token verification needs at least one issuer public key (--auth-public-key)")
        self._keys: dict[str, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey] = {}
        for path in public_keys:
            try:
                key = serialization.load_pem_public_key(Path(path).read_bytes())
            except (OSError, ValueError) as err:
                raise InvalidArgument(f"cannot read the issuer public key {path}: {err}; pass the PEM that "
                                      "`adapterfleet auth init` wrote as issuer_public_key") from err
            if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
                raise InvalidArgument(f"the issuer public key {path} is a {type(key).__name__}: use an Ed25519 "
                                      "(or EC P-256) public key")
            _algorithm(key)
            self._keys[_key_id(key)] = key
        self._leeway = leeway_s
        self._clock = clock
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str) -> Identity:
        """The token's identity, or Unauthenticated saying why it is refused."""
        identity = self._cache.get(token)
        if identity is None:
            identity = self._decode(token)
            self._cache[token] = identity
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(token)
        if identity.expires + self._leeway < self._clock():
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(identity.expires))
            raise Unauthenticated(f"token {identity.token_id} expired at {when}; get a new one (`adapterfleet "
                                  "token create`)")
        return identity

    def _decode(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters; is it a token?")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise Unauthenticated(f"the bearer token is not a JWT ({err}); send the token `adapterfleet token "
                                  "create` printed") from None
        keys = [self._keys[header["kid"]]] if header.get("kid") in self._keys else list(self._keys.values())
        last: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(token, key, algorithms=list(_ALGORITHMS), audience=AUDIENCE,
                                    options={"require": ["exp", "iat", "jti", "aud"], "verify_exp": False})
                break
            except jwt.InvalidSignatureError as err:
                last = err
            except jwt.PyJWTError as err:
                raise Unauthenticated(f"invalid token: {err}") from None
        else:
            raise Unauthenticated(f"invalid token: {last or 'no key'}; it was not signed by an issuer this service "
                                  "trusts (--auth-public-key)") from None
        return _identity(claims)


def _identity(claims: dict) -> Identity:
    tenants, scopes, worker_id = claims.get("tenants"), claims.get("scopes"), claims.get("worker_id")
    if not isinstance(tenants, list) or not isinstance(scopes, list) or not all(
            isinstance(x, str) for x in [*tenants, *scopes]):
        raise Unauthenticated("invalid token: `tenants` and `scopes` must be lists of strings")
    try:
        _check_claims(tenants, scopes)
    except InvalidArgument as err:
        raise Unauthenticated(f"invalid token: {err.message}") from None
    if worker_id is not None and not isinstance(worker_id, str):
        raise Unauthenticated("invalid token: `worker_id` must be a string")
    return Identity(subject=str(claims.get("sub", "")), tenants=tuple(tenants), scopes=frozenset(scopes),
                    token_id=str(claims["jti"]), expires=float(claims["exp"]), worker_id=worker_id or None)
