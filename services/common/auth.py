"""Who may do what: the scope model, the server interceptor that authenticates every call locally, and the checks
the servicers make.

Scopes (a token carries a subset; see tokens.py):

=========  =====================================================================================================
``read``   store: Resolve, Fetch, ListAdapters, ListVersions, Watch (on its tenants' adapters; lists and events
           are filtered to them)
``push``   store: Push (its tenants' names), MissingBlobs
``admin``  store: SetAlias, DeleteAlias, YankVersion (its tenants); CollectGarbage and RevokeToken (service
           identities only); worker: UnloadAdapter, Pin (its tenants), Stats, ListResident (service identities);
           router: Stats (service identities)
``serve``  worker and router: Generate, Score, LoadAdapter (its tenants' adapters; no adapter: the base model);
           store: Resolve (what a serving caller needs)
``worker`` registry: Announce, only for the ``worker_id`` bound in the token
=========  =====================================================================================================

A tenant is the prefix of ``tenant/name``; a name without one belongs to no tenant, so only service identities
(tenant ``*``) reach it. Registry ListWorkers and the store's revocation list are for service identities.
Health checks need no token (probes). Auth is off in a service started without ``--auth-public-key``: then no
check here refuses anything (the CLI refuses to start such a service unless ``--insecure``).

The interceptor verifies the bearer token (no round trip: the issuer's public keys, cached per token), refuses
revoked token ids, applies the tenant's limits, and puts the Identity and the raw token in context variables for
the servicer's checks and for a router forwarding its caller's token.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from contextvars import ContextVar

import grpc

from adapterfleet.common.auth_config import AuthConfig
from adapterfleet.common.channel import AUTHORIZATION_HEADER
from adapterfleet.common.errors import PermissionDenied, Unauthenticated
from adapterfleet.common.interceptors import rewrap
from adapterfleet.common.limits import TenantLimiter
from adapterfleet.common.tokens import ANY_TENANT, Identity, TokenVerifier

READ, PUSH, ADMIN, SERVE, WORKER = "read", "push", "admin", "serve", "worker"
SCOPES_ANY = (READ, PUSH, ADMIN, SERVE, WORKER)
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # probes need no token

_identity: ContextVar[Identity | None] = ContextVar("adapterfleet_identity", default=None)
_token: ContextVar[str | None] = ContextVar("adapterfleet_token", default=None)


class Revocations:
    """Token ids refused although validly signed (revoked by an admin; followed from the store's events)."""

    def __init__(self, ids: Iterable[str] = ()):
        self._ids: set[str] = set(ids)

    def add(self, *ids: str) -> None:
        self._ids.update(i for i in ids if i)

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


# --- the caller, as the interceptor found it --------------------------------------------------------------------
def current() -> Identity | None:
    """The caller's identity; None when this service runs without auth."""
    return _identity.get()


def caller_token() -> str | None:
    """The caller's raw bearer token (a router forwards it to workers)."""
    return _token.get()


def forward_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the caller's token on to the next hop (nothing when auth is off)."""
    token = _token.get()
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),) if token else ()


@contextlib.contextmanager
def acting_as(identity: Identity | None, token: str | None = None):
    """Run a block as ``identity`` (the HTTP gateway, which authenticates outside gRPC)."""
    ident, tok = _identity.set(identity), _token.set(token)
    try:
        yield
    finally:
        _identity.reset(ident)
        _token.reset(tok)


# --- the checks servicers make ------------------------------------------------------------------------------------
def tenant_of(name: str) -> str:
    """``acme/summarize`` -> ``acme``; a name without a tenant -> "" (service identities only)."""
    return name.split("/", 1)[0] if "/" in name else ""


def ref_name(ref: str) -> str | None:
    """The adapter name a ref or key names (``acme/sum@prod`` -> ``acme/sum``); None for "" (the base model).
    The domain validates the ref afterwards; the name checked here is the very string it will use."""
    return ref.split("@", 1)[0] if ref else None


def _who(identity: Identity) -> str:
    return f"token {identity.token_id} ({identity.subject})"


def require(scopes: str | tuple[str, ...], what: str, name: str | None = None) -> None:
    """Refuse (PERMISSION_DENIED) unless the caller has one of ``scopes`` and, with ``name``, its tenant."""
    identity = _identity.get()
    if identity is None:
        return
    wanted = (scopes,) if isinstance(scopes, str) else scopes
    if not identity.scopes.intersection(wanted):
        raise PermissionDenied(f"{_who(identity)} has scopes {sorted(identity.scopes)}; {what} needs "
                               f"{' or '.join(repr(s) for s in wanted)}: ask for a token with it")
    if name is not None and not identity.has_tenant(tenant_of(name)):
        tenant = tenant_of(name)
        raise PermissionDenied(f"{_who(identity)} is for tenant(s) {', '.join(identity.tenants)}; {name} belongs to "
                               + (f"tenant {tenant!r}" if tenant else "no tenant (service identities only)")
                               + f", so {what} is not allowed")


def require_service(scopes: str | tuple[str, ...], what: str) -> None:
    """Refuse unless the caller is a service identity (tenant ``*``) with one of ``scopes``: fleet-wide calls."""
    require(scopes, what)
    identity = _identity.get()
    if identity is not None and not identity.service:
        raise PermissionDenied(f"{what} acts on every tenant: it needs a service identity (a token for tenant "
                               f"'*'); {_who(identity)} is for {', '.join(identity.tenants)}")


def require_worker(worker_id: str) -> None:
    """Announce: a ``worker``-scoped identity, for the worker id bound in its token only."""
    require(WORKER, "announcing a worker")
    identity = _identity.get()
    if identity is not None and identity.worker_id != worker_id:
        raise PermissionDenied(f"{_who(identity)} may announce worker {identity.worker_id!r} only, not "
                               f"{worker_id!r}: each worker announces itself with its own token")


def visible(name: str) -> bool:
    """Whether the caller may see adapter ``name`` (lists and events are filtered by this)."""
    identity = _identity.get()
    return identity is None or identity.has_tenant(tenant_of(name))


def is_service() -> bool:
    identity = _identity.get()
    return identity is None or identity.service


def announced_by() -> str:
    """What a registry record is attributed to: the announcing token's id ("" when auth is off)."""
    identity = _identity.get()
    return identity.token_id if identity is not None else ""


def tenant_key(identity: Identity) -> str | None:
    """Which tenant's limits a call counts against; None for service identities (not limited)."""
    return None if ANY_TENANT in identity.tenants else ",".join(sorted(identity.tenants))


# --- the interceptor ---------------------------------------------------------------------------------------------
def bearer_token(metadata) -> str | None:
    """The token of an ``authorization: Bearer ...`` header, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_HEADER:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization header must be `Bearer <token>`")
            return token.strip()
    return None


class Authenticator:
    """Token -> Identity, revocations included (shared by the gRPC interceptor and the HTTP gateway)."""

    def __init__(self, cfg: AuthConfig, revocations: Revocations | None = None):
        self.verifier = TokenVerifier(cfg.public_keys, leeway_s=cfg.leeway_s)
        self.revocations = revocations if revocations is not None else Revocations()
        self.limiter = TenantLimiter(cfg.limits)
        self.refused = 0

    def authenticate(self, token: str | None) -> Identity:
        if token is None:
            self.refused += 1
            raise Unauthenticated("this service requires a token: send `authorization: Bearer <token>` (`--token` "
                                  "or ADAPTERFLEET_TOKEN; SDK `token=`); `adapterfleet token create` makes one")
        try:
            identity = self.verifier.verify(token)
        except Unauthenticated:
            self.refused += 1
            raise
        if identity.token_id in self.revocations:
            self.refused += 1
            raise Unauthenticated(f"token {identity.token_id} was revoked; get a new one (`adapterfleet token "
                                  "create`)")
        return identity


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call but health checks; see the module's docstring."""

    def __init__(self, authenticator: Authenticator):
        self.auth = authenticator

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        streaming = bool(handler.request_streaming or handler.response_streaming)
        return rewrap(handler, functools.partial(self._unary, streaming),
                      functools.partial(self._stream, streaming), details.method)

    def _enter(self, context) -> tuple[Identity, str | None]:
        token = bearer_token(context.invocation_metadata())
        identity = self.auth.authenticate(token)
        tenant = tenant_key(identity)
        if tenant is not None:
            self.auth.limiter.admit(tenant)
        _identity.set(identity)  # every call runs in a task of its own: the values end with it
        _token.set(token)
        return identity, tenant

    def _unary(self, streaming: bool, fn, method):
        async def handler(request, context):
            _, tenant = self._enter(context)
            if streaming and tenant is not None:  # a client stream (Push)
                with self.auth.limiter.stream(tenant):
                    return await fn(request, context)
            return await fn(request, context)

        return handler

    def _stream(self, streaming: bool, fn, method):
        async def handler(request, context):
            _, tenant = self._enter(context)
            with contextlib.ExitStack() as stack:
                if tenant is not None:
                    stack.enter_context(self.auth.limiter.stream(tenant))
                async for item in fn(request, context):
                    yield item

        return handler


def server_interceptors(authenticator: Authenticator | None) -> list[grpc.aio.ServerInterceptor]:
    """What a service passes to ``create_server(interceptors=...)``: nothing when auth is off."""
    return [AuthInterceptor(authenticator)] if authenticator is not None else []


def make_authenticator(cfg: AuthConfig, revocations: Revocations | None = None) -> Authenticator | None:
    return Authenticator(cfg, revocations) if cfg.enabled else None
