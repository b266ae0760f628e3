"""What listing and garbage collection report: typed results shared by the store (server side), its client, the SDK
and the CLI. Wire conversions are in :mod:`adapterfleet.store.proto_convert`."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterfleet.store.targets import Targets


@dataclass(frozen=True)
class AdapterSummary:
    """One adapter name in the store: its latest version, how many versions, and its aliases."""

    name: str
    latest_version: int      # the newest version not yanked; 0 when every version is yanked
    version_count: int       # yanked versions included
    aliases: dict[str, Targets] = field(default_factory=dict)  # alias -> its targets, as set


@dataclass(frozen=True)
class GcReport:
    """One garbage collection (or, with dry_run, what it would do)."""

    deleted: list[str]       # sha256 hex of the blobs deleted (dry run: that would be deleted)
    bytes_freed: int
    kept_referenced: int     # old enough, but a version refers to them
    kept_leased: int         # unreferenced, but a push in flight holds them
    aborted_uploads: int     # stale multipart uploads aborted
