"""Strict parse of a PEFT ``adapter_config.json`` into a frozen :class:`LoraSpec`.

Pure: bytes in, value out, :class:`InvalidAdapter` on any problem. No torch, no peft import. The matching helpers
(``targets``, ``rank_for``, ...) replicate peft 0.21's own semantics (``check_target_module_exists``,
``get_pattern_key``, ``_set_trainable``, ``LoraLayer.update_layer``) so that the store and the workers agree with
``PeftModel`` on which module gets which rank and scaling. The config's regular expressions are compiled once per
spec and matched in bounded time (:mod:`.patterns`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.patterns import Pattern, spend
from adapterfleet.store.strict_json import strict_loads

_WHERE = "adapter_config.json"
REQUIRED_KEYS = ("peft_type", "r", "lora_alpha", "target_modules")
BIAS_VALUES = ("none", "all", "lora_only")


def _falsy(v: Any) -> bool:
    return not v


# Fields of peft's LoraConfig that change the forward pass (or the base weights) in ways adapterfleet does not
# implement: refused by name when set to anything but their default. name -> (is_default, why / fix).
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "layer_replication": (_falsy, "layer replication rebuilds the base model's layer stack"),
    "lora_bias": (lambda v: v is False or v is None, "a bias on lora_B (lora_bias=True) is not served"),
    "target_parameters": (_falsy, "LoRA on raw nn.Parameters (target_parameters) is not served"),
    "trainable_token_indices": (_falsy, "trainable tokens replace embedding rows, which is not served"),
    "alora_invocation_tokens": (_falsy, "activated LoRA (aLoRA) is not served"),
    "use_qalora": (lambda v: v is False or v is None, "QA-LoRA (use_qalora) is not served"),
    "megatron_config": (_falsy, "Megatron parallel LoRA layers are not served"),
    "velora_config": (_falsy, "VeLoRA adapters carry extra buffers that are not served"),
    "monteclora_config": (_falsy, "MonteCLoRA's sampled adapters are not served"),
    "use_bdlora": (_falsy, "block-diagonal LoRA (use_bdlora) is not served"),
    "arrow_config": (_falsy, "Arrow routing is not served"),
    "kasa_config": (_falsy, "KaSA's singular-value diagonal is not served"),
    "ensure_weight_tying": (
        lambda v: v is False or v is None,
        "tied adapters across embedding and lm_head (ensure_weight_tying) are not served",
    ),
}
# init_lora_weights values whose saved adapter only works on a *modified* base model unless it was converted.
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "lora_ga")
# How peft splices each user pattern into the expression it matches (check_target_module_exists, get_pattern_key).
_AS_IS = "{}"
_SAVED_WHOLE = r"(^|.*\.){}($|\..*)"
_LAYERS = r"(?:^|.*?\.){}\.(?P<idx>\d+)\."
_PATTERN_KEY = r"(.*\.)?({})$"
_DEFAULT_LAYER_INDEX = r".*?\.[^.]*\.(?P<idx>\d+)\."  # peft's layer index when layers_pattern is unset
Compiled = dict[tuple[str, str], Pattern]  # (template, source) -> compiled pattern


def _fail(msg: str) -> InvalidAdapter:
    return InvalidAdapter(f"{_WHERE}: {msg}")


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _rank(v: Any, what: str, max_rank: int) -> int:
    if not _is_int(v):
        raise _fail(f"{what} must be a positive integer, got {_show(v)} ({type(v).__name__})")
    if v <= 0:
        raise _fail(f"{what} must be a positive integer, got {v}")
    if v > max_rank:
        raise _fail(f"{what}: LoRA rank {v} is greater than max_rank {max_rank}")
    return v


def _bool(d: dict, key: str) -> bool:
    v = d.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _fail(f"{key} must be true or false, got {_show(v)}")
    return v


def _regex(pattern: str, key: str, compiled: Compiled, template: str = _AS_IS) -> None:
    """Compile ``pattern`` as peft splices it (InvalidAdapter if it is not valid, too long, or over budget)."""
    spend(f"compiling {key} patterns")
    compiled.setdefault((template, pattern), Pattern(pattern, key, template))


@overload
def _names(v: Any, key: str, compiled: Compiled, *, allow_regex: Literal[False]) -> tuple[str, ...]: ...
@overload
def _names(v: Any, key: str, compiled: Compiled, *, allow_regex: Literal[True]) -> tuple[str, ...] | str: ...
def _names(v: Any, key: str, compiled: Compiled, *, allow_regex: bool) -> tuple[str, ...] | str:
    """A list of module names -> sorted tuple; a string -> regex (when allowed)."""
    if isinstance(v, str) and allow_regex:
        if not v:
            raise _fail(f"{key} must not be an empty string")
        _regex(v, key, compiled)
        return v
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        kind = "a list of module names or a regex string" if allow_regex else "a list of module names"
        raise _fail(f"{key} must be {kind}, got {_show(v)}")
    return tuple(sorted(set(v)))


def _pattern_dict(v: Any, key: str, check: Callable[[Any, str], Any], compiled: Compiled) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail(f"{key} must be an object mapping module patterns to values, got {_show(v)}")
    out = {}
    for k, val in v.items():  # insertion order matters: peft takes the first matching key
        _regex(k, f"{key} key", compiled, _PATTERN_KEY)
        out[k] = check(val, f"{key}[{_show(k)}]")
    return out


@dataclass(frozen=True)
class LoraSpec:
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str  # str = regex (PEFT full-match semantics), tuple = names
    exclude_modules: tuple[str, ...] | str | None
    modules_to_save: tuple[str, ...]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool
    use_dora: bool
    fan_in_fan_out: bool
    bias: str  # "none" | "all" | "lora_only"
    layers_to_transform: tuple[int, ...] | None
    layers_pattern: tuple[str, ...] | None
    base_model_name_or_path: str | None
    task_type: str | None
    # compiled patterns, filled by from_dict and on first use; not part of the value
    _patterns: Compiled = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict, *, max_rank: int = 256) -> LoraSpec:
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        if not isinstance(d, dict):
            raise _fail(f"the top level must be a JSON object, got {type(d).__name__}")
        peft_type = d.get("peft_type")
        if peft_type is not None and peft_type != "LORA":  # before required keys: an IA3 config has no r
            name = peft_type if isinstance(peft_type, str) else _show(peft_type)
            raise _fail(f"peft_type {name[:64]} is not supported; adapterfleet serves LoRA adapters (peft_type LORA)")
        missing = [k for k in REQUIRED_KEYS if d.get(k) is None]
        if missing:
            raise _fail(
                f"missing required key(s): {', '.join(missing)}; save the adapter with "
                "PeftModel.save_pretrained(), which writes them all"
            )
        for key, (is_default, why) in _UNSUPPORTED.items():
            if key in d and not is_default(d[key]):
                raise _fail(
                    f"{key}={_show(d[key])} is not supported: {why}. Train and save the adapter without {key}"
                )
        init = d.get("init_lora_weights", True)
        if isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS):
            raise _fail(
                f"init_lora_weights={_show(init)}: this adapter only works on the base model it modified. Convert it "
                "to a plain LoRA adapter with save_pretrained(..., path_initial_model_for_weight_conversion=...)"
            )

        r = _rank(d["r"], "r", max_rank)
        alpha = d["lora_alpha"]
        if not _is_number(alpha):
            raise _fail(f"lora_alpha must be a finite number, got {_show(alpha)}")

        compiled: Compiled = {}
        target = _names(d["target_modules"], "target_modules", compiled, allow_regex=True)
        if target == ():
            raise _fail("target_modules is empty; an adapter must target at least one module")
        if target == "all-linear":
            raise _fail(
                "target_modules 'all-linear' is a shorthand that needs the base model to expand; save the adapter "
                "with PeftModel.save_pretrained(), which writes the expanded module names"
            )
        exclude = d.get("exclude_modules")
        exclude = None if exclude is None else _names(exclude, "exclude_modules", compiled, allow_regex=True)
        mts = d.get("modules_to_save")
        mts = () if mts is None else _names(mts, "modules_to_save", compiled, allow_regex=False)
        for m in mts:  # peft splices these into a regex unescaped
            _regex(m, "modules_to_save entry", compiled, _SAVED_WHOLE)

        bias = d.get("bias", "none")
        if bias is None:
            bias = "none"
        if bias not in BIAS_VALUES:
            raise _fail(f"bias must be one of {', '.join(BIAS_VALUES)}, got {_show(bias)}")

        layers = d.get("layers_to_transform")
        if _is_int(layers):
            layers = [layers]
        if layers is not None:
            if not isinstance(layers, list) or not all(_is_int(i) and i >= 0 for i in layers):
                raise _fail(f"layers_to_transform must be a layer index or a list of them, got {_show(layers)}")
            layers = tuple(sorted(set(layers))) or None  # peft treats [] like None
        pattern = d.get("layers_pattern")
        if isinstance(pattern, str):
            pattern = [pattern] if pattern else []
        if pattern is not None:
            if not isinstance(pattern, list) or not all(isinstance(p, str) and p for p in pattern):
                raise _fail(f"layers_pattern must be a module-list name or a list of them, got {_show(pattern)}")
            for p in pattern:
                _regex(p, "layers_pattern", compiled, _LAYERS)
            pattern = tuple(pattern) or None
        if isinstance(target, str) and (layers is not None or pattern is not None):
            raise _fail("layers_to_transform/layers_pattern cannot be used when target_modules is a regex string")
        if pattern is not None and layers is None:
            raise _fail("layers_pattern is set but layers_to_transform is not; set both or neither")

        rank_pattern = _pattern_dict(d.get("rank_pattern"), "rank_pattern", lambda v, w: _rank(v, w, max_rank),
                                     compiled)
        alpha_pattern = _pattern_dict(d.get("alpha_pattern"), "alpha_pattern", _alpha_value, compiled)

        return cls(
            r=r,
            lora_alpha=alpha,
            target_modules=target,
            exclude_modules=exclude,
            modules_to_save=mts,
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            use_rslora=_bool(d, "use_rslora"),
            use_dora=_bool(d, "use_dora"),
            fan_in_fan_out=_bool(d, "fan_in_fan_out"),
            bias=bias,
            layers_to_transform=layers,
            layers_pattern=pattern,
            base_model_name_or_path=_opt_str(d, "base_model_name_or_path"),
            task_type=_opt_str(d, "task_type"),
            _patterns=compiled,
        )

    def _pattern(self, source: str, what: str, template: str = _AS_IS) -> Pattern:
        key = (template, source)
        found = self._patterns.get(key)
        return found if found is not None else self._patterns.setdefault(key, Pattern(source, what, template))

    def _first_key(self, patterns: Mapping[str, Any], what: str, module_path: str) -> str | None:
        for key in patterns:
            if self._pattern(key, what, _PATTERN_KEY).match(module_path):
                return key
        return None

    def targets(self, module_path: str) -> bool:
        """Does PEFT put a LoRA layer on ``module_path`` (e.g. "model.layers.0.self_attn.q_proj")?"""
        spend(f"module {module_path[:60]!r}")
        ex = self.exclude_modules
        if ex:
            if isinstance(ex, str):
                if self._pattern(ex, "exclude_modules").fullmatch(module_path):
                    return False
            elif module_path in ex or any(module_path.endswith(f".{e}") for e in ex):
                return False
        # peft never puts an adapter inside (or on) a module that is saved whole
        if any(self._pattern(m, "modules_to_save entry", _SAVED_WHOLE).match(module_path)
               for m in self.modules_to_save):
            return False
        tm = self.target_modules
        if isinstance(tm, str):
            return self._pattern(tm, "target_modules").fullmatch(module_path) is not None
        if module_path in tm:  # an exact name is taken as is, even with layers_to_transform
            return True
        if not any(module_path.endswith(f".{t}") for t in tm):
            return False
        if self.layers_to_transform is None:
            return True
        match = None
        if self.layers_pattern is None:
            match = self._pattern(_DEFAULT_LAYER_INDEX, "peft's layer index pattern").match(module_path)
        else:
            for p in self.layers_pattern:
                match = self._pattern(p, "layers_pattern", _LAYERS).match(module_path)
                if match is not None:
                    break
        return match is not None and int(match.group("idx")) in self.layers_to_transform

    def is_module_to_save(self, module_path: str) -> bool:
        """Is ``module_path`` saved whole (peft's ``_set_trainable``: a plain ``endswith``)?"""
        return any(module_path.endswith(m) for m in self.modules_to_save)

    def rank_key(self, module_path: str) -> str | None:
        """The first rank_pattern key that matches ``module_path`` (peft's ``get_pattern_key``), or None."""
        return self._first_key(self.rank_pattern, "rank_pattern key", module_path)

    def alpha_key(self, module_path: str) -> str | None:
        return self._first_key(self.alpha_pattern, "alpha_pattern key", module_path)

    def rank_for(self, module_path: str) -> int:
        key = self.rank_key(module_path)
        return self.r if key is None else self.rank_pattern[key]

    def alpha_for(self, module_path: str) -> float:
        key = self.alpha_key(module_path)
        return self.lora_alpha if key is None else self.alpha_pattern[key]

    def scaling_for(self, module_path: str) -> float:
        r, alpha = self.rank_for(module_path), self.alpha_for(module_path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _alpha_value(v: Any, what: str) -> float:
    if not _is_number(v):
        raise _fail(f"{what} must be a finite number, got {_show(v)}")
    return v


def _opt_str(d: dict, key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise _fail(f"{key} must be a string or null, got {_show(v)}")
    return v


def parse_adapter_config(data: bytes, *, max_rank: int = 256, max_bytes: int = 1 << 20) -> LoraSpec:
    if len(data) > max_bytes:
        raise _fail(f"the file is {len(data)} bytes, more than the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(f"the file is not UTF-8 ({e}); save it as UTF-8 JSON") from None
    try:
        d = strict_loads(
            text, on_duplicate=lambda k: _fail(f"key {_show(k)} appears twice in one object; keep one"),
            on_constant=lambda name: _fail(f"{name} is not valid JSON; use a finite number"))
    except json.JSONDecodeError as e:
        raise _fail(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})") from None
    return LoraSpec.from_dict(d, max_rank=max_rank)
