"""Does an adapter fit the *loaded* base model? Checked before a single tensor touches the model.

Every module the adapter changes must exist, be of a kind the worker serves, and take the adapter's shapes;
otherwise :class:`Incompatible` (FAILED_PRECONDITION) names the module and both shapes. The result is the plan
for :func:`.inject.inject`: module path -> wrapper kind.
"""

from __future__ import annotations

import torch
from torch import nn

from adapterfleet.common.errors import Incompatible

from .linear import is_linear, linear_shape
from .modules_to_save import plain_tensors, unwrap
from .row_bias import adds_bias_last
from .weights import AdapterWeights, ModuleLora

LINEAR, EMBEDDING, BIAS, COPY = "linear", "embedding", "bias", "copy"
_DIFFERENT_BASE = "was it trained on a different base model?"


def resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module] | None:
    """(parent, attribute, module) at ``path``, looking through per-row wrappers on the way; None if missing."""
    parent, attr, cur = None, "", model
    for part in path.split("."):
        parent = unwrap(cur)
        child = parent._modules.get(part)  # noqa: SLF001 - torch has no public child lookup by name
        if child is None:
            return None
        attr, cur = part, child
    if parent is None:
        return None
    return parent, attr, cur


def _module(model: nn.Module, path: str) -> nn.Module:
    found = resolve(model, path)
    if found is None:
        raise Incompatible(
            f"adapter targets {path} but the base model has no such module; was it trained on a different "
            "architecture?"
        )
    return unwrap(found[2])


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_lora(path: str, m: ModuleLora, base: nn.Module) -> str:
    a, b = m.lora_A, m.lora_B
    assert a is not None and b is not None, "only called with a rank, which comes with lora_A and lora_B (weights)"
    if m.embedding:
        if not isinstance(base, nn.Embedding):
            raise Incompatible(
                f"adapter has embedding LoRA (lora_embedding_A/B) for {path}, but the base model's module is a "
                f"{type(base).__name__}; {_DIFFERENT_BASE}"
            )
        if base.max_norm is not None:
            raise Incompatible(f"{path} is an Embedding with max_norm set; LoRA on it is not served")
        if a.shape[1] != base.num_embeddings:
            raise Incompatible(
                f"adapter targets {path} with lora_embedding_A {_shape(a)} but the base model's module has "
                f"num_embeddings={base.num_embeddings}; {_DIFFERENT_BASE}"
            )
        if b.shape[0] != base.embedding_dim:
            raise Incompatible(
                f"adapter targets {path} with lora_embedding_B {_shape(b)} but the base model's module has "
                f"embedding_dim={base.embedding_dim}; {_DIFFERENT_BASE}"
            )
        return EMBEDDING
    if isinstance(base, nn.Embedding):
        raise Incompatible(
            f"adapter has lora_A/lora_B for {path}, but the base model's module is an Embedding (PEFT saves "
            f"embedding LoRA as lora_embedding_A/B); {_DIFFERENT_BASE}"
        )
    if not is_linear(base):
        raise Incompatible(
            f"adapter targets {path}, a {type(base).__name__}; the worker serves LoRA on Linear, Conv1D and "
            "Embedding modules only"
        )
    fan_in, fan_out = linear_shape(base)
    if a.shape[1] != fan_in:
        raise Incompatible(
            f"adapter targets {path} with lora_A {_shape(a)} but the base model's module takes "
            f"in_features={fan_in}; {_DIFFERENT_BASE}"
        )
    if b.shape[0] != fan_out:
        raise Incompatible(
            f"adapter targets {path} with lora_B {_shape(b)} but the base model's module gives "
            f"out_features={fan_out}; {_DIFFERENT_BASE}"
        )
    return LINEAR


def _check_module(path: str, m: ModuleLora, base: nn.Module) -> str:
    kind = _check_lora(path, m, base) if m.rank else None
    if m.bias is not None:
        b0 = getattr(base, "bias", None)
        if not isinstance(b0, torch.Tensor):
            raise Incompatible(
                f"adapter carries a bias for {path} but the base model's {type(base).__name__} has none; "
                f"{_DIFFERENT_BASE}"
            )
        if b0.shape != m.bias.shape:
            raise Incompatible(
                f"adapter carries a bias {_shape(m.bias)} for {path} but the base model's bias is "
                f"{_shape(b0)}; {_DIFFERENT_BASE}"
            )
        if kind is None:
            if is_linear(base):
                kind = LINEAR
            elif adds_bias_last(base):
                kind = BIAS
            else:
                raise Incompatible(
                    f"adapter replaces the bias of {path}, a {type(base).__name__}; the worker swaps biases per "
                    "row on Linear, Conv1D and LayerNorm modules only"
                )
    if m.base_weight is not None:
        w = getattr(base, "weight", None)
        if w is None or w.shape != m.base_weight.shape or not _same_values(w, m.base_weight):
            raise Incompatible(
                f"adapter carries its own base weight for {path} ({_shape(m.base_weight)}) that differs from the "
                f"loaded base model's ({_shape(w) if w is not None else 'none'}); it was trained on a different "
                "or resized base model, which this worker does not serve"
            )
    if kind is None:
        raise Incompatible(f"adapter has no tensors that change {path}")
    return kind


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, compared in the coarser of the two dtypes (an fp32 copy of a bf16 base is the same weight)."""
    coarse = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(b.dtype).eps else b.dtype
    return torch.equal(a.to(coarse), b.to(device=a.device, dtype=coarse))


def _check_copy(path: str, state: dict[str, torch.Tensor], base: nn.Module) -> None:
    own = plain_tensors(base)
    for name, t in state.items():
        mine = own.get(name)
        if mine is None:
            raise Incompatible(
                f"adapter saves {path} whole (modules_to_save) with a tensor {name!r} that the base model's "
                f"{type(base).__name__} does not have; {_DIFFERENT_BASE}"
            )
        if mine.shape != t.shape:
            raise Incompatible(
                f"adapter saves {path}.{name} as {_shape(t)} but the base model's is {_shape(mine)}; "
                f"{_DIFFERENT_BASE}"
            )


def check_compatible(model: nn.Module, weights: AdapterWeights) -> dict[str, str]:
    """Raise Incompatible unless ``weights`` fits ``model``; return module path -> wrapper kind."""
    plan: dict[str, str] = {}
    for path, state in weights.copies.items():
        _check_copy(path, state, _module(model, path))
        plan[path] = COPY
    for path, m in weights.modules.items():
        if path in plan:
            raise Incompatible(f"adapter both saves {path} whole and changes it with LoRA; PEFT never saves that")
        plan[path] = _check_module(path, m, _module(model, path))
    return plan
