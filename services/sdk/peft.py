"""PEFT integration: load adapters from the store into a PeftModel, and push trained ones back.

peft is an optional extra (``pip install 'adapterfleet[peft]'``), imported only when these functions run.

Provenance: every function here records, on the PeftModel, which store version each adapter name holds::

    model.adapterfleet_sources  # {"default": "acme/sum@sha256:ab12...", "second": "acme/qa@sha256:..."}

``push_from_peft`` uses it as the default ``parent`` of the version it pushes (so the new manifest says which
version the training started from) and then records the new version there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.common.extras import require
from adapterfleet.common.signing import TrustPolicy
from adapterfleet.sdk.preflight import check_files, preflight
from adapterfleet.sdk.store import DEFAULT_ADDRESS, AdapterStore, LocalAdapter
from adapterfleet.store.base_model import BaseModelIdentity, fingerprint
from adapterfleet.store.client import PushOutcome

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn

SOURCES_ATTR = "adapterfleet_sources"
_MODEL_CARD = "README.md"  # written by PEFT's save_pretrained; boilerplate, not part of the adapter


def stabilize_config(directory: str | os.PathLike) -> None:
    """Make ``save_pretrained``'s adapter_config.json the same bytes for the same adapter in every process.

    PEFT writes ``target_modules`` from a set, in an order that changes with each process's hash seed, so the
    same weights would get a new digest (and a new version) on every re-push. Sorted, with sorted keys, they don't.
    """
    config = Path(directory) / "adapter_config.json"
    body = json.loads(config.read_text())
    if isinstance(body.get("target_modules"), list):
        body["target_modules"] = sorted(body["target_modules"])
    config.write_text(json.dumps(body, indent=2, sort_keys=True))


def _identity(peft_model: PeftModel) -> BaseModelIdentity:
    """The fingerprint of the base model under ``peft_model``: recorded in the manifest, so that workers serving
    a different base refuse the adapter before installing it."""
    return BaseModelIdentity(fingerprint=fingerprint(peft_model))


def _require_peft(function: str) -> Any:
    """peft, or MissingExtra (an ImportError) naming ``pip install 'adapterfleet[peft]'`` when it or torch is not
    installed."""
    require(f"adapterfleet.{function}")
    import peft  # noqa: PLC0415 - an optional extra

    return peft


@contextlib.contextmanager
def _open(store: str | AdapterStore) -> Iterator[AdapterStore]:
    """The given AdapterStore, or a temporary one for an address (closed afterwards)."""
    if isinstance(store, AdapterStore):
        yield store
        return
    with AdapterStore(store) as opened:
        yield opened


def sources(model: nn.Module) -> dict[str, str]:
    """``model.adapterfleet_sources``: adapter name -> canonical key of the store version it was loaded from."""
    found = vars(model).get(SOURCES_ATTR)
    if found is None:
        found = {}
        setattr(model, SOURCES_ATTR, found)
    return found


TrustKeys = str | os.PathLike | Sequence[str | os.PathLike] | None


def check_trusted(local: LocalAdapter, trust_key: TrustKeys) -> None:
    """With ``trust_key`` (a PEM EC public key, ``TENANT=PEM``, or several): the pulled version's signature must
    verify with one of them and cover exactly its files, whose sha256 the cache just checked on disk;
    SignatureRejected (unsigned / no trusted key verifies it / covers other files) otherwise."""
    if trust_key is None:
        return
    keys = [trust_key] if isinstance(trust_key, (str, os.PathLike)) else list(trust_key)
    if not keys:
        raise InvalidArgument("trust_key is empty; give a PEM public key path (or several), or leave it None")
    policy = TrustPolicy.from_specs([os.fspath(k) for k in keys])
    m = local.manifest
    policy.verify(m.key, m.signature, {e.name: e.sha256 for e in m.files})


def _pull_checked(model: nn.Module, ref: str, store: str | AdapterStore,
                  trust_key: TrustKeys = None) -> tuple[LocalAdapter, str | None]:
    """Pull ``ref`` into the verified local cache, check its signature (with ``trust_key``) and that it fits
    ``model``; (adapter, torch_device)."""
    with _open(store) as opened:
        local = opened.pull_adapter(ref)
    check_trusted(local, trust_key)
    return local, preflight(model, local.path)


def from_store(base_model: nn.Module, ref: str, *, adapter_name: str = "default", is_trainable: bool = False,
               store: str | AdapterStore = DEFAULT_ADDRESS, trust_key: TrustKeys = None,
               **peft_kwargs: Any) -> PeftModel:
    """``PeftModel.from_pretrained`` on the store version ``ref`` names (``name``, ``name@3``, ``name@prod``,
    ``name@sha256:...``): pulled and verified into the local cache, checked against ``base_model`` (Incompatible,
    InvalidAdapter, FailedPrecondition), loaded onto the base model's device. ``peft_kwargs`` go to PEFT.
    ``trust_key``: load only a version signed by this key (or one of these; ``TENANT=PEM`` for one tenant):
    SignatureRejected (FAILED_PRECONDITION) before PEFT reads a byte otherwise."""
    peft = _require_peft("from_store")
    local, device = _pull_checked(base_model, ref, store, trust_key)
    if device is not None:
        peft_kwargs.setdefault("torch_device", device)
    model = peft.PeftModel.from_pretrained(base_model, str(local.path), adapter_name=adapter_name,
                                           is_trainable=is_trainable, **peft_kwargs)
    sources(model)[adapter_name] = local.key
    return model


def load_adapter_from_store(peft_model: PeftModel, ref: str, adapter_name: str, *, is_trainable: bool = False,
                            store: str | AdapterStore = DEFAULT_ADDRESS, trust_key: TrustKeys = None,
                            **peft_kwargs: Any) -> Any:
    """``peft_model.load_adapter`` of the store version ``ref`` as ``adapter_name`` (pulled, verified, checked;
    ``trust_key`` as for :func:`from_store`); returns PEFT's load result. Activate it as usual with
    ``peft_model.set_adapter(adapter_name)``."""
    _require_peft("load_adapter_from_store")
    local, device = _pull_checked(peft_model, ref, store, trust_key)
    if device is not None:
        peft_kwargs.setdefault("torch_device", device)
    result = peft_model.load_adapter(str(local.path), adapter_name=adapter_name, is_trainable=is_trainable,
                                     **peft_kwargs)
    sources(peft_model)[adapter_name] = local.key
    return result


def push_from_peft(peft_model: PeftModel, name: str, *, store: str | AdapterStore = DEFAULT_ADDRESS,
                   adapter_name: str = "default", alias: str = "", parent: str | None = None,
                   sign_key: str | os.PathLike | None = None) -> PushOutcome:
    """Save one adapter of ``peft_model`` (``save_pretrained``) and push it as the next version of ``name``.

    ``parent`` defaults to the version that adapter was loaded from (``adapterfleet_sources``); pass ``""`` for
    none. Only the adapter's own files are pushed (not PEFT's generated model card), so the same weights always
    give the same digest. Afterwards ``adapterfleet_sources[adapter_name]`` is the pushed version's key.
    ``sign_key`` (a PEM EC private key) signs the pushed files (OpenSSF Model Signing), as ``push --sign-key``."""
    _require_peft("push_from_peft")
    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, dict) or adapter_name not in configs:
        have = sorted(configs) if isinstance(configs, dict) else "none: it is not a PeftModel"
        raise InvalidArgument(f"the model has no adapter named {adapter_name!r} (adapters: {have}); pass "
                              "adapter_name= one of them")
    known = sources(peft_model)
    if parent is None:
        parent = known.get(adapter_name, "")
    with tempfile.TemporaryDirectory(prefix="adapterfleet-push-") as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=[adapter_name])
        # PEFT writes the "default" adapter into the directory itself and any other into a subdirectory of its name
        directory = Path(tmp) if adapter_name == "default" else Path(tmp) / adapter_name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / _MODEL_CARD)
        check_files(directory)
        stabilize_config(directory)
        with _open(store) as opened:
            outcome = opened.push(directory, name, alias=alias, parent=parent, base_model=_identity(peft_model),
                                  sign_key=sign_key)
    known[adapter_name] = str(outcome.manifest.key)
    return outcome
