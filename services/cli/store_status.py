"""`adapterfleet store status [--json]`: a store's role and, in a secondary region, its replication from the
primary (cursor, lag in events and seconds, blobs not yet copied, resynchronisations)."""

from __future__ import annotations

import json

from adapterfleet.store.status import StoreStatusReport


def status_text(s: StoreStatusReport) -> str:
    lines = [f"role:           {s.role}" + (f" (region {s.region})" if s.region else ""),
             f"events:         {s.last_event} last, {s.stream_length} kept, {s.entries_added} ever added"]
    if s.role == "secondary":
        lines += [
            f"primary:        {s.primary} ({'following' if s.connected else 'NOT CONNECTED'})",
            f"replicate:      {s.replicate}",
            f"cursor:         {s.cursor} ({s.events_applied} events applied since start)",
            f"lag:            {s.lag_events} events, {s.lag_seconds:.3f} s",
            f"blobs pending:  {s.blobs_pending}",
            f"resyncs:        {s.resyncs}" + (f" (last: {s.last_resync})" if s.last_resync else ""),
        ]
        if s.last_error:
            lines.append(f"last error:     {s.last_error}")
    return "\n".join(lines)


def run_status(args, store_addr: str) -> int:
    from adapterfleet.cli.flags import client_security  # noqa: PLC0415 - with the client, as the other commands
    from adapterfleet.store.client import StoreClient  # noqa: PLC0415

    with StoreClient(store_addr, timeout=10.0, security=client_security(args)) as client:
        s = client.status()
    print(json.dumps(s.to_dict(), sort_keys=True) if args.json else status_text(s))
    return 0
