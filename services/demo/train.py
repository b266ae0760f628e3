"""Train one demo adapter with PEFT on the CPU: LoRA on every projection and lm_head, full-batch AdamW.

The demo base is random with tiny output weights (logits of about +-1), so LoRA on the attention and MLP layers
alone learns the right argmax but with a margin of a fraction of a logit; adding ``lm_head`` lets the adapter
answer with margins of several logits, which survive any difference in how a worker batches the same math.
Deterministic: a fixed seed, one thread, no dropout. torch and peft are imported here, so import this lazily.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapterfleet.demo.recipe import PROJECTIONS, TrainConfig, TrainResult
from adapterfleet.demo.tasks import Task
from adapterfleet.sdk.peft import stabilize_config

__all__ = ["PROJECTIONS", "TrainConfig", "TrainResult", "make_batch", "train_adapter"]


def make_batch(tokenizer, examples: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + answer + eos`` rows; labels only on the answer and eos (-100 elsewhere).

    Returns (input_ids, attention_mask, labels), each ``[examples, longest row]``.
    """
    rows = []
    for prompt, answer in examples:
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p, a))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # [n, width]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [n, width]
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # [n, width]
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(a)
    return ids, mask, labels


def train_adapter(base_dir: str | Path, task: Task, out_dir: str | Path, cfg: TrainConfig | None = None
                  ) -> TrainResult:
    """Train ``task`` on the base model in ``base_dir``; write the PEFT adapter directory ``out_dir``."""
    cfg = cfg or TrainConfig()
    if cfg.steps < 1:
        raise ValueError(f"steps must be at least 1, got {cfg.steps}")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, use_safetensors=True)
        model = get_peft_model(base, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                                                target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
        loss = _fit(model, make_batch(tokenizer, task.examples()), cfg)
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), save_embedding_layers=False)  # the LoRA tensors only, not lm_head
        stabilize_config(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        torch.set_num_threads(threads)
    return TrainResult(task.name, out, loss, time.perf_counter() - started)


def _fit(model, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cfg: TrainConfig) -> float:
    ids, mask, labels = batch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (1.0 - s / cfg.steps))
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
    model.eval()
    return float(loss.detach())
