"""Push-time rules for an adapter directory: file names, the file set, and tensors against adapter_config.json.

Pure: works on names, a :class:`LoraSpec` and a :class:`SafetensorsHeader`. It cannot check against a base model
(the store holds none); workers check modules and shapes against the loaded model before injecting.

Tensor names are parsed by :mod:`.peft_keys` (the PEFT key grammar, shared with the worker and the SDK).
"""

from __future__ import annotations

from collections import defaultdict

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.store.filenames import check_safe_file_name
from adapterfleet.store.peft_keys import LORA_BIAS_FIELDS, PeftKey, parse_peft_keys
from adapterfleet.store.safetensors_header import SafetensorsHeader, TensorInfo

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXTRA_SUFFIXES = (".json", ".md", ".txt")
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_ALLOWED = "adapter_config.json, adapter_model.safetensors, README.md and other *.json, *.md, *.txt files"


def check_file_name(name: str) -> None:
    check_safe_file_name(name)  # the one rule, shared with every receiver (store/filenames.py)
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise InvalidAdapter(
            f"{name} is a pickle file; adapterfleet never loads pickles, because unpickling runs arbitrary code. "
            "Convert it to safetensors: load the adapter and call PeftModel.save_pretrained(dir, "
            "safe_serialization=True), or, on a machine you trust, load the state dict with torch's loader "
            "(weights_only=True) and write it with safetensors.torch.save_file(state_dict, "
            "'adapter_model.safetensors', metadata={'format': 'pt'}); then push adapter_model.safetensors"
        )
    if name in REQUIRED_FILES or lower.endswith(EXTRA_SUFFIXES):
        return
    raise InvalidAdapter(f"file {name} is not allowed in an adapter directory; allowed: {_ALLOWED}")


def check_file_set(names: list[str], *, max_files: int = 64) -> None:
    """Every name passes :func:`check_file_name`; no duplicates (also none differing only in case); both required
    files are present."""
    if len(names) > max_files:
        raise InvalidAdapter(f"an adapter directory may hold at most {max_files} files, got {len(names)}")
    seen: dict[str, str] = {}
    for name in names:
        check_file_name(name)
        key = name.casefold()
        if key in seen:
            what = "twice" if seen[key] == name else f"twice ({seen[key]} and {name} differ only in case)"
            raise InvalidAdapter(f"file {name} is pushed {what}; push each file once")
        seen[key] = name
    missing = [f for f in REQUIRED_FILES if f not in names]
    if missing:
        raise InvalidAdapter(
            f"adapter directory is missing {' and '.join(missing)}; an adapter needs {' and '.join(REQUIRED_FILES)} "
            "(PeftModel.save_pretrained writes both)"
        )


def _saved_whole(spec: LoraSpec, module: str) -> bool:
    """Is ``module`` a module in modules_to_save, or inside one?"""
    parts = module.split(".") if module else []
    return any(spec.is_module_to_save(".".join(parts[:i])) for i in range(len(parts), 0, -1))


def _rank_origin(spec: LoraSpec, module: str) -> str:
    key = spec.rank_key(module)
    return f"rank {spec.r} (r)" if key is None else f"rank {spec.rank_pattern[key]} (rank_pattern {key!r})"


def _fail(t: TensorInfo, msg: str) -> InvalidAdapter:
    return InvalidAdapter(f"adapter_model.safetensors: tensor {t.name} {list(t.shape)}: {msg}")


def _classify(spec: LoraSpec, t: TensorInfo, key: PeftKey) -> bool:
    """Check that tensor ``t`` may be in the file. True if it belongs to a LoRA layer of ``key.module``."""
    module = key.module
    targeted = spec.targets(module)
    if key.kind == "lora":
        if key.field in LORA_BIAS_FIELDS:
            raise _fail(t, "a LoRA bias (lora_bias=True) is not supported; train the adapter with lora_bias=False")
        if not targeted:
            raise _fail(
                t,
                f"module {module} is not selected by target_modules={spec.target_modules!r} (with exclude_modules, "
                "layers_to_transform and modules_to_save applied); fix target_modules in adapter_config.json or "
                "remove the tensor",
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise _fail(t, f"dtype {t.dtype} is not a float dtype; save LoRA weights as F32, F16 or BF16")
        if key.field == "magnitude" and not spec.use_dora:
            raise _fail(t, "a DoRA magnitude vector, but adapter_config.json has use_dora=false; set use_dora=true")
        return True
    if _saved_whole(spec, module):
        return False
    if key.kind == "base_layer":
        if not targeted:
            raise _fail(t, f"module {module} is not selected by target_modules={spec.target_modules!r}")
        if key.field == "bias" and spec.bias == "none":
            raise _fail(t, "a bias is saved but adapter_config.json has bias='none'; set bias to 'all' or 'lora_only'")
        return True
    if key.param == "bias" and spec.bias == "all":
        return False
    if key.param == "bias":
        raise _fail(
            t,
            f"a bias of module {module}, which is neither a LoRA target nor in modules_to_save; only bias='all' "
            f"saves such biases (adapter_config.json has bias={spec.bias!r})",
        )
    raise _fail(
        t,
        f"module {module or '<root>'} is neither selected by target_modules={spec.target_modules!r} nor listed in "
        f"modules_to_save={list(spec.modules_to_save)!r}; add it to modules_to_save or remove the tensor",
    )


def _check_layer(spec: LoraSpec, module: str, parts: dict[str, TensorInfo], embedding: bool) -> None:
    """One LoRA layer (``parts``: field -> tensor, see peft_keys): factors present, 2-D, ranks agree with
    rank_for(), DoRA magnitude and base tensors fit. :func:`parse_peft_keys` already refused mixed forms."""
    any_t = next(iter(parts.values()))
    if "lora_A" not in parts and "lora_B" not in parts:
        raise _fail(any_t, f"module {module} has no lora_A/lora_B (or lora_embedding_A/B) pair; re-save the adapter")
    spelled = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
    names = dict(zip(("lora_A", "lora_B"), spelled, strict=True))
    for have, want in (("lora_A", "lora_B"), ("lora_B", "lora_A")):
        if want not in parts:
            msg = f"module {module} has {names[have]} but no {names[want]}; an adapter needs both factors"
            raise _fail(parts[have], msg)
    a, b = parts["lora_A"], parts["lora_B"]
    linear = not embedding
    for t, form in ((a, "[r, in_features]" if linear else "[r, num_embeddings]"), (b, "[out_features, r]")):
        if len(t.shape) != 2:
            raise _fail(t, f"expected a 2-D {form} matrix; only Linear, Conv1D and Embedding LoRA layers are served")
        if 0 in t.shape:
            raise _fail(t, "has a zero dimension; were ZeRO-3/FSDP shards gathered before save_pretrained()?")
    r = spec.rank_for(module)
    # A: [r, in]   B: [out, r]
    if a.shape[0] != r or b.shape[1] != r:
        raise InvalidAdapter(
            f"adapter_model.safetensors: module {module}: {a.name} is {list(a.shape)} and {b.name} is "
            f"{list(b.shape)}, but adapter_config.json gives it {_rank_origin(spec, module)}; expected "
            f"[{r}, in] and [out, {r}]. Fix r/rank_pattern in adapter_config.json to match the weights"
        )
    out_dim, in_dim = b.shape[0], a.shape[1]
    mag = parts.get("magnitude")
    if spec.use_dora and mag is None:
        raise _fail(b, f"adapter_config.json has use_dora=true but module {module} has no lora_magnitude_vector")
    if mag is not None and mag.shape != (out_dim,):
        raise _fail(mag, f"expected [{out_dim}], the out dimension of {b.name} {list(b.shape)}")
    bias = parts.get("bias")
    if bias is not None and bias.shape != (out_dim,):
        raise _fail(bias, f"expected [{out_dim}], the out dimension of {b.name} {list(b.shape)}")
    base = parts.get("base_weight")
    if base is not None:
        # Linear stores [out, in] (GPT-2 Conv1D with fan_in_fan_out: [in, out]); Embedding [num_embeddings, dim].
        fits = [(out_dim, in_dim)] if linear else [(in_dim, out_dim)]
        if linear and spec.fan_in_fan_out:
            fits.append((in_dim, out_dim))
        if base.shape not in fits:
            raise _fail(
                base, f"does not fit {a.name} {list(a.shape)} and {b.name} {list(b.shape)}; expected {list(fits[0])}"
            )


def check_adapter(spec: LoraSpec, header: SafetensorsHeader) -> None:
    keys = parse_peft_keys(header.tensors)  # refuses names outside the PEFT grammar, and duplicate spellings
    layers: dict[str, dict[str, TensorInfo]] = defaultdict(dict)
    embedding: set[str] = set()
    for name, t in header.tensors.items():
        key = keys[name]
        if _classify(spec, t, key):
            layers[key.module][key.field] = t  # (module, field) is unique: parse_peft_keys checked
            if key.embedding:
                embedding.add(key.module)
    for module, parts in layers.items():
        _check_layer(spec, module, parts, module in embedding)  # every layer here has an A/B pair after this
    if not layers:
        raise InvalidAdapter(
            "adapter_model.safetensors holds no LoRA tensors (lora_A/lora_B or lora_embedding_A/B); "
            "was it saved from a model without LoRA layers?"
        )
