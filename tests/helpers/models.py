"""Tiny base models of real architectures, and real PEFT adapters for them.

No machine here can download weights, so tests build base models from a config with a fixed seed and save them
with ``save_pretrained``, exactly as a real base model directory looks. ``make_peft_adapter`` makes a PEFT LoRA
adapter for such a base (random non-zero B so it is not a no-op, optionally a few training steps) and saves it with
PEFT's own ``save_pretrained``.

    base = make_base_model("llama", tmp / "base", seed=0)
    adir = make_peft_adapter(base, tmp / "a1", seed=1, r=8, target_modules=["q_proj", "v_proj"])
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHITECTURES = ("llama", "gpt2", "qwen2", "mistral", "opt")

# Small but real: 2 layers, hidden 32-64, vocab 128-256. Attention implementation "eager" keeps CPU runs exact
# and identical between PEFT and the worker.
_CONFIGS: dict[str, dict] = {
    "llama": dict(
        model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    ),
    "gpt2": dict(
        model_type="gpt2", vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=128,
        tie_word_embeddings=True,
    ),
    "qwen2": dict(
        model_type="qwen2", vocab_size=160, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    ),
    "mistral": dict(
        model_type="mistral", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, sliding_window=None,
        tie_word_embeddings=False,
    ),
    "opt": dict(
        model_type="opt", vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=32, tie_word_embeddings=True,
    ),
}

# The modules a typical adapter targets, per architecture (PEFT suffix names).
ATTENTION_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "qwen2": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
}
ALL_LINEAR_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
EMBEDDING_TARGET: dict[str, str] = {
    "llama": "embed_tokens", "gpt2": "wte", "qwen2": "embed_tokens", "mistral": "embed_tokens", "opt": "embed_tokens",
}


def base_config(arch: str, **overrides):
    """The transformers config of the tiny ``arch`` model (overrides e.g. ``hidden_size=48``)."""
    from transformers import AutoConfig

    if arch not in _CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    kwargs = dict(_CONFIGS[arch])
    model_type = kwargs.pop("model_type")
    kwargs.update(overrides)
    if arch == "gpt2" and "hidden_size" in kwargs:
        kwargs["n_embd"] = kwargs.pop("hidden_size")
    if arch == "opt" and "hidden_size" in kwargs:
        kwargs["word_embed_proj_dim"] = kwargs["hidden_size"]
    return AutoConfig.for_model(model_type, attn_implementation="eager", **kwargs)


def make_base_model(arch: str, path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Build the tiny ``arch`` causal LM with a fixed seed, save it (safetensors) to ``path``; return ``path``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    config = base_config(arch, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # biases default to zero; make them visible so bias handling is exercised
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(path)
    return path


def load_base_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a saved base model for inference (eval mode, eager attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return model.eval()


def make_peft_adapter(
    base_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    train_steps: int = 0,
    **lora_config_kwargs,
) -> Path:
    """Make a PEFT LoRA adapter for the base model at ``base_path`` and ``save_pretrained`` it to ``out_dir``.

    ``lora_config_kwargs`` go to ``peft.LoraConfig`` (``r``, ``lora_alpha``, ``target_modules``, ``use_dora``,
    ``modules_to_save``, ``bias``, ...). LoRA B (and trainable biases / module copies / DoRA magnitudes) are
    randomised with ``seed`` so the adapter visibly changes outputs; ``train_steps`` then runs a few SGD steps on
    random tokens on top.
    """
    from peft import LoraConfig, get_peft_model

    out_dir = Path(out_dir)
    lora_config_kwargs.setdefault("task_type", "CAUSAL_LM")
    lora_config_kwargs.setdefault("lora_dropout", 0.0)
    lora_config_kwargs.setdefault("init_lora_weights", False)
    config = LoraConfig(**lora_config_kwargs)
    model = get_peft_model(load_base_model(base_path), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * noise)  # keep magnitudes positive and near ||W||
            elif "lora_" in name:
                p.copy_(0.1 * noise)
            else:  # trainable biases, modules_to_save copies: perturb around the base values
                p.add_(0.05 * noise)
    if train_steps:
        vocab = model.config.vocab_size
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(train_steps):
            ids = torch.randint(0, vocab, (2, 8), generator=gen)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
    model.save_pretrained(out_dir)
    return out_dir


# Named adapter variants used across the worker tests: (arch) -> LoraConfig kwargs. Different ranks on purpose,
# so that a mixed batch holds adapters of different ranks side by side.
ADAPTER_VARIANTS = ("plain", "rslora", "pattern", "dora", "modules_to_save", "bias", "embedding")
_HAS_BIAS = {"gpt2": "all", "qwen2": "lora_only", "opt": "all"}  # archs whose linears carry biases


def variant_config(arch: str, variant: str) -> dict | None:
    """LoraConfig kwargs (+ ``train_steps``) for a named variant on ``arch``; None if it does not apply there."""
    attn, all_linear, emb = ATTENTION_TARGETS[arch], ALL_LINEAR_TARGETS[arch], EMBEDDING_TARGET[arch]
    if variant == "plain":
        return dict(r=8, lora_alpha=16, target_modules=attn)
    if variant == "rslora":
        return dict(r=4, lora_alpha=8, use_rslora=True, target_modules=all_linear, train_steps=2)
    if variant == "pattern":
        first, second = all_linear[0], all_linear[-1]
        return dict(
            r=6, lora_alpha=12, target_modules=all_linear,
            rank_pattern={second: 2, f"1.{'attn' if arch == 'gpt2' else 'self_attn'}.{first}": 3},
            alpha_pattern={first: 5},
        )
    if variant == "dora":
        return dict(r=4, lora_alpha=8, use_dora=True, target_modules=[*attn, emb])
    if variant == "modules_to_save":
        return dict(r=2, lora_alpha=4, target_modules=attn, modules_to_save=["lm_head"])
    if variant == "bias":
        if arch not in _HAS_BIAS:
            return None
        return dict(r=4, lora_alpha=4, target_modules=attn, bias=_HAS_BIAS[arch])
    if variant == "embedding":
        return dict(r=4, lora_alpha=8, target_modules=[emb, attn[0]])
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(ADAPTER_VARIANTS)}")
