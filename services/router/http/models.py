"""What `model` can name: an adapter ref (``acme/sum``, ``acme/sum@prod``, ``acme/sum@3``, ``acme/sum@sha256:...``)
or the base model itself (no adapter), and the listing behind ``GET /v1/models``.

The base model is named as the workers announce it (the path they loaded, as ``worker serve --base-model`` was
given) or by that path's last part (``demo-base``); the listing shows the short name. A name that is both wins as
the base model.
"""

from __future__ import annotations

import time
from pathlib import PurePath

from adapterfleet.common import auth
from adapterfleet.common.errors import InvalidArgument
from adapterfleet.router.http.errors import ModelNotFound
from adapterfleet.router.membership import Membership
from adapterfleet.store.aio_client import AsyncStoreClient
from adapterfleet.store.refs import Ref, show

REF_FORMS = "'acme/sum', 'acme/sum@prod', 'acme/sum@3' or 'acme/sum@sha256:<hex>'"


def short_name(base_model: str) -> str:
    return PurePath(base_model.rstrip("/\\")).name or base_model


class ModelCatalog:
    def __init__(self, membership: Membership, store: AsyncStoreClient, clock=time.time):
        self._membership = membership
        self._store = store
        self._clock = clock

    def base_models(self) -> dict[str, str]:
        """Every name the base model answers to -> its short name, from the workers the router sees."""
        out: dict[str, str] = {}
        for view in self._membership.views():
            record = self._membership.record(view.id)
            if record is not None and record.base_model:
                out[record.base_model] = out[short_name(record.base_model)] = short_name(record.base_model)
        return out

    def adapter_for(self, model: str) -> str:
        """The adapter ref to send for ``model`` ("" for the base model); ModelNotFound if it cannot name one."""
        if model in self.base_models():
            return ""
        try:
            Ref.parse(model)
        except InvalidArgument:
            bases = sorted(set(self.base_models().values()))
            base = f", or the base model {bases[0]!r}" if bases else ""
            raise ModelNotFound(f"the model {show(model)} does not exist: name an adapter ref ({REF_FORMS}){base}; "
                                "GET /v1/models lists them") from None
        return model

    async def listing(self) -> list[dict]:
        """OpenAI's model objects: the base model, then each adapter (its latest version) and each of its aliases."""
        created = int(self._clock())
        out = [{"id": name, "object": "model", "created": created, "owned_by": "adapterfleet", "root": name,
                "parent": None} for name in sorted(set(self.base_models().values()))]
        parent = out[0]["id"] if out else None
        for adapter in await self._store.list_adapters():
            if not adapter.latest_version or not auth.visible(adapter.name):
                continue  # every version yanked: nothing to serve; or another tenant's
            owner = adapter.name.split("/", 1)[0] if "/" in adapter.name else "adapterfleet"
            for ref in [adapter.name, *(f"{adapter.name}@{alias}" for alias in sorted(adapter.aliases))]:
                out.append({"id": ref, "object": "model", "created": created, "owned_by": owner, "root": ref,
                            "parent": parent})
        return out
