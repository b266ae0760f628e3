"""The base model a worker serves: loaded once from a transformers directory, with its fingerprint."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from adapterfleet.common.errors import FailedPrecondition, InvalidArgument
from adapterfleet.store.base_model import fingerprint
from adapterfleet.worker.lora import few_rows, packed

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelHost:
    path: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    eos_ids: tuple[int, ...]
    pad_id: int

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "float32", *, packed_weights: bool = True,
             batch_hint: int = 64) -> ModelHost:
        """Load a ``save_pretrained`` directory. ``packed_weights``: prepack float32 CPU linear weights for oneDNN
        (:mod:`adapterfleet.worker.lora.packed`; twice the linear weights' memory), laid out for ``batch_hint`` rows."""
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - heavy; only when loading

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FailedPrecondition(f"{path} is not a transformers model directory (no config.json); pass "
                                     "--base-model the directory save_pretrained wrote")
        if dtype not in DTYPES:
            raise InvalidArgument(f"--dtype {dtype} is not one of {sorted(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FailedPrecondition(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], use_safetensors=True)
        # PreTrainedModel.to is functools.wraps(nn.Module.to), which typeshed leaves unbound: call it as the Module
        module: nn.Module = model
        module.to(device).eval()
        model.requires_grad_(False)
        contiguous_head(model)
        if packed_weights:
            packed.pack_linears(model, batch_hint)
        tokenizer = None
        if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else model.config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        vocab = embedding_rows(model)
        return cls(str(path), model, tokenizer, torch.device(device), DTYPES[dtype], fingerprint(model), eos_ids,
                   choose_pad(model.config.pad_token_id, eos_ids, vocab))

    @property
    def vocab(self) -> int:
        """Rows of the input embedding: every token id fed to the model must be below this."""
        return embedding_rows(self.model)


def contiguous_head(model: nn.Module) -> None:
    """Feed the output head a contiguous input. The engine asks for the last position's logits only
    (``logits_to_keep=1``), and the head then gets a strided slice [B, 1, hidden] of the final hidden states, which
    ``F.linear`` runs as a ``bmm`` against the weight broadcast B times: for a 32,000-token vocabulary and 31 rows,
    112 ms instead of ~15 ms, on every prefill and every prefill chunk (measured: 31 x 64 prompt tokens in 8 chunks
    took 2.1 s, 1.1 s with this). The copy is one [B, hidden] row per sequence. A plain ``nn.Linear`` head also runs
    a decode step's few rows in the transposed form (:mod:`adapterfleet.worker.lora.few_rows`): for 2-8 rows and a
    32,000-token vocabulary, ~4-7 ms instead of ~13-14."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if isinstance(head, nn.Module):
        head.register_forward_pre_hook(_contiguous_first_arg)
        if type(head) is nn.Linear:  # a decode step's few rows: the transposed GEMM (lora/few_rows.py)
            head.forward = partial(_few_rows_head, head)  # type: ignore[method-assign]  # this instance only


def _few_rows_head(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return few_rows.linear(x, head.weight, head.bias)


def _contiguous_first_arg(_module: nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def embedding_rows(model: PreTrainedModel) -> int:
    # torch types a Module's attributes as Tensor | Module; an input embedding's num_embeddings is an int
    return cast(int, model.get_input_embeddings().num_embeddings)


def choose_pad(pad: int | None, eos_ids: tuple[int, ...], vocab: int) -> int:
    """The id written into padded positions: the config's pad id, else an eos id, else 0 — the first that lies
    inside the embedding (a config may name one outside it; transformers only warns). Padded positions are masked,
    so any valid id gives the same results; an invalid one would fail every padded batch with an IndexError."""
    for candidate in (pad, *eos_ids):
        if candidate is not None and 0 <= candidate < vocab:
            return int(candidate)
    return 0
