"""Synthetic PEFT LoRA adapter directories, written with numpy + safetensors (no torch): fast store tests.

Keys and shapes follow what PEFT's save_pretrained writes for a Llama-shaped model:
  base_model.model.model.layers.<i>.self_attn.<proj>.lora_A.weight  [r, hidden]
  base_model.model.model.layers.<i>.self_attn.<proj>.lora_B.weight  [hidden, r]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def lora_config(r: int = 4, targets=("q_proj", "v_proj"), **extra) -> dict:
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "target_modules": list(targets),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "tiny-llama",
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": False, "use_dora": False,
    }
    config.update(extra)
    return config


def lora_tensors(r: int = 4, hidden: int = 32, layers: int = 2, targets=("q_proj", "v_proj"), seed: int = 0,
                 dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(layers):
        for t in targets:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{t}"
            out[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(dtype)
            out[f"{prefix}.lora_B.weight"] = rng.standard_normal((hidden, r)).astype(dtype)
    return out


def write_adapter(path: Path, *, r: int = 4, hidden: int = 32, layers: int = 2, seed: int = 0,
                  targets=("q_proj", "v_proj"), config: dict | None = None, tensors: dict | None = None,
                  readme: str | None = "synthetic adapter\n") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else lora_config(r, targets)
    (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tensors if tensors is not None else lora_tensors(r, hidden, layers, targets, seed),
              str(path / "adapter_model.safetensors"))
    if readme is not None:
        (path / "README.md").write_text(readme)
    return path


def big_adapter(path: Path, megabytes: int, seed: int = 0) -> Path:
    """An adapter of about `megabytes` MB (rank 64, hidden 4096, q/k/v/o over as many layers as it takes)."""
    r, hidden, targets = 64, 4096, ("q_proj", "k_proj", "v_proj", "o_proj")
    per_layer = len(targets) * 2 * r * hidden * 4
    layers = max(1, round(megabytes * 1_000_000 / per_layer))
    return write_adapter(path, r=r, hidden=hidden, layers=layers, seed=seed, targets=targets)
