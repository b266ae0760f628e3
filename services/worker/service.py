"""The worker's domain API: resolve, lease, run on the engine, stream back. No generated stubs here."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapterfleet.common.errors import AdapterFleetError, InvalidArgument, Unavailable
from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.tiers import ACTIVE
from adapterfleet.store.aio_client import AsyncStoreClient
from adapterfleet.store.client import StoreClient
from adapterfleet.store.refs import Ref
from adapterfleet.worker.cache import AdapterCache, Entry, Lease
from adapterfleet.worker.config import WorkerConfig
from adapterfleet.worker.engine import Engine, GenerateJob, ScoreJob
from adapterfleet.worker.logprobs import Logprob, TokenLogprobs
from adapterfleet.worker.lora import NO_ADAPTER
from adapterfleet.worker.model_host import ModelHost
from adapterfleet.worker.params import GenerateParams
from adapterfleet.worker.text_stream import Output, StopStrings, decode
from adapterfleet.worker.validation import Bounds, check_generate, check_prompt, check_routing_key, check_text

__all__ = ["GenerateChunk", "GenerateParams", "WorkerCore"]

LAST_KEYS_KEPT = 4096  # refs whose last resolved key a worker remembers (to resolve hot refs without URLs)
TOKENIZE_OFF_LOOP = 2048  # characters: longer texts are tokenized in a thread, not on the event loop


@dataclass(frozen=True)
class GenerateChunk:
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str
    adapter_key: str
    prompt_tokens: int
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token, when asked for (texts filled in)
    completion_tokens: int = 0                # generated so far, resume_ids included


class WorkerCore:
    def __init__(self, cfg: WorkerConfig, host: ModelHost, cache: AdapterCache, engine: Engine, store: StoreClient,
                 metrics: ServiceMetrics):
        self.cfg = cfg
        self.metrics = metrics
        self.host = host
        self.cache = cache
        self.engine = engine
        self._store = store
        # resolves refs on the event loop (create_worker_server sets it): no thread hop per request; None: the
        # blocking client in a thread
        self.resolver: AsyncStoreClient | None = None
        self.inflight = 0  # requests in flight: the load the worker announces
        self.draining = False  # set on shutdown: new requests are refused (UNAVAILABLE: routers retry elsewhere)
        self._bounds: Bounds | None = None
        self._token_texts: dict[int, str] = {}  # token id -> its text alone (logprobs); at most the vocabulary
        self._last_keys: OrderedDict[str, str] = OrderedDict()  # ref -> the key it last resolved to (bounded)

    def close(self) -> None:
        """Its store client's channel and the direct reader's threads (a worker stopped in-process kept them)."""
        self._store.close()

    # --- refs -----------------------------------------------------------------------------------------------------
    async def resolve(self, ref: str, routing_key: str = "") -> str:
        """A ref -> the canonical key ``name@sha256:...``; '' (the base model) stays ''."""
        if not ref:
            return ""
        key = Ref.parse(ref).key
        if key is not None:
            return key
        # a ref whose last key this worker would have to fetch asks for presigned URLs too: the cold load then GETs
        # the files at once, without a Fetch call (a hot ref's resolve stays small)
        last = self._last_keys.get(ref)
        direct = self._store.direct.cfg.enabled and (last is None or self.cache.needs_fetch(last))
        try:
            if self.resolver is not None:
                resolved = await self.resolver.resolve(ref, routing_key, direct=direct)
                if direct:
                    self._store.keep_urls(resolved)  # for the fetch in the cache's thread
            else:
                resolved = await asyncio.to_thread(self._store.resolve, ref, routing_key, direct=direct)
        except AdapterFleetError as err:
            if err.code == "UNAVAILABLE":
                raise Unavailable(f"cannot resolve {ref}: the store at {self._store.address} is unreachable") from err
            raise
        self._last_keys[ref] = resolved.key
        self._last_keys.move_to_end(ref)
        if len(self._last_keys) > LAST_KEYS_KEPT:
            self._last_keys.popitem(last=False)
        return resolved.key

    async def _lease(self, ref: str, routing_key: str) -> tuple[str, Lease | None]:
        key = await self.resolve(ref, routing_key)
        return key, (await self.cache.acquire(key) if key else None)

    # --- serving --------------------------------------------------------------------------------------------------
    def bounds(self) -> Bounds:
        """What the loaded model and this worker's config allow a request."""
        if self._bounds is None:
            c = self.host.model.config
            self._bounds = Bounds(
                vocab=self.host.vocab, max_positions=getattr(c, "max_position_embeddings", None)
                or getattr(c, "n_positions", None), max_new_tokens=self.cfg.max_new_tokens_limit,
                max_prompt_tokens=self.cfg.max_prompt_tokens, max_text_chars=self.cfg.max_prompt_chars,
                tokenizer=self.host.tokenizer is not None)
        return self._bounds

    async def _tokenize(self, text: str) -> list[int]:
        tokenizer = self.host.tokenizer
        assert tokenizer is not None, "check_text refuses text without a tokenizer"
        if len(text) <= TOKENIZE_OFF_LOOP:
            return list(tokenizer(text)["input_ids"])
        return list((await asyncio.to_thread(tokenizer, text))["input_ids"])

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
        b = self.bounds()
        check_generate(p, b)
        prompt = list(p.prompt_ids) if p.prompt_ids else await self._tokenize(p.prompt)
        check_prompt(prompt, p.max_new_tokens, b, "prompt_ids" if p.prompt_ids else "prompt")
        key, lease = await self._lease(p.adapter, p.routing_key)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def emit(toks: list[int], fin: bool, why: str, logprobs: TokenLogprobs | None) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, (toks, fin, why, logprobs))

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, exc)

        job = GenerateJob(
            prompt_ids=prompt + list(p.resume_ids), slot=lease.slot if lease else NO_ADAPTER,
            max_new_tokens=p.max_new_tokens - len(p.resume_ids), sampling=p.sampling,
            stop_ids=frozenset(p.stop_ids or self.host.eos_ids), emit=emit, fail=fail,
            top_logprobs=p.top_logprobs if p.logprobs else -1, resumed=len(p.resume_ids),
        )
        output = Output(self.host.tokenizer, StopStrings(p.stop), p.resume_ids)
        try:
            self.engine.submit(job)
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                piece = output.add(*item)
                if piece is None:
                    continue
                yield GenerateChunk(piece.token_ids, piece.text, piece.finished, piece.finish_reason, key,
                                    len(prompt), tuple(self._with_texts(lp) for lp in piece.logprobs),
                                    piece.completion_tokens)
                if piece.finished:
                    return
        finally:
            job.cancelled.set()  # a caller that went away (or a stop string) frees its row at the next decode step
            if lease:
                lease.release()

    def _with_texts(self, lp: TokenLogprobs) -> TokenLogprobs:
        return TokenLogprobs(self._text_of(lp.chosen), tuple(self._text_of(t) for t in lp.top))

    def _text_of(self, lp: Logprob) -> Logprob:
        """``lp`` with the text of its token alone (special tokens included); memoised per token id."""
        if self.host.tokenizer is None:
            return lp
        text = self._token_texts.get(lp.token_id)
        if text is None:
            text = self._token_texts[lp.token_id] = decode(self.host.tokenizer, [lp.token_id], skip_special=False)
        return Logprob(lp.token_id, lp.logprob, text)

    async def score(self, adapter: str, token_ids: tuple[int, ...], text: str, routing_key: str = "") -> tuple[
            str, list[float]]:
        self._admit()
        b = self.bounds()
        check_routing_key(routing_key)
        if not token_ids:
            if not text:
                raise InvalidArgument("send text or token_ids to score")
            check_text("text", text, b)
        ids = list(token_ids) if token_ids else await self._tokenize(text)
        if len(ids) < 2:
            raise InvalidArgument("scoring needs at least 2 tokens (log p of token i+1 given tokens 0..i)")
        check_prompt(ids, 0, b, "token_ids" if token_ids else "text")
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


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
