"""Signed adapters, OpenSSF Model Signing format with the ``model-signing`` package, elliptic-curve keys.

``sign_dir`` signs exactly the files a push sends (the rest of the directory is listed as ignored), giving the
bundle as JSON text: the store keeps it beside the version (not in its digest). ``TrustPolicy`` is what a worker
(``--trust-key``) or the SDK (``from_store(trust_key=...)``) checks before anything is installed: the version is
signed, the signature verifies with one of the keys trusted for the adapter's tenant, and what it covers is
exactly the files, by sha256 computed over the very bytes that were fetched. Each refusal is SignatureRejected
(FAILED_PRECONDITION) naming the reason: unsigned / does not verify with any trusted key / covers other files.

Keys are PEM: a private EC key (P-256, P-384 or P-521) to sign, its public key to trust. ``model-signing`` is only
imported when signing or when a policy is built (``pip install 'adapterfleet[signing]'``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterfleet.common.errors import InvalidArgument, SignatureRejected
from adapterfleet.common.extras import require
from adapterfleet.store.refs import AdapterKey
from adapterfleet.store.signatures import coverage_problem, parse_bundle

SIGNING = "adapterfleet.signing"  # the key of common.extras.NEEDS for everything here


def sign_dir(directory: str | os.PathLike, files: Sequence[str], private_key: str | os.PathLike,
             password: str | None = None) -> str:
    """An OpenSSF Model Signing bundle (JSON text) over ``files`` of ``directory`` (sha256 per file)."""
    require(SIGNING)
    from model_signing import hashing, signing  # noqa: PLC0415 - optional extra, imported only to sign

    directory = Path(directory)
    ignored = sorted(p.name for p in directory.iterdir() if p.name not in set(files))
    config = hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
    config.set_ignored_paths(paths=ignored, ignore_git_paths=True)
    try:
        signer = signing.Config().use_elliptic_key_signer(private_key=Path(private_key), password=password)
    except (ValueError, TypeError, OSError) as err:
        raise InvalidArgument(f"cannot sign with {private_key}: {err}; --sign-key takes a PEM elliptic-curve "
                              "private key (P-256, P-384 or P-521), e.g. `openssl ecparam -name prime256v1 "
                              "-genkey -noout -out sign.pem`") from None
    with tempfile.TemporaryDirectory(prefix="adapterfleet-sign-") as tmp:
        out = Path(tmp) / "signature.json"
        signer.set_hashing_config(config).sign(directory, out)
        return out.read_text()


@dataclass(frozen=True)
class TrustedKey:
    path: str
    verifier: Any = field(repr=False, compare=False)  # model_signing's EC-key verifier, built once


@dataclass(frozen=True)
class TrustPolicy:
    """Keys trusted for every tenant, and per tenant (the ``tenant`` of ``tenant/name``). Empty: no checks.

    Once any key is configured every adapter must be signed: an adapter of a tenant with no trusted key (none for
    all tenants, none of its own) is refused, not waved through."""

    everyone: tuple[TrustedKey, ...] = ()
    tenants: Mapping[str, tuple[TrustedKey, ...]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.everyone or self.tenants)

    @classmethod
    def from_specs(cls, specs: Sequence[str]) -> TrustPolicy:
        """From ``--trust-key`` values: ``PEM`` (every tenant) or ``TENANT=PEM``; keys are read and checked now."""
        if not specs:
            return cls()
        require(SIGNING)
        everyone: list[TrustedKey] = []
        tenants: dict[str, list[TrustedKey]] = {}
        for spec in specs:
            tenant, sep, path = spec.partition("=")
            if not sep:
                tenant, path = "", spec
            elif not tenant or "/" in tenant:
                raise InvalidArgument(f"--trust-key {spec!r}: give PEM or TENANT=PEM (a tenant is the part of "
                                      "'tenant/name' before the slash)")
            key = TrustedKey(path, _verifier(path))
            (tenants.setdefault(tenant, []) if tenant else everyone).append(key)
        return cls(tuple(everyone), {t: tuple(k) for t, k in tenants.items()})

    def keys_for(self, name: str) -> tuple[TrustedKey, ...]:
        tenant = name.split("/", 1)[0] if "/" in name else ""
        return self.everyone + self.tenants.get(tenant, ())

    def verify(self, key: AdapterKey | str, signature: str, files: Mapping[str, str]) -> str:
        """Check ``signature`` over ``files`` (name -> sha256 of the bytes held); the trusted key's path, or
        SignatureRejected. A disabled policy accepts anything ('')."""
        if not self.enabled:
            return ""
        key = AdapterKey.parse(key) if isinstance(key, str) else key
        trusted = self.keys_for(key.name)
        tenant = key.name.split("/", 1)[0] if "/" in key.name else ""
        if not trusted:
            raise SignatureRejected(f"{key}: no key is trusted for tenant {tenant or '(none)'!r}; add --trust-key "
                                    f"{tenant or 'TENANT'}=PEM (or a key for every tenant) to serve its adapters")
        if not signature:
            raise SignatureRejected(f"{key} is unsigned, and only adapters signed by a trusted key are installed "
                                    "here; push a signed version (`adapterfleet push DIR --sign-key PEM`)")
        try:
            bundle = parse_bundle(signature)
        except InvalidArgument as err:
            raise SignatureRejected(f"{key}: the signature does not verify with any trusted key: it is malformed "
                                    f"({err.message})") from None
        covered: dict[str, str] | None = None
        for candidate in trusted:
            covered = _verified_files(candidate, bundle)
            if covered is not None:
                break
        else:
            raise SignatureRejected(
                f"{key}: the signature does not verify with any trusted key ({len(trusted)} trusted for tenant "
                f"{tenant or '(none)'!r}); it was signed with another key, or altered. Re-sign with a trusted key "
                "and push again, or trust the signer's public key")
        if problem := coverage_problem(covered, files):
            raise SignatureRejected(f"{key}: the signature covers other files than the version's ({problem}); it "
                                    "was made for other bytes: re-sign the adapter directory and push again")
        return candidate.path


def _verifier(path: str) -> Any:
    from model_signing._signing import sign_ec_key  # noqa: PLC0415 - optional extra; the EC-key verifier

    try:
        return sign_ec_key.Verifier(Path(path))
    except (ValueError, TypeError, OSError) as err:
        raise InvalidArgument(f"--trust-key {path}: {err}; give the PEM public key (P-256, P-384 or P-521) of a "
                              "signer, e.g. `openssl ec -in sign.pem -pubout -out trust.pem`") from None


def _verified_files(key: TrustedKey, bundle: dict[str, Any]) -> dict[str, str] | None:
    """File name -> sha256 hex that the bundle signs, if ``key`` verifies it; else None. model-signing does the
    work: key hint, DSSE pre-authentication encoding, ECDSA, the in-toto statement and its root digest."""
    from model_signing._signing import sign_sigstore_pb  # noqa: PLC0415 - optional extra
    from sigstore_models.bundle import v1 as bundle_pb  # noqa: PLC0415 - model-signing's bundle type

    try:
        signed = key.verifier.verify(sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(_normalized(bundle))))
    except Exception:  # noqa: BLE001 - any failure with this key (wrong key, altered, malformed) is "not this one"
        return None
    params = signed.serialization_type
    if params.get("method") != "files" or params.get("hash_type") != "sha256":
        return {}  # verified, but not per-file sha256: covers nothing we can compare ("covers other files")
    return {rd.identifier: rd.digest.digest_hex for rd in signed.resource_descriptors()}


def _normalized(bundle: dict[str, Any]) -> dict[str, Any]:
    """What model-signing's own reader does to a bundle before parsing it (older bundles lack these fields)."""
    data = json.loads(json.dumps(bundle))
    material = data.setdefault("verificationMaterial", {})
    material.setdefault("tlogEntries", [])
    public_key = material.get("publicKey")
    if isinstance(public_key, dict):
        public_key.setdefault("hint", None)
        for k in ("rawBytes", "keyDetails"):
            public_key.pop(k, None)
    return data
