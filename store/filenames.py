"""The one rule for a file name inside an adapter directory, checked by the store on push and by every receiver
(the clients' pull and fetch, the SDK's cache, the worker's disk cache) before a single byte is written.

A name is one flat path component: no separator of any platform, no ``..``, not absolute, no NUL or other
control character, not hidden (``.`` first: marker and temp files live beside the adapter's files), bounded
length. A store that serves anything else is broken or hostile; nothing of the version is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from adapterfleet.common.errors import UnsafeFileName

MAX_NAME_BYTES = 255  # one path component on every common filesystem
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"  # the two every adapter has


def check_safe_file_name(name: object, *, source: str = "") -> str:
    """``name`` if it is one safe path component; UnsafeFileName otherwise. ``source`` says who sent it."""
    origin = f" from {source}" if source else ""
    if not isinstance(name, str) or not name:
        raise UnsafeFileName(f"file name must be a non-empty string{origin}; an adapter's files have plain "
                             "names such as adapter_config.json")
    shown = repr(name) if len(name) <= 80 else repr(name[:77] + "...")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UnsafeFileName(f"file name {shown}{origin} is longer than {MAX_NAME_BYTES} bytes")
    if "/" in name or "\\" in name or "\x00" in name:
        raise UnsafeFileName(f"file name {shown}{origin} contains a path separator or NUL; an adapter directory is "
                             "flat: push its files by their plain names")
    if ".." in name or name.startswith("."):
        raise UnsafeFileName(f"file name {shown}{origin} must not start with '.' or contain '..'")
    if not name.isprintable():
        raise UnsafeFileName(f"file name {shown}{origin} contains non-printable characters")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise UnsafeFileName(f"file name {shown}{origin} starts with a drive letter")
    return name


def check_safe_file_names(names: Iterable[str], *, source: str = "") -> list[str]:
    """Every name safe and none twice (two entries writing one file would let the later one win unseen)."""
    out: list[str] = []
    for name in names:
        check_safe_file_name(name, source=source)
        if name in out:
            raise UnsafeFileName(f"file name {name!r}{' from ' + source if source else ''} is listed twice")
        out.append(name)
    return out


def inside(directory: Path, name: str) -> Path:
    """``directory / name`` after the check, and proven to stay inside ``directory`` (defence in depth)."""
    check_safe_file_name(name)
    path = directory / name
    if path.parent != directory:
        raise UnsafeFileName(f"file name {name!r} does not stay inside {directory}")
    return path
