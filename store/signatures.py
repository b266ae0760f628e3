"""The shape of an adapter signature: an OpenSSF Model Signing bundle (a Sigstore bundle, JSON) whose DSSE envelope
carries an in-toto statement listing every signed file with its sha256. Pure JSON, no cryptography.

The store checks a pushed signature with this before storing it beside the version (bounded, well formed, and
listing exactly the version's files with the same sha256: an attestation over *these* bytes). It proves nothing
about who signed: workers and the SDK verify the signature itself against their trusted keys
(``adapterfleet.common.signing``), and compare what it covers with what they fetched using the same parser.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from adapterfleet.common.errors import InvalidArgument

MAX_SIGNATURE_BYTES = 64 << 10  # a key-signed bundle over a few files is ~2 KiB
BUNDLE_MEDIA_TYPES = ("application/vnd.dev.sigstore.bundle.v0.3+json",)
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPES = ("https://model_signing/signature/v1.0",)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"the signature's {what} is not a JSON object; sign with `adapterfleet push --sign-key`")
    return value


def parse_bundle(text: str) -> dict[str, Any]:
    """The bundle as a dict, bounded and well formed (InvalidArgument naming what is wrong)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SIGNATURE_BYTES:
        raise InvalidArgument(f"the signature is more than {MAX_SIGNATURE_BYTES} bytes; an OpenSSF Model Signing "
                              "bundle over an adapter's files is a few KiB")
    try:
        bundle = _obj(json.loads(text), "bundle")
    except ValueError as err:
        raise InvalidArgument(f"the signature is not JSON ({err}); it must be an OpenSSF Model Signing bundle") \
            from None
    if bundle.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise InvalidArgument(f"the signature's mediaType {str(bundle.get('mediaType'))[:80]!r} is not one of "
                              f"{list(BUNDLE_MEDIA_TYPES)}: sign with model-signing's key-based signer")
    envelope = _obj(bundle.get("dsseEnvelope"), "dsseEnvelope")
    if envelope.get("payloadType") != IN_TOTO_PAYLOAD_TYPE:
        raise InvalidArgument(f"the signature's payloadType is not {IN_TOTO_PAYLOAD_TYPE}")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
        raise InvalidArgument("the signature's envelope must carry exactly one signature")
    return bundle


def signed_files(text: str) -> dict[str, str]:
    """File name -> sha256 hex that the bundle's statement lists (unverified: who signed is not checked here)."""
    envelope = parse_bundle(text)["dsseEnvelope"]
    try:
        statement = _obj(json.loads(base64.b64decode(envelope.get("payload", ""), validate=True)), "statement")
    except (ValueError, binascii.Error, TypeError) as err:
        raise InvalidArgument(f"the signature's payload is not base64 JSON ({err})") from None
    return statement_files(statement)


def statement_files(statement: Mapping[str, Any]) -> dict[str, str]:
    """File name -> sha256 hex from an in-toto statement of OpenSSF Model Signing (file serialization, sha256)."""
    if statement.get("predicateType") not in PREDICATE_TYPES:
        raise InvalidArgument(f"the signature's predicateType {str(statement.get('predicateType'))[:80]!r} is not "
                              f"one of {list(PREDICATE_TYPES)}")
    predicate = _obj(statement.get("predicate"), "predicate")
    serialization = _obj(predicate.get("serialization"), "serialization")
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        raise InvalidArgument("the signature must hash whole files with sha256 (model-signing's file serialization, "
                              "as `adapterfleet push --sign-key` makes it); shards or other hashes are not accepted")
    resources = predicate.get("resources")
    if not isinstance(resources, list):
        raise InvalidArgument("the signature lists no resources")
    out: dict[str, str] = {}
    for r in resources:
        r = _obj(r, "resource")
        name, digest = r.get("name"), r.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str) or r.get("algorithm") != "sha256":
            raise InvalidArgument("every resource of the signature needs a name and a sha256 digest")
        if name in out:
            raise InvalidArgument(f"the signature lists {name[:80]!r} twice")
        out[name] = digest.lower()
    return out


def coverage_problem(covered: Mapping[str, str], files: Mapping[str, str]) -> str:
    """'' when ``covered`` (name -> sha256) is exactly ``files``; else what differs, in a few words."""
    if dict(covered) == dict(files):
        return ""
    parts = []
    if missing := sorted(set(files) - set(covered)):
        parts.append(f"not {', '.join(missing)}")
    if extra := sorted(set(covered) - set(files)):
        parts.append(f"also {', '.join(n[:80] for n in extra[:5])}")
    if changed := sorted(n for n in set(covered) & set(files) if covered[n] != files[n]):
        parts.append(f"other bytes of {', '.join(changed)}")
    return "; ".join(parts)


def check_signature_for(text: str, files: Mapping[str, str]) -> None:
    """The push-time check: a well-formed bundle that lists exactly ``files`` (name -> sha256)."""
    problem = coverage_problem(signed_files(text), files)
    if problem:
        raise InvalidArgument(f"the signature covers other files than this push ({problem}); sign the directory "
                              "you push, after its last change")
