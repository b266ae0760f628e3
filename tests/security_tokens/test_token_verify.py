"""Tokens as the services see them: minted offline, verified locally with the issuer's public keys."""

from __future__ import annotations

import jwt
import pytest

from adapterfleet.common.errors import InvalidArgument, RateLimited, ResourceExhausted, Unauthenticated
from adapterfleet.common.limits import TenantLimiter, TenantLimits
from adapterfleet.common.tokens import TokenVerifier, generate_issuer_keypair, mint_token, worker_id_of


def test_a_minted_token_verifies_with_its_claims(issuer):
    minted = mint_token(issuer.key, ["acme"], ["read", "serve"], 60, subject="ci")
    identity = TokenVerifier([issuer.public]).verify(minted.token)
    assert identity.tenants == ("acme",) and identity.scopes == {"read", "serve"}
    assert identity.token_id == minted.id and identity.expires == pytest.approx(minted.expires)
    assert identity.subject == "ci" and identity.worker_id is None
    assert identity.has_tenant("acme") and not identity.has_tenant("beta") and not identity.service
    assert jwt.get_unverified_header(minted.token)["alg"] == "EdDSA"


def test_rotation_accepts_either_key_and_refuses_a_stranger(issuer, tmp_path):
    generate_issuer_keypair(tmp_path / "new.key", tmp_path / "new.pub")
    generate_issuer_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    both = TokenVerifier([issuer.public, tmp_path / "new.pub"])
    assert both.verify(issuer.token(["a"], ["read"])).tenants == ("a",)
    assert both.verify(mint_token(tmp_path / "new.key", ["b"], ["read"], 60).token).tenants == ("b",)
    with pytest.raises(Unauthenticated, match="not signed by an issuer this service trusts"):
        both.verify(mint_token(tmp_path / "other.key", ["a"], ["read"], 60).token)


def test_expired_tampered_and_garbage_tokens_are_refused(issuer):
    verifier = TokenVerifier([issuer.public], leeway_s=0)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(issuer.token(["a"], ["read"], ttl_s=-5))
    header, _payload, sig = issuer.token(["a"], ["read"]).split(".")
    forged_payload = jwt.utils.base64url_encode(b'{"tenants":["*"],"scopes":["admin"],"jti":"x","iat":1,'
                                                b'"exp":9999999999,"aud":"adapterfleet"}').decode()
    with pytest.raises(Unauthenticated):
        verifier.verify(f"{header}.{forged_payload}.{sig}")
    with pytest.raises(Unauthenticated, match="not a JWT"):
        verifier.verify("hello")
    unsigned = jwt.encode({"tenants": ["*"], "scopes": ["admin"], "jti": "x", "iat": 1, "exp": 9999999999,
                           "aud": "adapterfleet"}, key=None, algorithm="none")
    with pytest.raises(Unauthenticated):
        verifier.verify(unsigned)


def test_a_cached_token_still_expires(issuer):
    now = [1000.0]
    verifier = TokenVerifier([issuer.public], leeway_s=0, clock=lambda: now[0])
    token = mint_token(issuer.key, ["a"], ["read"], 10, now=1000.0).token
    assert verifier.verify(token).tenants == ("a",)
    now[0] = 1011.0
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_minting_checks_its_claims(issuer):
    with pytest.raises(InvalidArgument, match="unknown scopes"):
        mint_token(issuer.key, ["a"], ["root"], 60)
    with pytest.raises(InvalidArgument, match="tenants"):
        mint_token(issuer.key, [], ["read"], 60)
    with pytest.raises(InvalidArgument, match="worker_id"):
        mint_token(issuer.key, ["*"], ["read", "worker"], 60)
    token = mint_token(issuer.key, ["*"], ["read", "worker"], 60, worker_id="w-1").token
    assert worker_id_of(token) == "w-1" and worker_id_of(issuer.token(["a"], ["read"])) is None


def test_rate_limit_bucket_refuses_with_a_retry_hint():
    now = [0.0]
    limiter = TenantLimiter(TenantLimits(requests_per_s=2, burst=2), clock=lambda: now[0])
    limiter.admit("acme")
    limiter.admit("acme")
    with pytest.raises(RateLimited) as err:
        limiter.admit("acme")
    assert err.value.code == "RESOURCE_EXHAUSTED" and "retry in 0.5s" in err.value.message
    assert dict(err.value.trailing_metadata()) == {"retry-after-ms": "500"}
    limiter.admit("beta")  # another tenant has its own bucket
    now[0] = 0.5
    limiter.admit("acme")


def test_stream_and_push_limits():
    limiter = TenantLimiter(TenantLimits(max_streams=1, max_push_bytes=100, pushes_per_min=60))
    with limiter.stream("acme"):
        with pytest.raises(RateLimited, match="streams open"), limiter.stream("acme"):
            pass
        with limiter.stream("beta"):
            pass
    with limiter.stream("acme"):  # released
        pass
    with pytest.raises(ResourceExhausted, match="more than tenant 'acme'"):
        limiter.push("acme", 101)
    limiter.push("acme", 100)
