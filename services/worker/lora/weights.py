"""An adapter's tensors, grouped per module of the base model, checked on their own (no model needed).

Built from a parsed :class:`store.adapter_config.LoraSpec` and the tensors of ``adapter_model.safetensors``, whose
keys are parsed by :mod:`adapterfleet.store.peft_keys` (the PEFT key grammar, shared with the store and the SDK;
its docstring lists every form). Each LoRA key's canonical field names the :class:`ModuleLora` attribute it fills::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight          -> lora_A      [r, in]
    base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector  -> magnitude   [out]   (DoRA)
    base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight  -> magnitude   (the same)
    base_model.model.model.embed_tokens.lora_embedding_B                    -> lora_B      [dim, r]
    base_model.model.model.embed_tokens.base_layer.weight                   -> base_weight
    base_model.model.transformer.h.0.ln_1.bias                              -> bias    (bias="all": any module)
    base_model.model.lm_head.weight                                         -> copies  (modules_to_save)

Whether the modules exist in the loaded base and the shapes fit is :mod:`.compat`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.store.lru import Lru
from adapterfleet.store.peft_keys import LORA_BIAS_FIELDS, PeftKey, parse_peft_keys


@dataclass
class ModuleLora:
    """What one adapter does to one module of the base model."""

    path: str  # e.g. "model.layers.0.self_attn.q_proj"
    rank: int = 0  # 0: no low-rank part (a module whose only change is its bias)
    scaling: float = 1.0  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    lora_A: torch.Tensor | None = None  # [r, in]; embedding: [r, num_embeddings]
    lora_B: torch.Tensor | None = None  # [out, r]; embedding: [dim, r]
    embedding: bool = False  # the keys were lora_embedding_A/B
    magnitude: torch.Tensor | None = None  # [out] DoRA magnitude
    bias: torch.Tensor | None = None  # [out] replaces the base module's bias on this adapter's rows
    base_weight: torch.Tensor | None = None  # PEFT's saved copy of the base weight; must equal the loaded one

    def tensors(self) -> list[torch.Tensor]:
        ts = (self.lora_A, self.lora_B, self.magnitude, self.bias, self.base_weight)
        return [t for t in ts if t is not None]


@dataclass
class AdapterWeights:
    spec: LoraSpec
    modules: dict[str, ModuleLora] = field(default_factory=dict)  # module path -> what changes there
    copies: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # modules_to_save: path -> state
    # (model, module path -> wrapper kind) once LoraModel.check found these weights fit that model: its install
    # does not check them again
    fit: tuple[object, dict[str, str]] | None = field(default=None, repr=False, compare=False)

    @property
    def shapes_decide_fit(self) -> bool:
        """Whether shapes alone decide if these weights fit a model (no saved base weight, whose values count)."""
        return all(m.base_weight is None for m in self.modules.values())

    @property
    def use_dora(self) -> bool:
        return self.spec.use_dora

    def nbytes(self) -> int:
        n = sum(t.nbytes for m in self.modules.values() for t in m.tensors())
        return n + sum(t.nbytes for state in self.copies.values() for t in state.values())

    @classmethod
    def from_dir(cls, path: str | Path, *, max_rank: int = 256) -> AdapterWeights:
        """Read ``adapter_config.json`` + ``adapter_model.safetensors`` from a verified adapter directory."""
        from safetensors.torch import load_file  # noqa: PLC0415 - only when reading from disk

        path = Path(path)
        spec = LoraSpec.from_dict(json.loads((path / "adapter_config.json").read_text()), max_rank=max_rank)
        return cls.from_tensors(spec, load_file(str(path / "adapter_model.safetensors")))

    @classmethod
    def from_tensors(cls, spec: LoraSpec, tensors: Mapping[str, torch.Tensor], *,
                     known_finite: bool = False, layout: Hashable = None) -> AdapterWeights:
        """Group PEFT-keyed tensors per module; refuse (InvalidAdapter) what PEFT would not have saved.
        ``known_finite``: the caller already checked every value is finite (only dtypes are checked here then).
        ``layout``: a key that fixes ``spec`` and the tensors' names, dtypes and shapes (the worker passes its
        config and safetensors header bytes). Every check here depends on those alone once the values are known
        finite, so the grouping of a layout that passed before is replayed without them: a worker's adapters
        mostly share one layout, and grouping 112 tensors one by one is ~0.4 ms of each cold load."""
        memo = layout is not None and known_finite
        replay = _LAYOUTS.get(layout) if memo else None
        if replay is not None:
            return replay.build(spec, tensors)
        if not tensors:
            raise InvalidAdapter("the adapter has no tensors; save it with PeftModel.save_pretrained()")
        weights = cls(spec)
        keys = _parsed_keys(tuple(tensors))  # refuses names outside the PEFT grammar, and duplicate spellings
        for key, tensor in tensors.items():
            _check_finite(key, tensor, values=not known_finite)
            weights._place(keys[key], tensor)
        for m in weights.modules.values():
            weights._finish(m)
        if memo:
            _LAYOUTS.put(layout, _Grouping.of(weights, tensors))
        return weights

    def _place(self, pk: PeftKey, tensor: torch.Tensor) -> None:
        key = pk.key
        if pk.kind != "param":  # a LoRA layer's tensor: field is the ModuleLora attribute
            if pk.field in LORA_BIAS_FIELDS:
                raise InvalidAdapter(
                    f"{key}: a LoRA bias (lora_bias=True) is not served; train the adapter with lora_bias=False"
                )
            if pk.field == "bias" and self.spec.bias == "none":
                raise InvalidAdapter(f"{key}: the adapter carries a bias but adapter_config.json has bias='none'")
            m = self.modules.setdefault(pk.module, ModuleLora(pk.module))
            if getattr(m, pk.field) is not None:
                raise InvalidAdapter(f"{key}: {pk.module} has two tensors for {pk.field}; keep one")
            setattr(m, pk.field, tensor)
            m.embedding = m.embedding or pk.embedding
            return
        name = f"{pk.module}.{pk.param}" if pk.module else pk.param
        parts = name.split(".")
        for i in range(1, len(parts)):  # the outermost module saved whole owns the tensor
            owner = ".".join(parts[:i])
            if self.spec.is_module_to_save(owner):
                self.copies.setdefault(owner, {})[".".join(parts[i:])] = tensor
                return
        if pk.param == "bias" and pk.module and self.spec.bias == "all":
            m = self.modules.setdefault(pk.module, ModuleLora(pk.module))
            if m.bias is not None:
                raise InvalidAdapter(f"{key}: {pk.module} has two bias tensors; keep one")
            m.bias = tensor
            return
        raise InvalidAdapter(
            f"{key}: not a LoRA tensor, not a bias allowed by bias={self.spec.bias!r}, and not under "
            f"modules_to_save {list(self.spec.modules_to_save)}; was adapter_config.json saved with these weights?"
        )

    def _finish(self, m: ModuleLora) -> None:
        a, b = m.lora_A, m.lora_B
        if a is None or b is None:
            if a is not None or b is not None:
                have, miss = ("lora_A", "lora_B") if b is None else ("lora_B", "lora_A")
                raise InvalidAdapter(f"{m.path} has {have} but no {miss}; the adapter file is incomplete")
            if m.magnitude is not None:
                raise InvalidAdapter(f"{m.path} has a DoRA magnitude but no lora_A/lora_B")
            if m.base_weight is not None and m.bias is None:
                raise InvalidAdapter(f"{m.path} has a base_layer.weight but no LoRA weights")
            return
        if a.dim() != 2 or b.dim() != 2:
            raise InvalidAdapter(
                f"{m.path}: lora_A {list(a.shape)} and lora_B {list(b.shape)} must both be matrices"
            )
        m.rank = a.shape[0]
        if b.shape[1] != m.rank:
            raise InvalidAdapter(
                f"{m.path}: lora_A {list(a.shape)} has rank {m.rank} but lora_B {list(b.shape)} has rank "
                f"{b.shape[1]}; the two were not saved together"
            )
        want = self.spec.rank_for(m.path)
        if want != m.rank:
            raise InvalidAdapter(
                f"{m.path}: the weights have rank {m.rank} but adapter_config.json gives rank {want} (r / "
                "rank_pattern); the config does not belong to these weights"
            )
        m.scaling = self.spec.scaling_for(m.path)
        if self.spec.use_dora and m.magnitude is None:
            raise InvalidAdapter(f"{m.path}: use_dora is set but lora_magnitude_vector is missing")
        if m.magnitude is not None:
            if not self.spec.use_dora:
                raise InvalidAdapter(f"{m.path} has a DoRA magnitude but adapter_config.json has use_dora=false")
            if m.magnitude.dim() != 1 or m.magnitude.shape[0] != b.shape[0]:
                raise InvalidAdapter(
                    f"{m.path}: lora_magnitude_vector {list(m.magnitude.shape)} does not match lora_B "
                    f"{list(b.shape)}; expected [{b.shape[0]}]"
                )


@dataclass(frozen=True)
class _Grouping:
    """Where each tensor of one layout went: (path, rank, scaling, embedding, ((field, tensor name), ...)) per
    module, and (owner, name in the owner, tensor name) per module-to-save tensor, in the order they were built."""

    modules: tuple[tuple[str, int, float, bool, tuple[tuple[str, str], ...]], ...]
    copies: tuple[tuple[str, str, str], ...]

    @classmethod
    def of(cls, weights: AdapterWeights, tensors: Mapping[str, torch.Tensor]) -> _Grouping:
        names = {id(t): k for k, t in tensors.items()}
        modules = tuple(
            (m.path, m.rank, m.scaling, m.embedding,
             tuple((f, names[id(t)]) for f in _TENSOR_FIELDS if (t := getattr(m, f)) is not None))
            for m in weights.modules.values())
        copies = tuple((owner, sub, names[id(t)])
                       for owner, state in weights.copies.items() for sub, t in state.items())
        return cls(modules, copies)

    def build(self, spec: LoraSpec, tensors: Mapping[str, torch.Tensor]) -> AdapterWeights:
        weights = AdapterWeights(spec)
        for path, rank, scaling, embedding, fields in self.modules:
            m = weights.modules[path] = ModuleLora(path, rank=rank, scaling=scaling, embedding=embedding)
            for f, name in fields:
                setattr(m, f, tensors[name])
        for owner, sub, name in self.copies:
            weights.copies.setdefault(owner, {})[sub] = tensors[name]
        return weights


_TENSOR_FIELDS = ("lora_A", "lora_B", "magnitude", "bias", "base_weight")
_LAYOUTS: Lru[_Grouping] = Lru(64)  # layout key -> where its tensors went


@lru_cache(maxsize=64)
def _parsed_keys(names: tuple[str, ...]) -> dict[str, PeftKey]:
    """``parse_peft_keys`` of one key set, remembered: adapters of one architecture and targets share their key
    names, so a worker parses each set once. Read-only for callers (it is shared); a refused set is not kept."""
    return parse_peft_keys(names)


def _check_finite(key: str, t: torch.Tensor, values: bool = True) -> None:
    if not t.is_floating_point():
        raise InvalidAdapter(f"{key} has dtype {t.dtype}; adapter tensors must be floating point")
    if not values:
        return
    # fast path: a float64 sum of float32/16 values cannot overflow, and any NaN or Inf makes it non-finite; only a
    # non-finite sum (or a float64 tensor's overflow) pays for the elementwise check and its [numel] bool temporary
    if bool(torch.isfinite(t.sum(dtype=torch.float64))) or bool(torch.isfinite(t).all()):
        return
    bad = int((~torch.isfinite(t)).sum())
    raise InvalidAdapter(
        f"{key} holds {bad} non-finite value(s) (NaN or Inf); the adapter diverged in training or the file is "
        "corrupt; re-export it from a good checkpoint"
    )
