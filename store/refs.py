"""Adapter names, references and the canonical identity of a version.

    name            "summarizer" or "tenant/summarizer"
    ref             name | name@3 | name@prod | name@sha256:<hex>
    key (identity)  name@sha256:<hex>  -- one canonical key per version; router, cache and metrics use it
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapterfleet.common.errors import InvalidArgument

# Every pattern is anchored with \A and \Z (``$`` would also match before a trailing "\n") and uses explicit ASCII
# classes (``\d`` and str.isdigit() accept '²' and other Unicode digits). Lengths are checked before any regex runs.
_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME_RE = re.compile(rf"\A(?:{_SEGMENT}/)?{_SEGMENT}\Z")
_ALIAS_RE = re.compile(r"\A[a-z][a-z0-9._-]{0,63}\Z")
_HEX_RE = re.compile(r"\A[0-9a-f]{64}\Z")
_VERSION_RE = re.compile(r"\A[0-9]{1,10}\Z")
DIGEST_PREFIX = "sha256:"

MAX_NAME_CHARS = 2 * 64 + 1                              # "tenant/name", 64 characters per part
MAX_ALIAS_CHARS = 64
MAX_VERSION = 2**32 - 1                                  # versions travel as uint32
MAX_REF_CHARS = MAX_NAME_CHARS + 1 + len(DIGEST_PREFIX) + 64  # the longest selector is a digest
_SHOW_CHARS = 80


def show(value: Any, limit: int = _SHOW_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, saying how long it really was: error messages never
    echo a whole hostile input (a 10,000-character name would not fit in gRPC's metadata)."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _check_str(value: Any, field: str, max_chars: int, rule: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid {field}: expected a string, got {show(value)}; {rule}")
    if len(value) > max_chars:
        raise InvalidArgument(f"invalid {field} {show(value)}: longer than {max_chars} characters; {rule}")
    return value


_NAME_RULE = ("use 'name' or 'tenant/name' with lowercase ASCII letters, digits and '-_.' (each part starts with a "
              "letter or digit, at most 64 characters, no '..', no whitespace)")
_ALIAS_RULE = ("aliases start with a lowercase letter and use lowercase ASCII letters, digits and '-_.' (at most 64 "
               "characters); 'latest' and names starting with 'sha256' are reserved")


def validate_name(name: str, field: str = "adapter name") -> str:
    """Return ``name`` if it is a valid adapter name, else raise InvalidArgument naming the field and the rule."""
    _check_str(name, field, MAX_NAME_CHARS, _NAME_RULE)
    if not _NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(f"invalid {field} {show(name)}: {_NAME_RULE}")
    return name


def validate_alias(alias: str, field: str = "alias") -> str:
    _check_str(alias, field, MAX_ALIAS_CHARS, _ALIAS_RULE)
    if not _ALIAS_RE.match(alias) or alias.startswith("sha256") or alias == "latest":
        raise InvalidArgument(f"invalid {field} {show(alias)}: {_ALIAS_RULE}")
    return alias


def validate_hex_digest(hexdigest: str, what: str = "sha256") -> str:
    rule = "expected 64 lowercase hex characters"
    _check_str(hexdigest, what, 64, rule)
    if not _HEX_RE.match(hexdigest):
        raise InvalidArgument(f"invalid {what} {show(hexdigest)}: {rule}")
    return hexdigest


def parse_digest(digest: str, field: str = "digest") -> str:
    """'sha256:<hex>' -> '<hex>'."""
    rule = "expected 'sha256:<64 lowercase hex characters>'"
    _check_str(digest, field, len(DIGEST_PREFIX) + 64, rule)
    if not digest.startswith(DIGEST_PREFIX):
        raise InvalidArgument(f"invalid {field} {show(digest)}: {rule}")
    return validate_hex_digest(digest[len(DIGEST_PREFIX):], field)


def parse_version(text: str, field: str = "version") -> int:
    """'3' -> 3. ASCII digits only, 1 to MAX_VERSION."""
    rule = f"versions are whole numbers from 1 to {MAX_VERSION}, written with the ASCII digits 0-9"
    _check_str(text, field, 10, rule)
    if not _VERSION_RE.match(text):
        raise InvalidArgument(f"invalid {field} {show(text)}: {rule}")
    version = int(text)
    if not 1 <= version <= MAX_VERSION:
        raise InvalidArgument(f"invalid {field} {show(text)}: {rule}")
    return version


@dataclass(frozen=True)
class Ref:
    """A parsed reference. Exactly one of version / alias / digest is set, or none (= latest)."""

    name: str
    version: int | None = None
    alias: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @classmethod
    def parse(cls, text: str) -> Ref:
        """'name', 'name@3', 'name@alias', 'name@latest' or 'name@sha256:<hex>'; InvalidArgument otherwise."""
        _check_str(text, "ref", MAX_REF_CHARS,
                   "a ref is 'name', 'name@<version>', 'name@<alias>' or 'name@sha256:<hex>'")
        name, sep, selector = text.partition("@")
        validate_name(name)
        if not sep:
            return cls(name)
        if selector.startswith(DIGEST_PREFIX):
            parse_digest(selector, "digest in ref")
            return cls(name, digest=selector)
        if selector[:1].isdigit():  # any Unicode digit lands here, so '²' is refused by the version rule
            return cls(name, version=parse_version(selector, "version in ref"))
        if selector == "latest":
            return cls(name)
        return cls(name, alias=validate_alias(selector, "alias in ref"))

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
    def parse(cls, text: str) -> AdapterKey:
        ref = Ref.parse(text)
        if ref.digest is None:
            raise InvalidArgument(f"{show(text)} is not a canonical adapter key; expected 'name@sha256:<hex>'")
        return cls(ref.name, ref.digest)
