"""Conversions between the generated messages and the store's domain types (used by servicer and client)."""

from __future__ import annotations

from adapterfleet.store.blob_urls import BlobUrl
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.filenames import check_safe_file_names
from adapterfleet.store.listing import AdapterSummary, GcReport
from adapterfleet.store.manifest import BaseModelIdentity, FileEntry, Manifest
from adapterfleet.store.resolved import Resolved
from adapterfleet.store.targets import LiveTarget, Targets
from adapterfleet.v1 import common_pb2, store_pb2


def manifest_to_pb(m: Manifest) -> common_pb2.Manifest:
    return common_pb2.Manifest(
        name=m.name, version=m.version, digest=m.digest,
        files=[common_pb2.FileEntry(name=f.name, size=f.size, sha256=f.sha256) for f in m.files],
        base_model=base_to_pb(m.base_model), peft_type=m.peft_type, rank=m.rank,
        created_at=m.created_at, parent=m.parent, yanked=m.yanked, signature=m.signature,
    )


def manifest_from_pb(pb: common_pb2.Manifest) -> Manifest:
    """A manifest as received: every file name must be one safe path component (UnsafeFileName) before anyone
    can use it to name a file."""
    check_safe_file_names([f.name for f in pb.files], source=f"the store's manifest of {pb.name!r}")
    return Manifest(
        name=pb.name, files=tuple(files_from_pb(pb.files)), base_model=base_from_pb(pb.base_model),
        peft_type=pb.peft_type, rank=pb.rank, version=pb.version, created_at=pb.created_at,
        parent=pb.parent, yanked=pb.yanked, signature=pb.signature,
    )


def files_from_pb(files) -> list[FileEntry]:
    return [FileEntry(f.name, f.size, f.sha256) for f in files]


def base_to_pb(b: BaseModelIdentity) -> common_pb2.BaseModelIdentity:
    return common_pb2.BaseModelIdentity(name_or_path=b.name_or_path, fingerprint=b.fingerprint)


def base_from_pb(pb: common_pb2.BaseModelIdentity) -> BaseModelIdentity:
    return BaseModelIdentity(pb.name_or_path, pb.fingerprint)


def targets_to_pb(t: Targets) -> list[common_pb2.AliasTarget]:
    return [common_pb2.AliasTarget(version=v, weight=w) for v, w in t]


def targets_from_pb(pbs) -> Targets:
    return tuple(sorted((t.version, t.weight) for t in pbs))


def live_targets_to_pb(live) -> list[store_pb2.LiveTarget]:
    return [store_pb2.LiveTarget(version=t.version, weight=t.weight, key=t.key) for t in live]


def resolution_from_pb(r: store_pb2.Resolution) -> Resolved:
    live = tuple(LiveTarget(t.version, t.weight, t.key) for t in r.targets)
    manifest = manifest_from_pb(r.manifest)
    # a store from before `targets` existed sends none: the chosen version is then the only one we know of
    return Resolved(manifest, r.key, r.alias, targets_from_pb(r.alias_targets),
                    live or (LiveTarget(manifest.version, 100, r.key),),
                    blob_urls_from_pb(r.urls))


def blob_urls_from_pb(urls: store_pb2.BlobUrls) -> tuple[BlobUrl, ...]:
    return tuple(BlobUrl(u.file, u.url, u.expires_in_s) for u in urls.files)


def expectation_from_pb(request, field: str = "expect") -> Targets | str | None:
    """Unset -> "any" (unconditional); absent -> None; else the exact targets expected."""
    if not request.HasField(field):
        return "any"
    expect = getattr(request, field)
    return None if expect.absent else targets_from_pb(expect.targets)


def expectation_to_pb(expect: Targets | str | None) -> store_pb2.AliasExpectation | None:
    if expect == "any":
        return None
    if expect is None:
        return store_pb2.AliasExpectation(absent=True)
    return store_pb2.AliasExpectation(targets=targets_to_pb(expect))  # type: ignore[arg-type]


def alias_to_pb(name: str, alias: str, t: Targets) -> store_pb2.Alias:
    return store_pb2.Alias(name=name, alias=alias, targets=targets_to_pb(t))


def summary_to_pb(a: AdapterSummary) -> store_pb2.AdapterSummary:
    return store_pb2.AdapterSummary(name=a.name, latest_version=a.latest_version, version_count=a.version_count,
                                    aliases=[alias_to_pb(a.name, k, t) for k, t in sorted(a.aliases.items())])


def summary_from_pb(pb: store_pb2.AdapterSummary) -> AdapterSummary:
    return AdapterSummary(pb.name, pb.latest_version, pb.version_count,
                          {a.alias: targets_from_pb(a.targets) for a in pb.aliases})


def gc_report_to_pb(r: GcReport) -> store_pb2.CollectGarbageResponse:
    return store_pb2.CollectGarbageResponse(deleted=r.deleted, bytes_freed=r.bytes_freed,
                                            kept_referenced=r.kept_referenced, kept_leased=r.kept_leased,
                                            aborted_uploads=r.aborted_uploads)


def gc_report_from_pb(pb: store_pb2.CollectGarbageResponse) -> GcReport:
    return GcReport(list(pb.deleted), pb.bytes_freed, pb.kept_referenced, pb.kept_leased, pb.aborted_uploads)


def event_to_pb(e: StoreEvent) -> store_pb2.Event:
    return store_pb2.Event(
        cursor=e.cursor, type=store_pb2.Event.Type.Value(e.type), name=e.name, version=e.version,
        digest=e.digest, alias=e.alias, targets=targets_to_pb(e.targets), time=e.time, detail=e.detail,
    )


def event_from_pb(pb: store_pb2.Event) -> StoreEvent:
    return StoreEvent(pb.cursor, store_pb2.Event.Type.Name(pb.type), pb.name, pb.version, pb.digest, pb.alias,
                      targets_from_pb(pb.targets), pb.time, pb.detail)
