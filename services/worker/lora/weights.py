"""An adapter's tensors, grouped per module of the base model, checked on their own (no model needed).

Built from a parsed :class:`store.adapter_config.LoraSpec` and the tensors of ``adapter_model.safetensors`` with
the keys PEFT saves, e.g.::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight          [r, in]
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight          [out, r]
    base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector  [out]        (DoRA)
    base_model.model.model.embed_tokens.lora_embedding_A                    [r, num_embeddings]
    base_model.model.model.embed_tokens.lora_embedding_B                    [dim, r]
    base_model.model.model.embed_tokens.base_layer.weight                   (PEFT's copy of the base embedding)
    base_model.model.transformer.h.0.attn.c_attn.base_layer.bias            [out]   (bias="all" / "lora_only")
    base_model.model.transformer.h.0.ln_1.bias                              [dim]   (bias="all": any module)
    base_model.model.lm_head.weight                                         (modules_to_save: the whole module)

Whether the modules exist in the loaded base and the shapes fit is :mod:`.compat`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.store.validation import peft_key_to_module

# Suffixes of a targeted module's tensors -> field of ModuleLora. Longest first so ".weight" forms win.
_SUFFIXES = {
    "lora_magnitude_vector.weight": "magnitude",
    "lora_magnitude_vector": "magnitude",
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_embedding_A": "lora_A",
    "lora_embedding_B": "lora_B",
    "base_layer.weight": "base_weight",
    "base_layer.bias": "bias",
}


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

    @property
    def use_dora(self) -> bool:
        return self.spec.use_dora

    def nbytes(self) -> int:
        n = sum(t.nbytes for m in self.modules.values() for t in m.tensors())
        return n + sum(t.nbytes for state in self.copies.values() for t in state.values())

    @classmethod
    def from_dir(cls, path: str | Path, *, max_rank: int = 256) -> "AdapterWeights":
        """Read ``adapter_config.json`` + ``adapter_model.safetensors`` from a verified adapter directory."""
        from safetensors.torch import load_file

        path = Path(path)
        spec = LoraSpec.from_dict(json.loads((path / "adapter_config.json").read_text()), max_rank=max_rank)
        return cls.from_tensors(spec, load_file(str(path / "adapter_model.safetensors")))

    @classmethod
    def from_tensors(cls, spec: LoraSpec, tensors: Mapping[str, torch.Tensor]) -> "AdapterWeights":
        """Group PEFT-keyed tensors per module; refuse (InvalidAdapter) what PEFT would not have saved."""
        if not tensors:
            raise InvalidAdapter("the adapter has no tensors; save it with PeftModel.save_pretrained()")
        weights = cls(spec)
        for key, tensor in tensors.items():
            _check_finite(key, tensor)
            module, suffix = peft_key_to_module(key)
            weights._place(key, f"{module}.{suffix}" if module else suffix, tensor)
        for m in weights.modules.values():
            weights._finish(m)
        return weights

    def _place(self, key: str, name: str, tensor: torch.Tensor) -> None:
        for suffix, attr in _SUFFIXES.items():
            if name.endswith("." + suffix):
                path = name[: -len(suffix) - 1]
                if attr == "bias" and self.spec.bias == "none":
                    raise InvalidAdapter(
                        f"{key}: the adapter carries a bias but adapter_config.json has bias='none'"
                    )
                m = self.modules.setdefault(path, ModuleLora(path))
                if getattr(m, attr) is not None:
                    raise InvalidAdapter(f"{key}: {path} has two tensors for {attr}; keep one")
                setattr(m, attr, tensor)
                if suffix.startswith("lora_embedding"):
                    m.embedding = True
                return
        if ".lora_" in name:
            raise InvalidAdapter(
                f"{key}: '{name}' is not a LoRA tensor the worker serves (expected lora_A/lora_B, "
                "lora_embedding_A/B or lora_magnitude_vector); lora_bias and other LoRA variants are not served"
            )
        parts = name.split(".")
        for i in range(1, len(parts)):  # the outermost module saved whole owns the tensor
            owner = ".".join(parts[:i])
            if self.spec.is_module_to_save(owner):
                self.copies.setdefault(owner, {})[".".join(parts[i:])] = tensor
                return
        if name.endswith(".bias") and self.spec.bias == "all":
            path = name[: -len(".bias")]
            m = self.modules.setdefault(path, ModuleLora(path))
            if m.bias is not None:
                raise InvalidAdapter(f"{key}: {path} has two bias tensors; keep one")
            m.bias = tensor
            return
        raise InvalidAdapter(
            f"{key}: not a LoRA tensor, not a bias allowed by bias={self.spec.bias!r}, and not under "
            f"modules_to_save {list(self.spec.modules_to_save)}; was adapter_config.json saved with these weights?"
        )

    def _finish(self, m: ModuleLora) -> None:
        a, b = m.lora_A, m.lora_B
        if (a is None) != (b is None):
            have, miss = ("lora_A", "lora_B") if b is None else ("lora_B", "lora_A")
            raise InvalidAdapter(f"{m.path} has {have} but no {miss}; the adapter file is incomplete")
        if a is None:
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


def _check_finite(key: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise InvalidAdapter(f"{key} has dtype {t.dtype}; adapter tensors must be floating point")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InvalidAdapter(
            f"{key} holds {bad} non-finite value(s) (NaN or Inf); the adapter diverged in training or the file is "
            "corrupt; re-export it from a good checkpoint"
        )
