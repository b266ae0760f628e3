"""The worker's batch engine: one thread that owns the model's forwards.

Continuous batching at decode-step granularity. Requests queue up; the engine takes everything waiting (up to
``max_batch``) as a batch, so a lone request on an idle engine starts at once. While a batch decodes, requests
that arrive are prefilled on their own and *joined* into the running batch between two decode steps (their KV
cache left-padded to the same length and concatenated along the batch), and scoring requests run between steps,
so nobody waits for a long generation to finish. Rows of one batch may use different adapter slots, or none. A
row that finishes (stop id, length, or a cancelled caller) leaves the batch at once (``batch_select_indices``).
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from adapterfleet.worker.lora import LoraModel
from adapterfleet.worker.sampling import Sampling, choose

Emit = Callable[[list[int], bool, str], None]  # (new token ids, finished, finish reason)


@dataclass
class GenerateJob:
    prompt_ids: list[int]
    slot: int
    max_new_tokens: int
    sampling: Sampling
    stop_ids: frozenset[int]
    emit: Emit
    fail: Callable[[BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class ScoreJob:
    token_ids: list[int]
    slot: int
    done: Callable[[list[float] | BaseException], None]


@dataclass
class EngineStats:
    requests: int = 0
    tokens: int = 0
    batches: int = 0
    running: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=4096))  # (time, tokens)

    def tokens_per_second(self, window: float = 60.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self.recent) if now - t <= window]
        if not recent:
            return 0.0
        return sum(n for _, n in recent) / max(now - recent[0][0], 1e-3)


class Engine:
    def __init__(self, model: torch.nn.Module, lora: LoraModel, *, pad_id: int, device: torch.device,
                 max_batch: int = 32):
        self._model = model
        self._lora = lora
        self._pad = pad_id
        self._device = device
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._backlog: list[GenerateJob] = []  # taken from the queue but not joinable into the running batch
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stats = EngineStats()
        params = inspect.signature(model.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adapterfleet-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread:
            self._thread.join(10)

    def submit(self, job: GenerateJob | ScoreJob) -> None:
        self._queue.put(job)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # --- the loop ---------------------------------------------------------------------------------------------------
    def _take(self, limit: int, block: bool) -> list[GenerateJob | ScoreJob]:
        """Up to ``limit`` waiting jobs (the backlog first); blocks for the first one only if ``block``."""
        jobs: list = []
        while self._backlog and len(jobs) < limit:
            jobs.append(self._backlog.pop(0))
        while len(jobs) < limit and not self._stop.is_set():
            try:
                job = self._queue.get(block=block and not jobs)
            except queue.Empty:
                break
            if job is None:
                self._stop.set()
                break
            jobs.append(job)
        self.stats.requests += len(jobs)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            jobs = self._take(self.max_batch, block=True)
            if not jobs:
                continue
            self.stats.batches += 1
            self._run_scores([j for j in jobs if isinstance(j, ScoreJob)])
            gens = [j for j in jobs if isinstance(j, GenerateJob) and not j.cancelled.is_set()]
            if gens:
                self.stats.running = len(gens)
                self._guard(gens, self._generate)
                self.stats.running = 0

    def _run_scores(self, scores: list[ScoreJob]) -> None:
        if scores:
            self._guard(scores, self._score)

    def _guard(self, jobs, run) -> None:
        try:
            with torch.inference_mode():
                run(jobs)
        except BaseException as exc:  # noqa: BLE001 - every caller gets the error, the engine goes on
            for job in jobs:
                if isinstance(job, ScoreJob):
                    job.done(exc)
                else:
                    job.fail(exc)

    # --- scoring ----------------------------------------------------------------------------------------------------
    def _score(self, jobs: list[ScoreJob]) -> None:
        longest = max(len(j.token_ids) for j in jobs)
        ids = torch.full((len(jobs), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), longest), dtype=torch.long)
        for i, j in enumerate(jobs):  # right padding: positions of real tokens start at 0
            ids[i, : len(j.token_ids)] = torch.tensor(j.token_ids)
            mask[i, : len(j.token_ids)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        with self._lora.rows([j.slot for j in jobs]):
            logits = self._model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [B, T, V]
        logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)                             # [B, T-1, V]
        picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu()            # [B, T-1]
        for i, j in enumerate(jobs):
            j.done(picked[i, : len(j.token_ids) - 1].tolist())

    # --- generation -------------------------------------------------------------------------------------------------
    def _forward(self, slots: list[int], **kw) -> torch.Tensor:
        if self._keep_arg:
            kw["logits_to_keep"] = 1
        kw[self._cache_arg] = kw.pop("cache")
        with self._lora.rows(slots):
            out = self._model(use_cache=True, **kw)
        return out.logits[:, -1, :].float()  # [B, V]

    def _prefill(self, jobs: list[GenerateJob]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """Left-padded prompts through the model: (last logits [B, V], cache, mask [B, T], last position [B, 1])."""
        longest = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), longest), dtype=torch.long)
        for i, j in enumerate(jobs):  # left padding: every row's next token lands in the last column
            ids[i, longest - len(j.prompt_ids):] = torch.tensor(j.prompt_ids)
            mask[i, longest - len(j.prompt_ids):] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                                      # [B, T]
        cache = DynamicCache()
        logits = self._forward([j.slot for j in jobs], input_ids=ids, attention_mask=mask, position_ids=positions,
                               cache=cache)
        return logits, cache, mask, positions[:, -1:]

    def _generate(self, jobs: list[GenerateJob]) -> None:
        logits, cache, mask, last_pos = self._prefill(jobs)
        live = list(range(len(jobs)))                # batch row -> index into jobs
        produced = [0] * len(jobs)
        generators = [j.sampling.generator() for j in jobs]
        while True:
            tokens = choose(logits, [jobs[k].sampling for k in live], [generators[k] for k in live])
            keep = self._emit(jobs, live, tokens, produced)
            if not keep:
                return
            next_ids = torch.tensor(tokens, device=self._device).unsqueeze(-1)                 # [B, 1]
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self._device)
                cache.batch_select_indices(index)
                mask, last_pos, next_ids = mask[index], last_pos[index], next_ids[index]
                live = [live[r] for r in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)                   # [B, T+1]
            last_pos = last_pos + 1
            logits = self._forward([jobs[k].slot for k in live], input_ids=next_ids, attention_mask=mask,
                                   position_ids=last_pos, cache=cache)
            # between two decode steps: scoring requests run, new generations join the batch
            waiting = self._take(self.max_batch - len(live), block=False)
            self._run_scores([j for j in waiting if isinstance(j, ScoreJob)])
            joining = [j for j in waiting if isinstance(j, GenerateJob) and not j.cancelled.is_set()]
            if joining and not _joinable(cache):
                self._backlog.extend(joining)  # an unusual cache layout: they start with the next batch
                joining = []
            if joining:
                try:
                    new_logits, new_cache, new_mask, new_pos = self._prefill(joining)
                except BaseException as exc:  # noqa: BLE001 - only the newcomers fail
                    for job in joining:
                        job.fail(exc)
                    continue
                _join_caches(cache, new_cache)
                width = max(mask.shape[1], new_mask.shape[1])
                mask = torch.cat([_pad_left(mask, width), _pad_left(new_mask, width)], dim=0)
                last_pos = torch.cat([last_pos, new_pos], dim=0)
                logits = torch.cat([logits, new_logits], dim=0)
                live += range(len(jobs), len(jobs) + len(joining))
                jobs += joining
                produced += [0] * len(joining)
                generators += [j.sampling.generator() for j in joining]
            self.stats.running = len(live)

    def _emit(self, jobs: list[GenerateJob], live: list[int], tokens: list[int], produced: list[int]) -> list[int]:
        """Send each row its token; return the batch rows that go on."""
        keep = []
        for row, (k, tok) in enumerate(zip(live, tokens, strict=True)):
            job = jobs[k]
            produced[k] += 1
            if job.cancelled.is_set():
                continue
            if tok in job.stop_ids:
                job.emit([tok], True, "stop")
            elif produced[k] >= job.max_new_tokens:
                job.emit([tok], True, "length")
            else:
                job.emit([tok], False, "")
                keep.append(row)
        self.stats.tokens += len(tokens)
        self.stats.recent.append((time.monotonic(), len(tokens)))
        return keep


def _pad_left(t: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``width`` (masked positions: their values are never attended to)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _joinable(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _filled(layer: object) -> tuple[DynamicLayer, torch.Tensor, torch.Tensor]:
    """A prefilled dynamic cache layer with its keys and values [B, heads, T, head_dim]."""
    assert isinstance(layer, DynamicLayer), "only joinable caches (_joinable) are joined"
    keys, values = layer.keys, layer.values
    assert keys is not None and values is not None, "a prefill fills every layer of its cache"
    return layer, keys, values


def _join_caches(cache: DynamicCache, new: DynamicCache) -> None:
    """Append ``new``'s rows to ``cache``: keys/values [B, heads, T, head_dim], the shorter left-padded."""
    for mine, theirs in zip(cache.layers, new.layers, strict=True):
        layer, keys, values = _filled(mine)
        _, other_keys, other_values = _filled(theirs)
        width = max(keys.shape[-2], other_keys.shape[-2])
        layer.keys = torch.cat([_pad_left(keys, width, -2), _pad_left(other_keys, width, -2)], dim=0)
        layer.values = torch.cat([_pad_left(values, width, -2), _pad_left(other_values, width, -2)], dim=0)
