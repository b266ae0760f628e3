"""Replace modules of a loaded transformers model, in place, with per-row wrappers.

Idempotent and incremental: a module that already has the right wrapper keeps it, so a new adapter that targets
more modules only wraps those. Wrappers nest in one order: ``ModuleSwitch`` (modules_to_save) outside, the
per-row LoRA / bias wrapper inside, then the base module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from .base import SlotWrapper
from .compat import BIAS, COPY, EMBEDDING, LINEAR, resolve
from .context import RowContext
from .embedding import LoraEmbedding
from .linear import LoraLinear, is_linear
from .modules_to_save import ModuleSwitch, unwrap
from .row_bias import RowBias, adds_bias_last

Wrapper = SlotWrapper | ModuleSwitch  # what inject places: a per-row LoRA / bias wrapper, or a module switch

WRAPPERS: dict[str, type[SlotWrapper] | type[ModuleSwitch]] = {
    LINEAR: LoraLinear,
    EMBEDDING: LoraEmbedding,
    BIAS: RowBias,
    COPY: ModuleSwitch,
}


def _wrap_inner(container: nn.Module, attr: str, module: nn.Module, kind: str, ctx: RowContext) -> Wrapper:
    cls = WRAPPERS[kind]
    if isinstance(module, cls):
        return module
    if kind != COPY and isinstance(module, SlotWrapper):
        raise ValueError(f"module {attr} already has a {type(module).__name__}; cannot also wrap it as {kind}")
    wrapper = cls(module, ctx)
    setattr(container, attr, wrapper)
    return wrapper


def default_kind(module: nn.Module) -> str:
    """The per-row wrapper a module gets when only its path is given."""
    module = unwrap(module)
    if is_linear(module):
        return LINEAR
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    if adds_bias_last(module):
        return BIAS
    raise ValueError(f"no per-row LoRA wrapper for a {type(module).__name__}; name it as 'copy' to switch it whole")


def inject(
    model: nn.Module, placements: Mapping[str, str] | Iterable[str], ctx: RowContext
) -> dict[str, Wrapper]:
    """Wrap each module path with the wrapper of its kind (linear, embedding, bias, copy); return path -> wrapper.

    ``placements`` is the plan of :func:`.compat.check_compatible` (path -> kind), or just module paths, whose
    kind then follows the module's type (Linear/Conv1D -> linear, Embedding -> embedding, LayerNorm -> bias).
    All wrappers of one model must share ``ctx``.
    """
    if not isinstance(placements, Mapping):
        placements = {p: default_kind(_found(model, p)[2]) for p in placements}
    out: dict[str, Wrapper] = {}
    for path, kind in placements.items():
        if kind not in WRAPPERS:
            raise ValueError(f"unknown wrapper kind {kind!r} for {path}; use one of {sorted(WRAPPERS)}")
        parent, attr, module = _found(model, path)
        if getattr(module, "ctx", ctx) is not ctx:
            raise ValueError(f"{path} is wrapped for another RowContext; one model has one context")
        if kind == COPY:
            out[path] = _wrap_inner(parent, attr, module, COPY, ctx)
        elif isinstance(module, ModuleSwitch):
            out[path] = _wrap_inner(module, "base_layer", module.base_layer, kind, ctx)
        else:
            out[path] = _wrap_inner(parent, attr, module, kind, ctx)
    return out


def _found(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    found = resolve(model, path)
    if found is None:
        raise ValueError(f"model has no module {path}")
    return found


def wrappers(model: nn.Module) -> dict[str, Wrapper]:
    """Every per-row wrapper in ``model`` by its module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (SlotWrapper, ModuleSwitch))}
