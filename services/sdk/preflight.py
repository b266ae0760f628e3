"""Does an adapter directory load onto this base model? Clear, typed errors before PEFT tries.

The classic PEFT loading failures, caught with their fix in the message:

- missing files: no ``adapter_config.json`` / ``adapter_model.safetensors`` -> :class:`InvalidAdapter`;
- wrong base model: a LoRA tensor whose shape the base module cannot take, or a module the base lacks ->
  :class:`Incompatible` naming the tensor, the module and both shapes (checked from the safetensors header only,
  without reading a weight);
- device placement: a base on the ``meta`` device -> :class:`FailedPrecondition`; otherwise
  :func:`load_device` is the device PEFT should load the adapter weights onto (the base model's own).

Tensor names follow peft's ``get_peft_model_state_dict`` (``base_model.model.<module>.lora_A.weight``, ...) and
are parsed by ``adapterfleet.store.peft_keys``, the grammar the store and the workers use too. Linear weights are
``[out, in]``; GPT-2's Conv1D stores ``[in, out]``. No peft import.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterfleet.common.errors import FailedPrecondition, Incompatible, InvalidAdapter
from adapterfleet.store.peft_keys import PeftKey, parse_peft_keys
from adapterfleet.store.safetensors_header import header_bytes_needed, parse_header
from adapterfleet.store.validation import REQUIRED_FILES

if TYPE_CHECKING:
    from torch import nn

CONFIG, WEIGHTS = REQUIRED_FILES
_DIFFERENT_BASE = "was this adapter trained on a different base model?"


def check_files(directory: str | os.PathLike) -> Path:
    """``directory`` holds both files an adapter needs, else InvalidAdapter naming the missing one and the fix."""
    path = Path(directory)
    if not path.is_dir():
        raise InvalidAdapter(f"{path} is not a directory; pass the directory PeftModel.save_pretrained() wrote")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not missing:
        return path
    hint = "re-save the adapter with PeftModel.save_pretrained(dir), which writes both"
    if WEIGHTS in missing and (path / "adapter_model.bin").is_file():
        hint = ("it has adapter_model.bin, a pickle, which adapterfleet never loads: re-save it with "
                "PeftModel.save_pretrained(dir, safe_serialization=True)")
    elif nested := sorted(p.parent.name for p in path.glob(f"*/{CONFIG}")):
        hint = (f"PEFT saves an adapter not named 'default' in a subdirectory named after it: use {path / nested[0]}"
                if len(nested) == 1 else f"it has adapters in subdirectories {nested}: pass one of them")
    raise InvalidAdapter(f"adapter directory {path} has no {' and no '.join(missing)}; an adapter needs "
                         f"{' and '.join(REQUIRED_FILES)}; {hint}")


def read_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidAdapter(f"{directory / CONFIG} is not valid JSON ({err}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{directory / CONFIG} must hold a JSON object; re-save the adapter")
    return config


def read_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header alone."""
    path = directory / WEIGHTS
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        needed = header_bytes_needed(prefix, max_header_bytes=64 << 20)
        if needed is not None:
            prefix += f.read(needed - 8)
    if needed is None:
        raise InvalidAdapter(f"{path} is {size} bytes, too short to be safetensors; re-save the adapter")
    return {name: t.shape for name, t in parse_header(prefix, size, max_header_bytes=64 << 20).tensors.items()}


def _root(model: nn.Module) -> nn.Module:
    """The module that adapter key paths are relative to (a PeftModel's underlying transformers model)."""
    if hasattr(model, "peft_config"):
        get_base_model = getattr(model, "get_base_model", None)
        if callable(get_base_model):
            base: nn.Module = get_base_model()
            return base
    return model


def _unwrap(module: nn.Module) -> nn.Module:
    """Look through PEFT wrappers: a LoRA layer's ``base_layer``, a modules_to_save copy's ``original_module``."""
    for _ in range(8):
        children = module._modules  # name -> child; a name registered as None holds no module  # noqa: SLF001 - torch: children by name, wrappers included
        inner = children["original_module"] if "original_module" in children else children.get("base_layer")
        if inner is None:
            break
        module = inner
    return module


def _walk(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split(".") if path else ():
        child = _unwrap(module)._modules.get(part)  # noqa: SLF001 - torch: children by name, wrappers included
        if child is None:
            return None
        module = child
    return _unwrap(module)


def _fans(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear-like module; None for kinds not checked here."""
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])  # GPT-2 Conv1D: weight [in, out]
    fan_in, fan_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(fan_in, int) and isinstance(fan_out, int):
        return fan_in, fan_out
    return None


def _weight_shape(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    return f" (shape {list(weight.shape)})" if weight is not None and hasattr(weight, "shape") else ""


def _check_lora(shape: tuple[int, ...], pk: PeftKey, base: nn.Module) -> str | None:
    """One problem with LoRA tensor ``pk`` on base module ``base``, or None."""
    from torch import nn  # noqa: PLC0415 - the SDK imports torch only when a PEFT function runs

    head = f"adapter tensor {pk.key} has shape {list(shape)} but base module {pk.module}"
    is_embedding = isinstance(base, nn.Embedding)
    if pk.embedding and not is_embedding:
        return f"{head} is a {type(base).__name__}, not an Embedding; {_DIFFERENT_BASE}"
    if pk.field in ("lora_A", "lora_B") and not pk.embedding and is_embedding:
        return f"{head} is an Embedding (PEFT saves embedding LoRA as lora_embedding_A/B); {_DIFFERENT_BASE}"
    rules: dict[str, tuple[int, str, int]]
    if isinstance(base, nn.Embedding):
        rules = {"lora_A": (1, "has num_embeddings", base.num_embeddings),
                 "lora_B": (0, "has embedding_dim", base.embedding_dim),
                 "magnitude": (-1, "has embedding_dim", base.embedding_dim)}
    else:
        fans = _fans(base)
        if fans is None:
            return None  # Conv2d, quantised or custom layers: left to PEFT
        rules = {"lora_A": (1, "takes in_features", fans[0]), "lora_B": (0, "gives out_features", fans[1]),
                 "magnitude": (-1, "gives out_features", fans[1])}
    if pk.field not in rules:
        return None  # lora_bias: left to PEFT
    dim, what, want = rules[pk.field]
    got = _numel(shape) if dim == -1 else (shape[dim] if len(shape) > dim else -1)
    if got == want:
        return None
    return f"{head} {what}={want}{_weight_shape(base)}; {_DIFFERENT_BASE}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_other(key: str, shape: tuple[int, ...], path: str, param: str, base: nn.Module) -> str | None:
    """A copied base tensor (modules_to_save, biases, a targeted embedding's weight) must match the base's shape."""
    name = param.removeprefix("base_layer.")
    own = getattr(base, name, None) if "." not in name else None
    if own is None or not hasattr(own, "shape") or tuple(own.shape) == tuple(shape):
        return None
    return (f"adapter tensor {key} has shape {list(shape)} but the base model's {path}.{name} has shape "
            f"{list(own.shape)}; {_DIFFERENT_BASE} (a resized vocabulary needs the same resize before loading)")


def _check_targets(config: dict[str, Any], root: nn.Module) -> None:
    """At least one module of the base model is selected by ``target_modules`` (a list of name suffixes, or a
    regex that must match a whole module name, as in PEFT)."""
    targets = config.get("target_modules")
    names = [name for name, _ in root.named_modules()]
    if isinstance(targets, str):
        try:
            if targets == "all-linear" or any(re.fullmatch(targets, n) for n in names):
                return
        except re.error:
            return  # PEFT reports a bad regex itself
        shown = repr(targets)
    elif isinstance(targets, list) and targets:
        wanted = [t for t in targets if isinstance(t, str)]
        if any(n == t or n.endswith("." + t) for n in names for t in wanted):
            return
        shown = str(sorted(wanted))
    else:
        return
    raise Incompatible(f"adapter_config.json targets modules {shown} but the base model ({type(root).__name__}) "
                       "has none of them; was the adapter trained on a different architecture?")


def check_compatible(model: nn.Module, directory: str | os.PathLike) -> None:
    """Raise Incompatible unless every tensor of the LoRA adapter in ``directory`` fits ``model``."""
    path = check_files(directory)
    config = read_config(path)
    if str(config.get("peft_type", "")).upper() != "LORA":
        return  # other PEFT methods: PEFT checks them itself
    root = _root(model)
    _check_targets(config, root)
    problems: list[str] = []
    shapes = read_shapes(path)
    keys = parse_peft_keys(shapes)  # InvalidAdapter for names outside the PEFT grammar, as the store and workers
    for key, shape in sorted(shapes.items()):  # sorted: the first problem is reported in full
        pk = keys[key]
        base = _walk(root, pk.module)
        if base is None:
            if pk.kind != "param":
                problems.append(f"adapter targets {pk.module} (tensor {key}) but the base model has no such "
                                "module; was it trained on a different architecture?")
            continue
        if pk.kind == "lora":
            problem = _check_lora(shape, pk, base)
        else:
            problem = _check_other(key, shape, pk.module, pk.param, base)
        if problem:
            problems.append(problem)
    if problems:
        more = f" ({len(problems) - 1} more tensors do not fit either)" if len(problems) > 1 else ""
        raise Incompatible(problems[0] + more + _base_hint(config, root))


def _base_hint(config: dict[str, Any], root: nn.Module) -> str:
    trained_on = config.get("base_model_name_or_path") or ""
    this = getattr(getattr(root, "config", None), "name_or_path", "") or ""
    if trained_on and this and trained_on != this:
        return f" The adapter was trained on {trained_on!r}; this base model is {this!r}."
    return ""


def load_device(model: nn.Module) -> str | None:
    """The device to load adapter weights onto: the base model's own. None for accelerate-dispatched models
    (``hf_device_map``: PEFT places them); ``"cpu"`` for a model spread over devices by hand (each tensor is then
    copied to its module's device). A base with parameters on ``meta`` raises FailedPrecondition."""
    if getattr(model, "hf_device_map", None):
        return None
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise FailedPrecondition(
            f"the base model has {len(meta)} parameters on the 'meta' device (e.g. {meta[0]}), which hold no "
            "values, so the adapter cannot be loaded onto it. Materialise the base model first: load it with "
            "from_pretrained() without init_empty_weights()/device='meta', or call model.to_empty(device=...) "
            "and load its weights"
        )
    devices = {p.device for p in model.parameters()}
    return str(devices.pop()) if len(devices) == 1 else "cpu"


def preflight(model: nn.Module, directory: str | os.PathLike) -> str | None:
    """Every check above; returns the ``torch_device`` to pass to PEFT (see :func:`load_device`)."""
    check_compatible(model, directory)
    return load_device(model)
