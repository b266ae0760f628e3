"""Fixtures of the worker tests: tiny base models and PEFT adapters, built once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests.helpers.models import ADAPTER_VARIANTS, make_base_model, make_peft_adapter, variant_config


class Zoo:
    """Base models and adapters under one temp dir, made on first use and then reused."""

    def __init__(self, root: Path):
        self.root = root
        self._bases: dict[str, Path] = {}
        self._adapters: dict[tuple[str, str], Path] = {}

    def base(self, arch: str) -> Path:
        if arch not in self._bases:
            self._bases[arch] = make_base_model(arch, self.root / arch / "base", seed=0)
        return self._bases[arch]

    def variants(self, arch: str) -> list[str]:
        return [v for v in ADAPTER_VARIANTS if variant_config(arch, v) is not None]

    def adapter(self, arch: str, variant: str) -> Path:
        """A named variant of ``tests.helpers.models.variant_config``."""
        kwargs = variant_config(arch, variant)
        if kwargs is None:
            raise ValueError(f"variant {variant} does not apply to {arch}")
        return self.custom(arch, variant, seed=1 + ADAPTER_VARIANTS.index(variant), **kwargs)

    def custom(self, arch: str, name: str, *, seed: int, **lora_config_kwargs) -> Path:
        """An adapter with explicit LoraConfig kwargs, cached under ``name``."""
        key = (arch, name)
        if key not in self._adapters:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._adapters[key] = make_peft_adapter(
                    self.base(arch), self.root / arch / name, seed=seed, **lora_config_kwargs
                )
        return self._adapters[key]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return Zoo(tmp_path_factory.mktemp("lora_zoo"))


@pytest.fixture(scope="session")
def char_model(zoo) -> tuple[Path, Path]:
    """A tiny Llama with the character tokenizer (one token per character, vocabulary 79), and a PEFT adapter."""
    from tests.helpers.tokenizer import save_char_tokenizer

    base = zoo.root / "chars" / "base"
    if not base.exists():
        make_base_model("llama", base, seed=0, vocab_size=79)
        save_char_tokenizer(base, 79)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = make_peft_adapter(base, zoo.root / "chars" / "adapter", seed=5, r=4,
                                    target_modules=["q_proj", "v_proj"])
    return base, adapter


@pytest.fixture
def char_worker(store, char_model, tmp_path):
    """A worker on ``char_model`` with its adapter pushed: (stub, core, adapter key, address)."""
    import grpc

    from adapterfleet.v1 import worker_pb2_grpc
    from adapterfleet.worker.config import WorkerConfig
    from tests.helpers.servers import start_worker

    base, adapter = char_model
    key = str(store.client().push_dir(adapter, "acme/chars").manifest.key)
    cfg = WorkerConfig(base_model=str(base), store=store.address, max_slots=2, disk_dir=str(tmp_path / "cache"),
                       max_batch=64, max_prompt_chars=1000)
    address, core, stop = start_worker(cfg)
    channel = grpc.insecure_channel(address)
    yield worker_pb2_grpc.WorkerStub(channel), core, key, address
    channel.close()
    stop()
