"""Where ``pull REF DIR`` may write, and how the files get there without touching anything else in DIR.

A pull writes into a temporary directory beside DIR; once every byte is verified the files move in. DIR then holds
a marker, ``.adapterfleet-pull.json`` (the adapter's name, the key pulled and its file names). An existing DIR is
accepted when it is empty or when its marker names the same adapter (a re-pull: a newer version replaces the
older one's files, and the older one's files that the new version lacks are removed); anything else needs
``force``, and even then only the adapter's own files are replaced: unrelated files are never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from adapterfleet.common.errors import AdapterFleetError, FailedPrecondition
from adapterfleet.store.filenames import check_safe_file_name, inside
from adapterfleet.store.manifest import Manifest

MARKER = ".adapterfleet-pull.json"
MAX_MARKER_BYTES = 1 << 16


@dataclass(frozen=True)
class PreviousPull:
    """What a marker says an earlier pull left in DIR (``files``: only names that pass the file-name rule)."""

    name: str
    key: str
    files: tuple[str, ...]


def read_marker(dest: Path) -> PreviousPull | None:
    """The marker in ``dest``, or None when there is none or it cannot be read as one."""
    path = dest / MARKER
    try:
        if path.is_symlink() or path.stat().st_size > MAX_MARKER_BYTES:
            return None
        data = json.loads(path.read_text())
        files = tuple(f for f in data.get("files", []) if _safe(f))
        return PreviousPull(str(data["name"]), str(data.get("key", "")), files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _safe(name: object) -> bool:
    try:
        check_safe_file_name(name)
    except AdapterFleetError:  # a marker is only a hint: a name it should not hold is never touched
        return False
    return True


def check_pull_dest(dest: Path, name: str, *, force: bool) -> PreviousPull | None:
    """Refuse (FailedPrecondition, before any download) a DIR that is not new, empty or an earlier pull of
    ``name``, unless ``force``. Returns the earlier pull of ``name`` found there, if any."""
    if not dest.exists() and not dest.is_symlink():
        return None
    if not dest.is_dir():
        raise FailedPrecondition(f"{dest} exists and is not a directory; pull into a directory")
    previous = read_marker(dest)
    if previous is not None and previous.name == name:
        return previous
    if force or not any(dest.iterdir()):
        return None
    what = (f"holds a pull of {previous.name}, not {name}" if previous is not None
            else f"is not empty and is not an earlier pull (it has no {MARKER})")
    raise FailedPrecondition(f"{dest} {what}; pull into a new or empty directory, or pass --force (force=True) to "
                             "write the adapter's files into it (files of other names there are kept)")


def install_pull(tmp: Path, dest: Path, manifest: Manifest, previous: PreviousPull | None) -> None:
    """Move the verified files from ``tmp`` (beside ``dest``) into ``dest``, and write the marker last."""
    names = [e.name for e in manifest.files]
    _write_marker(tmp, manifest)
    try:
        os.rename(tmp, dest)  # a new DIR (or an empty one) appears whole, marker included
        return
    except OSError:
        if not dest.is_dir():
            raise
    targets = [inside(dest, name) for name in names]  # an existing DIR: only the adapter's own files change
    for target in targets:  # every one checked before any is replaced: a refused pull changes nothing
        if target.is_dir() and not target.is_symlink():
            raise FailedPrecondition(f"{target} is a directory where the adapter has a file; move it away and pull "
                                     "again")
    for name, target in zip(names, targets, strict=True):
        os.replace(inside(tmp, name), target)  # replaces a symlink itself, never what it points to
    if previous is not None:
        for stale in set(previous.files) - set(names):  # the earlier version's files that this one lacks
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                inside(dest, stale).unlink()
    os.replace(tmp / MARKER, dest / MARKER)


def _write_marker(directory: Path, manifest: Manifest) -> None:
    body = {"name": manifest.name, "key": str(manifest.key), "version": manifest.version,
            "files": [e.name for e in manifest.files]}
    (directory / MARKER).write_text(json.dumps(body, indent=1) + "\n")
