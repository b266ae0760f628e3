"""The worker's batch engine: one thread that owns the model's forwards.

Requests queue up while a batch runs; when the engine is free it takes everything waiting (up to ``max_batch``)
as the next batch, so a lone request on an idle engine starts at once and a busy engine batches naturally
(dynamic batching). Rows of one batch may use different adapter slots, or none. Generation runs prefill on the
left-padded prompts, then one decode step at a time over the KV cache; a row that finishes (stop id, length, or a
cancelled caller) leaves the batch at once (``batch_select_indices``) so the rest run on fewer rows.
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

from services.worker.lora import LoraModel
from services.worker.sampling import Sampling, choose

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
    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._stop.set()
                    break
                jobs.append(job)
            scores = [j for j in jobs if isinstance(j, ScoreJob)]
            gens = [j for j in jobs if isinstance(j, GenerateJob) and not j.cancelled.is_set()]
            self.stats.requests += len(jobs)
            self.stats.batches += 1
            self.stats.running = len(jobs)
            if scores:
                self._guard(scores, self._score)
            if gens:
                self._guard(gens, self._generate)
            self.stats.running = 0

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

    def _generate(self, jobs: list[GenerateJob]) -> None:
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
        live = list(range(len(jobs)))                # batch row -> job index
        produced = [0] * len(jobs)
        generators = [j.sampling.generator() for j in jobs]
        last_pos = positions[:, -1:]                                                         # [B, 1]
        while True:
            tokens = choose(logits, [jobs[k].sampling for k in live], [generators[k] for k in live])
            keep, emitted = [], 0
            for row, (k, tok) in enumerate(zip(live, tokens)):
                job = jobs[k]
                produced[k] += 1
                emitted += 1
                if job.cancelled.is_set():
                    continue
                if tok in job.stop_ids:
                    job.emit([tok], True, "stop")
                elif produced[k] >= job.max_new_tokens:
                    job.emit([tok], True, "length")
                else:
                    job.emit([tok], False, "")
                    keep.append(row)
            self.stats.tokens += emitted
            self.stats.recent.append((time.monotonic(), emitted))
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

