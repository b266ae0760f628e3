"""Fixtures of the token tests: one issuer key pair per session, and tokens minted from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from adapterfleet.common.auth_config import AuthConfig, TenantLimits
from adapterfleet.common.security_config import ClientSecurity
from adapterfleet.common.tokens import generate_issuer_keypair, mint_token


@dataclass
class Issuer:
    key: Path
    public: Path

    def token(self, tenants, scopes, ttl_s: float = 600.0, **kw) -> str:
        return mint_token(self.key, list(tenants), list(scopes), ttl_s, **kw).token

    def security(self, tenants, scopes, **kw) -> ClientSecurity:
        return ClientSecurity(token=self.token(tenants, scopes, **kw))

    def auth(self, limits: TenantLimits | None = None) -> AuthConfig:
        return AuthConfig(public_keys=(self.public,), limits=limits or TenantLimits())


@pytest.fixture(scope="session")
def issuer(tmp_path_factory) -> Issuer:
    root = tmp_path_factory.mktemp("issuer")
    generate_issuer_keypair(root / "issuer.key", root / "issuer.pub")
    return Issuer(root / "issuer.key", root / "issuer.pub")
