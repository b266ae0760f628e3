"""The store's change events: what Watch streams to routers, workers and clients (a wire type both sides use),
and the grammar of the cursors that resume a Watch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.refs import show
from adapterfleet.store.targets import Targets

EVENT_TYPES = ("VERSION_PUSHED", "ALIAS_CHANGED", "ALIAS_DELETED", "VERSION_YANKED", "ROLLOUT_CHANGED",
               "TOKEN_REVOKED")
TOKEN_REVOKED = "TOKEN_REVOKED"  # its `detail` is the revoked token id; its name is ""

# "" or "$": from now on; "0": from the first event kept; "<ms>-<seq>": after that event (an Event's cursor).
_CURSOR_RE = re.compile(r"\A(?:|\$|0|[0-9]{1,20}-[0-9]{1,20})\Z")
_MAX_ID_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers
CURSOR_RULE = "use '' or '$' (from now on), '0' (from the first event kept) or an event's cursor, '<ms>-<seq>'"


def check_cursor(cursor: str) -> str:
    """Return ``cursor`` if Watch can resume from it, else raise InvalidArgument."""
    if not isinstance(cursor, str) or len(cursor) > 41 or not _CURSOR_RE.match(cursor):
        raise InvalidArgument(f"invalid watch cursor {show(cursor)}: {CURSOR_RULE}")
    if "-" in cursor and any(int(part) > _MAX_ID_PART for part in cursor.split("-")):
        raise InvalidArgument(f"invalid watch cursor {show(cursor)}: each part is at most {_MAX_ID_PART}")
    return cursor


@dataclass(frozen=True)
class StoreEvent:
    cursor: str
    type: str  # one of EVENT_TYPES (the names of store_pb2.Event.Type)
    name: str
    version: int
    digest: str
    alias: str
    targets: Targets
    time: float
    detail: str = ""  # ROLLOUT_CHANGED: a JSON summary of the change (store/rollout_record.py)
