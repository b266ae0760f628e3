"""refs: Ref.parse, AdapterKey.parse, validate_name, validate_alias, parse_digest on arbitrary and near-valid text.
Each returns or raises InvalidArgument with a short message, in bounded time; what is accepted is plain ASCII with
no whitespace and round-trips through str()."""

from __future__ import annotations

from hypothesis import event, given
from hypothesis import strategies as st

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.refs import (
    MAX_NAME_CHARS,
    MAX_VERSION,
    AdapterKey,
    Ref,
    parse_digest,
    validate_alias,
    validate_name,
)
from tests.fuzz.typed import FUZZ, typed

SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789._-/")
TRICKY = ["\n", "\r", "\t", " ", "\x00", "²", "١", "٣", "Ⅷ", "ｔ", "İ", "K", "ß", "@", "/", "..", ".", "-", "_", "A",
          "sha256:", "latest", "\u200b", "\ud800"]
segments = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,70}\Z")
names = st.one_of(segments, st.builds(lambda a, b: f"{a}/{b}", segments, segments))
hexes = st.from_regex(r"\A[0-9a-f]{60,66}\Z") | st.from_regex(r"\A[0-9a-fA-F]{64}\Z")
selectors = st.one_of(
    st.integers(-1, 2 * MAX_VERSION).map(str),
    st.from_regex(r"\A[a-z][a-z0-9._-]{0,70}\Z"),
    hexes.map(lambda h: "sha256:" + h),
    st.sampled_from(["latest", "sha256", "sha256x", "", "0", "00", "01", "²", "1²", "١", "4294967295", "4294967296"]),
)


@st.composite
def near_valid_refs(draw) -> str:
    text = draw(names)
    if draw(st.booleans()):
        text += "@" + draw(selectors)
    for _ in range(draw(st.integers(0, 2))):  # splice in a character that looks harmless or prints like another
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(TRICKY)) + text[at:]
    if draw(st.integers(0, 19)) == 0:
        text *= draw(st.integers(2, 200))  # long, up to ~30,000 characters
    return text


texts = st.one_of(st.text(), near_valid_refs())


def clean(s: str) -> bool:
    return set(s) <= SAFE


@FUZZ
@given(texts)
def test_ref_parse(text):
    out = typed(Ref.parse, text)
    event("accepted" if isinstance(out, Ref) else "refused")
    if isinstance(out, Ref):
        assert clean(out.name) and len(out.name) <= MAX_NAME_CHARS
        assert Ref.parse(str(out)) == out
        assert out.version is None or 1 <= out.version <= MAX_VERSION
        assert out.alias is None or clean(out.alias)
    else:
        assert isinstance(out, InvalidArgument)


@FUZZ
@given(texts)
def test_adapter_key_parse(text):
    out = typed(AdapterKey.parse, text)
    if isinstance(out, AdapterKey):
        assert str(out) == text and clean(out.name)
    else:
        assert isinstance(out, InvalidArgument)


@FUZZ
@given(st.one_of(st.text(), names, near_valid_refs()))
def test_validate_name(text):
    out = typed(validate_name, text)
    event("accepted" if out == text else "refused")
    if out == text:
        assert clean(text) and ".." not in text and len(text) <= MAX_NAME_CHARS
    else:
        assert isinstance(out, InvalidArgument) and "adapter name" in out.message


@FUZZ
@given(st.one_of(st.text(), selectors, near_valid_refs()))
def test_validate_alias_and_digest(text):
    out = typed(validate_alias, text)
    if out == text:
        assert clean(text) and text[0].isalpha() and text != "latest" and not text.startswith("sha256")
    else:
        assert isinstance(out, InvalidArgument) and "alias" in out.message
    digest = typed(parse_digest, text)
    assert isinstance(digest, InvalidArgument) or text == "sha256:" + digest
