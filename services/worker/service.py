"""The worker's domain API: resolve, lease, run on the engine, stream back. No generated stubs here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from adapterfleet.common.errors import AdapterFleetError, InvalidArgument, Unavailable
from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.tiers import ACTIVE
from adapterfleet.store.client import StoreClient
from adapterfleet.store.refs import Ref
from adapterfleet.worker.cache import AdapterCache, Entry, Lease
from adapterfleet.worker.config import WorkerConfig
from adapterfleet.worker.engine import Engine, GenerateJob, ScoreJob
from adapterfleet.worker.lora import NO_ADAPTER
from adapterfleet.worker.model_host import ModelHost
from adapterfleet.worker.sampling import Sampling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerateParams:
    adapter: str = ""
    prompt: str = ""
    prompt_ids: tuple[int, ...] = ()
    max_new_tokens: int = 16
    sampling: Sampling = Sampling()
    stop_ids: tuple[int, ...] = ()
    routing_key: str = ""
    resume_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerateChunk:
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str
    adapter_key: str
    prompt_tokens: int


class WorkerCore:
    def __init__(self, cfg: WorkerConfig, host: ModelHost, cache: AdapterCache, engine: Engine, store: StoreClient,
                 metrics: ServiceMetrics):
        self.cfg = cfg
        self.metrics = metrics
        self.host = host
        self.cache = cache
        self.engine = engine
        self._store = store
        self.inflight = 0  # requests in flight: the load the worker announces
        self.draining = False  # set on shutdown: new requests are refused (UNAVAILABLE: routers retry elsewhere)

    # --- refs -----------------------------------------------------------------------------------------------------
    async def resolve(self, ref: str, routing_key: str = "") -> str:
        """A ref -> the canonical key ``name@sha256:...``; '' (the base model) stays ''."""
        if not ref:
            return ""
        key = Ref.parse(ref).key
        if key is not None:
            return key
        try:
            resolved = await asyncio.to_thread(self._store.resolve, ref, routing_key)
        except AdapterFleetError as err:
            if err.code == "UNAVAILABLE":
                raise Unavailable(f"cannot resolve {ref}: the store at {self._store.address} is unreachable") from err
            raise
        return resolved.key

    async def _lease(self, ref: str, routing_key: str) -> tuple[str, Lease | None]:
        key = await self.resolve(ref, routing_key)
        return key, (await self.cache.acquire(key) if key else None)

    # --- serving --------------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str, ids: tuple[int, ...]) -> list[int]:
        if ids:
            out = list(ids)
        elif prompt:
            if self.host.tokenizer is None:
                raise InvalidArgument("this base model has no tokenizer; send prompt_ids instead of text")
            out = self.host.tokenizer(prompt)["input_ids"]
        else:
            raise InvalidArgument("send a prompt (text) or prompt_ids")
        # torch types a Module's attributes as Tensor | Module; an input embedding's num_embeddings is an int
        vocab = cast(int, self.host.model.get_input_embeddings().num_embeddings)
        bad = [t for t in out if not 0 <= t < vocab]
        if bad:
            raise InvalidArgument(f"token ids {bad[:5]} are outside the vocabulary (size {vocab})")
        return out

    def _max_positions(self) -> int | None:
        c = self.host.model.config
        return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)

    def _admit(self) -> None:
        if self.draining:
            raise Unavailable("this worker is draining for shutdown; retry on another worker")

    async def generate(self, p: GenerateParams) -> AsyncIterator[GenerateChunk]:
        self._admit()
        self.inflight += 1
        try:
            async for chunk in self._generate(p):
                yield chunk
        finally:
            self.inflight -= 1

    async def _generate(self, p: GenerateParams) -> AsyncIterator[GenerateChunk]:
        prompt = self._prompt_ids(p.prompt, p.prompt_ids)
        if p.max_new_tokens < 1 or p.max_new_tokens > self.cfg.max_new_tokens_limit:
            raise InvalidArgument(f"max_new_tokens {p.max_new_tokens} must be 1..{self.cfg.max_new_tokens_limit}")
        if len(p.resume_ids) >= p.max_new_tokens:
            raise InvalidArgument(f"{len(p.resume_ids)} resume_ids leave nothing of max_new_tokens "
                                  f"{p.max_new_tokens} to generate")
        ids = prompt + list(self._prompt_ids("", p.resume_ids)) if p.resume_ids else prompt
        limit = self._max_positions()
        if limit and len(prompt) + p.max_new_tokens > limit:
            raise InvalidArgument(f"prompt of {len(ids)} tokens + max_new_tokens {p.max_new_tokens} exceeds the "
                                  f"model's {limit} positions; shorten the prompt or ask for fewer tokens")
        key, lease = await self._lease(p.adapter, p.routing_key)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def emit(toks: list[int], fin: bool, why: str) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, (toks, fin, why))

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, exc)

        job = GenerateJob(
            prompt_ids=ids, slot=lease.slot if lease else NO_ADAPTER,
            max_new_tokens=p.max_new_tokens - len(p.resume_ids),
            sampling=p.sampling, stop_ids=frozenset(p.stop_ids or self.host.eos_ids),
            emit=emit, fail=fail,
        )
        generated: list[int] = list(p.resume_ids)
        text_so_far = ""
        if self.host.tokenizer is not None and generated:  # resumed: the caller already has this text
            text_so_far = _decode(self.host.tokenizer, generated)
        try:
            self.engine.submit(job)
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                toks, finished, why = item
                generated += toks
                text = ""
                if self.host.tokenizer is not None:
                    full = _decode(self.host.tokenizer, generated)
                    text, text_so_far = full[len(text_so_far):], full
                yield GenerateChunk(toks, text, finished, why, key, len(prompt))
                if finished:
                    return
        finally:
            job.cancelled.set()  # a caller that went away frees its row at the next decode step
            if lease:
                lease.release()

    async def score(self, adapter: str, token_ids: tuple[int, ...], text: str, routing_key: str = "") -> tuple[
            str, list[float]]:
        self._admit()
        ids = self._prompt_ids(text, token_ids)
        if len(ids) < 2:
            raise InvalidArgument("scoring needs at least 2 tokens (log p of token i+1 given tokens 0..i)")
        limit = self._max_positions()
        if limit and len(ids) > limit:
            raise InvalidArgument(f"{len(ids)} tokens exceed the model's {limit} positions")
        key, lease = await self._lease(adapter, routing_key)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(result: list[float] | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, done, result)

        self.inflight += 1
        try:
            self.engine.submit(ScoreJob(ids, lease.slot if lease else NO_ADAPTER, settle))
            return key, await done
        finally:
            self.inflight -= 1
            if lease:
                lease.release()

    # --- management -------------------------------------------------------------------------------------------------
    async def load(self, ref: str, pin: bool = False, tier: str = ACTIVE) -> Entry:
        key = await self.resolve(ref)
        if not key:
            raise InvalidArgument("LoadAdapter needs an adapter ref")
        return await self.cache.prefetch(key, tier or ACTIVE, pin)

    async def unload(self, ref: str) -> bool:
        return await self.cache.unload(await self.resolve(ref))

    async def pin(self, ref: str, pinned: bool) -> Entry:
        return self.cache.pin(await self.resolve(ref), pinned)


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert isinstance(text, str)  # one sequence of ids decodes to one string (only a batch gives a list)
    return text


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
