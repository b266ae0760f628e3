"""Adapter names, references and the canonical identity of a version.

    name            "summarizer" or "tenant/summarizer"
    ref             name | name@3 | name@prod | name@sha256:<hex>
    key (identity)  name@sha256:<hex>  -- one canonical key per version; router, cache and metrics use it
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapterfleet.common.errors import InvalidArgument

_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME_RE = re.compile(rf"^(?:{_SEGMENT}/)?{_SEGMENT}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
DIGEST_PREFIX = "sha256:"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid adapter name, else raise InvalidArgument saying the rule."""
    if not _NAME_RE.match(name or "") or ".." in name:
        raise InvalidArgument(
            f"invalid adapter name {name!r}: use 'name' or 'tenant/name' with lowercase letters, digits and "
            "'-_.' (each part starts with a letter or digit, at most 64 characters, no '..')"
        )
    return name


def validate_alias(alias: str) -> str:
    if not _ALIAS_RE.match(alias or "") or alias.startswith("sha256") or alias == "latest":
        raise InvalidArgument(
            f"invalid alias {alias!r}: aliases start with a lowercase letter and use lowercase letters, digits "
            "and '-_.' (at most 64 characters); 'latest' and names starting with 'sha256' are reserved"
        )
    return alias


def validate_hex_digest(hexdigest: str, what: str = "sha256") -> str:
    if not _HEX_RE.match(hexdigest or ""):
        raise InvalidArgument(f"invalid {what} {hexdigest!r}: expected 64 lowercase hex characters")
    return hexdigest


def parse_digest(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>'."""
    if not digest.startswith(DIGEST_PREFIX):
        raise InvalidArgument(f"invalid digest {digest!r}: expected 'sha256:<64 hex characters>'")
    return validate_hex_digest(digest[len(DIGEST_PREFIX):], "digest")


@dataclass(frozen=True)
class Ref:
    """A parsed reference. Exactly one of version / alias / digest is set, or none (= latest)."""

    name: str
    version: int | None = None
    alias: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @classmethod
    def parse(cls, text: str) -> "Ref":
        name, sep, selector = (text or "").partition("@")
        validate_name(name)
        if not sep:
            return cls(name)
        if selector.startswith(DIGEST_PREFIX):
            parse_digest(selector)
            return cls(name, digest=selector)
        if selector.isdigit():
            version = int(selector)
            if version < 1:
                raise InvalidArgument(f"invalid version in {text!r}: versions start at 1")
            return cls(name, version=version)
        if selector == "latest":
            return cls(name)
        return cls(name, alias=validate_alias(selector))

    @property
    def key(self) -> str | None:
        """The canonical key when the ref already names a digest (no lookup needed), else None."""
        return f"{self.name}@{self.digest}" if self.digest is not None else None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return self.name


@dataclass(frozen=True, order=True)
class AdapterKey:
    """The canonical identity of one adapter version: ``name@sha256:<hex>``."""

    name: str
    digest: str

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}"

    @classmethod
    def parse(cls, text: str) -> "AdapterKey":
        ref = Ref.parse(text)
        if ref.digest is None:
            raise InvalidArgument(f"{text!r} is not a canonical adapter key; expected 'name@sha256:<hex>'")
        return cls(ref.name, ref.digest)
