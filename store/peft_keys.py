"""The PEFT state-dict key grammar for LoRA adapters: the one place that says what a tensor name means.

Store validation, worker loading and SDK preflight all parse keys here, so they accept and refuse the same names.
Pure Python (no torch): it works on names only; what a key *may* carry for a given adapter_config.json (targets,
bias mode, use_dora, modules_to_save) is the caller's business.

Key forms that peft 0.21 ``save_pretrained`` writes for LoRA and ``set_peft_model_state_dict`` loads (``M`` is a
module path of the base model, e.g. ``model.layers.0.self_attn.q_proj``), all prefixed ``base_model.model.``:

    key                                 kind        field         shape
    M.lora_A.weight                     lora        lora_A        [r, in]               (Linear, GPT-2 Conv1D)
    M.lora_B.weight                     lora        lora_B        [out, r]
    M.lora_embedding_A                  lora        lora_A        [r, num_embeddings]   (Embedding)
    M.lora_embedding_B                  lora        lora_B        [dim, r]
    M.lora_magnitude_vector             lora        magnitude     [out] ([dim] on an Embedding)   (DoRA)
    M.lora_magnitude_vector.weight      lora        magnitude     the same tensor, spelled as the parameter of
                                                                  PEFT's DoraLinearLayer; PEFT loads both
                                                                  (LoraModel._remap_adapter_state_dict_for_load)
    M.lora_A.bias, M.lora_B.bias        lora        lora_A_bias,  [r], [out]            (lora_bias=True)
                                                    lora_B_bias
    M.base_layer.weight                 base_layer  base_weight   full weight of a targeted embedding / lm_head
                                                                  (save_embedding_layers)
    M.base_layer.bias                   base_layer  bias          [out] bias of a targeted module (bias="all" or
                                                                  "lora_only")
    M.bias                              param       bias          bias of any other module (bias="all")
    S.<param path>                      param       <param>       every parameter of a module S in modules_to_save
                                                                  (e.g. lm_head.weight); with bias="all" also the
                                                                  biases of its copies, as PEFT's wrapper names them:
                                                                  S.modules_to_save.default.<p>.bias and
                                                                  S.original_module.<p>.bias

Refused, because PEFT's loader would silently drop them (``load_state_dict(strict=False)``) or they come from
``model.state_dict()`` rather than ``save_pretrained``: a key without the prefix; an empty name segment; a
``lora_*`` segment anywhere but in the forms above (e.g. ``lora_A.default.weight``, with the adapter name still in
it, ``lora_C.weight`` or ``lora_embedding_A.weight``). Across one state dict (:func:`parse_peft_keys`): two keys
for one field of one module (both magnitude spellings), a module that mixes ``lora_A/lora_B`` with
``lora_embedding_A/B``, and a plain ``M.<param>`` next to LoRA tensors of ``M`` (PEFT keeps such a module's own
parameters under ``M.base_layer.``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from adapterfleet.common.errors import InvalidAdapter

KEY_PREFIX = "base_model.model."
KeyKind = Literal["lora", "base_layer", "param"]

# Suffix of a LoRA layer's tensor -> canonical field. Two spellings of one tensor share a field.
LORA_SUFFIXES: dict[str, str] = {
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_embedding_A": "lora_A",
    "lora_embedding_B": "lora_B",
    "lora_magnitude_vector.weight": "magnitude",
    "lora_magnitude_vector": "magnitude",
    "lora_A.bias": "lora_A_bias",
    "lora_B.bias": "lora_B_bias",
}
# The targeted module's own parameters, which PEFT keeps under the LoRA layer's base_layer.
BASE_LAYER_SUFFIXES: dict[str, str] = {"base_layer.weight": "base_weight", "base_layer.bias": "bias"}
EMBEDDING_SUFFIXES = frozenset({"lora_embedding_A", "lora_embedding_B"})
LORA_BIAS_FIELDS = frozenset({"lora_A_bias", "lora_B_bias"})
_FIELD_NAMES = {"lora_A": "lora_A factor", "lora_B": "lora_B factor", "magnitude": "DoRA magnitude",
                "lora_A_bias": "lora_A bias", "lora_B_bias": "lora_B bias", "base_weight": "base layer weight",
                "bias": "base layer bias"}
_EXPECTED = ("<module>.lora_A.weight, .lora_B.weight, .lora_embedding_A, .lora_embedding_B, "
             ".lora_magnitude_vector (or .lora_magnitude_vector.weight), .lora_A.bias, .lora_B.bias, "
             ".base_layer.weight or .base_layer.bias")
_RESAVE = "save the adapter with PeftModel.save_pretrained(), not model.state_dict()"


@dataclass(frozen=True)
class PeftKey:
    """One parsed key. ``module`` is relative to the base model ('' for its root); ``param`` is the key's own
    spelling after the module (``lora_magnitude_vector.weight``, ``bias``, ``weight``)."""

    module: str
    param: str
    kind: KeyKind

    @property
    def field(self) -> str:
        """Canonical name of the tensor within its module: see the table in the module docstring."""
        if self.kind == "lora":
            return LORA_SUFFIXES[self.param]
        if self.kind == "base_layer":
            return BASE_LAYER_SUFFIXES[self.param]
        return self.param

    @property
    def embedding(self) -> bool:
        """The key is one of the Embedding LoRA factors (lora_embedding_A/B)."""
        return self.param in EMBEDDING_SUFFIXES

    @property
    def key(self) -> str:
        return KEY_PREFIX + (f"{self.module}.{self.param}" if self.module else self.param)


def parse_peft_key(key: str) -> PeftKey:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    -> PeftKey('model.layers.0.self_attn.q_proj', 'lora_A.weight', 'lora'). InvalidAdapter for a name outside the
    grammar, saying what is wrong and which forms are expected."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX):
        raise InvalidAdapter(
            f"tensor {key!r} does not start with {KEY_PREFIX!r}; this is not a PEFT adapter state dict. "
            "Save the adapter with PeftModel.save_pretrained()"
        )
    rest = key[len(KEY_PREFIX) :]
    segments = rest.split(".")
    if not segments[-1]:
        raise InvalidAdapter(f"tensor {key!r} has an empty parameter name; re-save the adapter")
    if "" in segments:
        raise InvalidAdapter(f"tensor {key!r} has an empty module name ('..' or a leading '.'); re-save the adapter")
    tables: tuple[tuple[dict[str, str], KeyKind], ...] = ((LORA_SUFFIXES, "lora"), (BASE_LAYER_SUFFIXES, "base_layer"))
    for table, kind in tables:
        for suffix in table:
            if rest.endswith("." + suffix):
                parsed = PeftKey(rest[: -len(suffix) - 1], suffix, kind)
                _check_module_path(key, parsed.module)
                return parsed
    module, _, param = rest.rpartition(".")
    _check_module_path(key, rest)
    return PeftKey(module, param, "param")


def _check_module_path(key: str, path: str) -> None:
    for segment in path.split("."):
        if segment.startswith("lora_"):
            raise InvalidAdapter(
                f"tensor {key!r} is not a LoRA key PEFT loads: {segment!r} appears where PEFT saves none; expected "
                f"{_EXPECTED}. A key with the adapter name in it (lora_A.default.weight) comes from "
                f"model.state_dict(): {_RESAVE}"
            )


def parse_peft_keys(keys: Iterable[str]) -> dict[str, PeftKey]:
    """Parse every key of one state dict (key -> PeftKey, in the given order) and refuse key sets PEFT would not
    load as written: two keys for one field of one module, mixed Linear/Embedding factors, a module's own
    parameter next to its LoRA tensors. Keys are checked in sorted order, so every caller reports the same one."""
    given = list(keys)
    by_name = {key: parse_peft_key(key) for key in sorted(given)}
    layers: dict[str, list[PeftKey]] = {}
    for pk in by_name.values():
        if pk.kind != "param":
            layers.setdefault(pk.module, []).append(pk)
    for module, pks in layers.items():
        if len({pk.embedding for pk in pks if pk.field in ("lora_A", "lora_B")}) > 1:
            raise InvalidAdapter(
                f"module {module} has both lora_A/lora_B and lora_embedding_A/B; keep one pair: "
                "lora_A.weight/lora_B.weight for a Linear, lora_embedding_A/lora_embedding_B for an Embedding"
            )
        seen: dict[str, PeftKey] = {}
        for pk in pks:
            other = seen.setdefault(pk.field, pk)
            if other is not pk:
                raise InvalidAdapter(
                    f"tensors {other.key} and {pk.key} are both the {_FIELD_NAMES[pk.field]} of module {module} "
                    f"('{other.param}' and '{pk.param}' are two spellings of one tensor); keep one"
                )
    for pk in by_name.values():
        if pk.kind == "param" and pk.module in layers:
            raise InvalidAdapter(
                f"tensor {pk.key}: module {pk.module} has LoRA tensors, so PEFT keeps its own parameters under "
                f"base_layer: save it as {KEY_PREFIX}{pk.module}.base_layer.{pk.param} (PEFT would ignore this key)"
            )
    return {key: by_name[key] for key in given}
