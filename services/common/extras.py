"""Which optional extra each part of adapterfleet needs, and the check that names the ``pip install`` to run.

The base install (grpcio, protobuf, rich) is the SDK and the client CLI. A serving command or a PEFT function
needs an extra; ``NEEDS`` is the one table of which. ``MODULES`` says, by import name, what each extra of
``[project.optional-dependencies]`` in pyproject.toml provides (tests/cli/test_packaging.py keeps the two in step).

The check looks for the modules with ``importlib.util.find_spec``, which imports nothing: it runs before the
command imports torch, redis or boto3, so a missing extra is one clear line, not a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

_AUTH = ("jwt", "cryptography")  # signed tokens: minted by `token create`, verified by every service
_SERVER = ("grpc_health", "grpc_reflection", "prometheus_client", *_AUTH)  # health, reflection, /metrics, tokens
_STORE = (*_SERVER, "boto3", "redis", "regex")  # regex: config patterns matched in bounded time (store.patterns)
_WORKER = (*_SERVER, "torch", "transformers", "safetensors", "numpy", "regex")
_ROUTER = (*_SERVER, "redis", "starlette", "uvicorn", "pydantic", "transformers", "jinja2")  # + the HTTP gateway
_PEFT = ("peft", "torch", "transformers", "safetensors")
_SIGNING = ("model_signing", "OpenSSL")  # signed adapters: push --sign-key, --trust-key, trust_key=


def _union(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m for group in groups for m in group))


# extra -> the top-level import names it installs (beyond the base install)
MODULES: dict[str, tuple[str, ...]] = {
    "auth": _AUTH,
    "server": _SERVER,
    "store": _STORE,
    "worker": _WORKER,
    "router": _ROUTER,
    "peft": _PEFT,
    "signing": _SIGNING,
    "all": _union(_STORE, _WORKER, _ROUTER, _PEFT, _SIGNING),
}

# what (a command as typed, or an SDK function) -> (the extra to install, the modules it imports)
NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "adapterfleet store serve": ("store", _STORE),
    "adapterfleet worker serve": ("worker", _WORKER),
    "adapterfleet router serve": ("router", _ROUTER),
    "adapterfleet token create": ("auth", _AUTH),
    "adapterfleet auth init": ("auth", _AUTH),
    "adapterfleet up": ("all", _union(_STORE, _WORKER, _ROUTER)),
    "adapterfleet demo": ("all", _union(_STORE, _WORKER, _ROUTER, _PEFT)),
    "adapterfleet.from_store": ("peft", _PEFT),
    "adapterfleet.load_adapter_from_store": ("peft", _PEFT),
    "adapterfleet.push_from_peft": ("peft", _PEFT),
    "adapterfleet.signing": ("signing", _SIGNING),  # push --sign-key, worker --trust-key, trust_key=
}


class MissingExtra(ImportError):
    """An optional extra is not installed; the message is the ``pip install`` that fixes it."""

    def __init__(self, what: str, extra: str, missing: list[str]):
        self.what, self.extra, self.missing = what, extra, missing
        super().__init__(f"{what}: this {'command' if ' ' in what else 'function'} needs the {extra!r} extra: "
                         f"pip install 'adapterfleet[{extra}]' (not installed: {', '.join(missing)})",
                         name=missing[0])


def installed(module: str) -> bool:
    """Whether ``module`` (a top-level import name) can be imported, without importing it."""
    import importlib.util  # noqa: PLC0415 - not free, and only serving commands ask

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a half-imported module without a spec
        return False


def require(what: str) -> None:
    """Raise MissingExtra when ``what`` (a key of NEEDS) cannot run here; nothing for anything else."""
    need = NEEDS.get(what)
    if need is None:
        return
    extra, modules = need
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise MissingExtra(what, extra, missing)
