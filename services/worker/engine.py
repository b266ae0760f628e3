"""The worker's batch engine: one thread that owns the model's forwards.

Continuous batching at decode-step granularity. Requests queue up; the engine takes everything waiting (up to
``max_batch``) as a batch, so a lone request on an idle engine starts at once. While a batch decodes, requests
that arrive are prefilled on their own and *joined* into the running batch between two decode steps (their KV
cache left-padded to the same length and concatenated along the batch), and scoring requests run between steps,
so nobody waits for a long generation to finish. Rows of one batch may use different adapter slots, or none. A
row that finishes (stop id, length, or a cancelled caller) leaves the batch at once (``batch_select_indices``).

Chunked prefill: a newcomer's prefill would stall the running decodes for as long as it takes, so when rows are
decoding and the newcomers' prefill is bigger than one chunk, it is split into chunks of columns (its own KV cache
grows chunk by chunk) and exactly one chunk runs between two decode steps: a decode step never waits for more than
one chunk of prefill work. A chunk is ``prefill_chunk_tokens`` (rows x columns of the left-padded prompts) times
the number of newcomers per running row, at least once: it stalls the running rows to start the newcomers, so a
few rows decoding while a whole wave waits take the wave in one go (``_begin``). The last chunk's logits start the
newcomers, which are then joined like any other. While a chunked prefill is under way, further generations wait
for it to end (scoring requests still run between steps). An idle engine, or one whose running rows all finished,
prefills in one go (nobody is waiting). ``prefill_chunk_tokens=0``: never chunk. Greedy tokens are those of a
one-shot prefill (the chunks attend to the same keys; only float rounding of the split matmuls differs).

Fused steps: where ``ragged.py`` supports the model (``fuse``, the default), the newcomers' next chunk (or their
whole prefill, when it is one chunk) is not a forward of its own: it rides in the next decode step's forward, so
the weights are read once for both. The step log then shows that decode step, then the chunk. Each newcomer then
has a cache of its own and a chunk carries only its own tokens (``Prefill.own``): newcomers of different lengths
are chunked by the columns of their left-padded prompts, but the padding is never computed (in the open loop of
``benchmarks/engine_vs_vllm.py`` it was a fifth of the prefill tokens), and the caches are joined once the last
chunk is in. A fused forward that raises is undone and the newcomers' prefill runs as separate, left-padded
forwards (which find the rows that fail alone).

One bad row fails alone (``isolation.py``): a forward that raises is retried on halves of the batch until the rows
that fail on their own are found; they fail with a typed error and the rest go on. A row whose logits are not
finite, or whose sampling raises, fails alone too (``step.py``).
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from adapterfleet.worker import ragged
from adapterfleet.worker.config import WorkerConfig
from adapterfleet.worker.isolation import batch_error, culprits, non_finite, row_error
from adapterfleet.worker.jobs import GenerateJob, Row, ScoreJob
from adapterfleet.worker.kvcache import (
    cache_arg,
    drop_left,
    fill_order,
    join_caches,
    joinable,
    new_cache,
    pad_left,
    stack_caches,
    subset,
    truncate,
)
from adapterfleet.worker.lora import LoraModel
from adapterfleet.worker.lora.native import DecodeAttention
from adapterfleet.worker.step import Choice, choose
from adapterfleet.worker.threads import pin as pin_threads

__all__ = ["Engine", "EngineStats", "GenerateJob", "ScoreJob"]

# a running batch: (last logits [B, V], KV cache, attention mask [B, T], last position [B, 1], its rows)
Batch = tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor, list[Row]]
# what the engine just ran, for tests and benchmarks: ("decode" | "prefill", rows, tokens fed to the model)
StepHook = Callable[[str, int, int], None]
PREFILL_CHUNK_TOKENS = WorkerConfig.prefill_chunk_tokens  # one default, the worker's


@dataclass
class Prefill:
    """Newcomers whose prefill runs in chunks of ``step`` columns between decode steps."""

    jobs: list[GenerateJob]
    ids: torch.Tensor        # [B, L] left-padded prompts
    mask: torch.Tensor       # [B, L]
    positions: torch.Tensor  # [B, L]
    step: int                # columns per chunk
    cache: DynamicCache = field(default_factory=new_cache)
    done: int = 0            # columns already in the cache
    separate: bool = False   # a fused step with these raised: its chunks run as forwards of their own
    # ragged (where ragged.py supports the model): one cache per newcomer, fed its own tokens only, so no chunk
    # computes left padding; None: the left-padded rows share ``cache``
    own: list[DynamicCache] | None = None

    def segments(self, end: int) -> list[ragged.Segment]:
        """Columns ``done:end`` for a ragged forward: a segment per newcomer that has tokens of its own there
        (``own``), else the left-padded rows as one."""
        width = self.ids.shape[1]
        if self.own is None:
            return [ragged.Segment(self.cache, self.ids[:, self.done:end], self.positions[:, self.done:end],
                                   self.mask[:, :end], [j.slot for j in self.jobs], keep=end == width)]
        out = []
        for i, job in enumerate(self.jobs):
            first = width - len(job.prompt_ids)  # the newcomer's padding ends here
            begin = max(self.done, first)
            if begin < end:
                out.append(ragged.Segment(self.own[i], self.ids[i:i + 1, begin:end], self.positions[i:i + 1, begin:end],
                                          self.mask[i:i + 1, first:end], [job.slot], keep=end == width))
        return out

    def started(self, logits: Sequence[torch.Tensor | None]) -> Batch:
        """The newcomers as one batch once their last chunk is in: ``logits`` [1, V] per newcomer with a cache of
        its own (their caches stacked, left-padded), or [B, V] for the left-padded rows."""
        kept = [t for t in logits if t is not None]
        assert len(kept) == len(logits), "the last chunk keeps every newcomer's logits"
        cache = self.cache if self.own is None else stack_caches(self.own)
        return torch.cat(kept), cache, self.mask, self.positions[:, -1:], [Row.start(j) for j in self.jobs]

    def undo(self) -> None:
        """Put the newcomers' caches back as they were before the chunk of a fused forward that raised. A ragged
        prefill starts over, left-padded (the separate forwards then find the rows that fail alone)."""
        if self.own is not None:
            self.own, self.done = None, 0
        if self.done:
            truncate(self.cache, self.done)
        else:
            self.cache = new_cache()


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
                 max_batch: int = 32, prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS,
                 on_step: StepHook | None = None, threads: int = 0, fuse: bool = True):
        self._model = model
        self.fuse = fuse  # run a decode step and a prefill chunk as one forward where ragged supports the model
        self._threads = threads  # > 0: torch's intra-op threads on the engine's thread (0: torch's default)
        self._lora = lora
        self._pad = pad_id
        self._device = device
        self.max_batch = max_batch
        self.prefill_chunk_tokens = prefill_chunk_tokens  # <= 0: never chunk
        self.on_step = on_step
        self._attention: DecodeAttention | None = None  # the native decode attention (use_attention)
        self._queue: queue.Queue = queue.Queue()
        self._backlog: list[GenerateJob] = []  # taken from the queue but not joinable into the running batch
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stats = EngineStats()
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache_arg = cache_arg(model)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adapterfleet-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread:
            self._thread.join(10)

    @property
    def attention(self) -> DecodeAttention | None:
        return self._attention

    def use_attention(self, attention: DecodeAttention | None) -> None:
        """Run decode rows' attention through the native kernel (:mod:`.lora.native`) from the next forward on, where
        ``ragged`` supports the model (decode steps then run as its forwards); None: the model's own attention."""
        self._attention = attention

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
        backlogged = len(jobs)
        while len(jobs) < limit and not self._stop.is_set():
            try:
                job = self._queue.get(block=block and not jobs)
            except queue.Empty:
                break
            if job is None:
                self._stop.set()
                break
            jobs.append(job)
        self.stats.requests += len(jobs) - backlogged
        return jobs

    def _run(self) -> None:
        if self._threads > 0:
            pin_threads(self._threads)
        while not self._stop.is_set():
            jobs = self._take(self.max_batch, block=True)
            if not jobs:
                continue
            self.stats.batches += 1
            self._run_scores([j for j in jobs if isinstance(j, ScoreJob)])
            gens = [j for j in jobs if isinstance(j, GenerateJob) and not j.cancelled.is_set()]
            if gens:
                self.stats.running = len(gens)
                try:
                    with torch.inference_mode():
                        self._generate(gens)  # appends the jobs that join the batch to gens
                except BaseException as exc:  # noqa: BLE001 - no single row caused it: the batch fails, the engine goes on
                    for job in gens:
                        job.reject(batch_error(exc, "generation"))
                self.stats.running = 0

    # --- scoring ----------------------------------------------------------------------------------------------------
    def _run_scores(self, jobs: list[ScoreJob]) -> None:
        if not jobs:
            return
        try:
            with torch.inference_mode():
                try:
                    results = self._score(jobs)
                except Exception as exc:
                    bad = culprits(jobs, self._score, exc)
                    if not bad:
                        raise
                    for job, err in bad:
                        job.done(row_error(err, "scoring"))
                    jobs = [j for j in jobs if all(j is not b for b, _ in bad)]
                    results = self._score(jobs) if jobs else []
        except BaseException as exc:  # noqa: BLE001 - no single row caused it: every caller gets it, the engine goes on
            for job in jobs:
                job.done(batch_error(exc, "scoring"))
            return
        for job, result in zip(jobs, results, strict=True):
            job.done(result)

    def _score(self, jobs: list[ScoreJob]) -> list[list[float] | BaseException]:
        """Each job's logprobs, or the error of a row whose logits are not finite."""
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
        picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)                  # [B, T-1]
        valid = mask[:, 1:].bool()                                                           # [B, T-1]
        bad = ((torch.isnan(picked) | torch.isposinf(logits[:, :-1]).any(-1)) & valid).any(-1).tolist()  # [B]
        picked = picked.cpu()
        return [non_finite(0) if bad[i] else picked[i, : len(j.token_ids) - 1].tolist() for i, j in enumerate(jobs)]

    # --- generation -------------------------------------------------------------------------------------------------
    def _forward(self, slots: list[int], **kw) -> torch.Tensor:
        if self._keep_arg:
            kw["logits_to_keep"] = 1
        kw[self._cache_arg] = kw.pop("cache")
        with self._lora.rows(slots):
            out = self._model(use_cache=True, **kw)
        return out.logits[:, -1, :].float()  # [B, V]

    def _inputs(self, jobs: list[GenerateJob]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded prompts: (ids [B, T], mask [B, T], positions [B, T])."""
        longest = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), longest), dtype=torch.long)
        for i, j in enumerate(jobs):  # left padding: every row's next token lands in the last column
            ids[i, longest - len(j.prompt_ids):] = torch.tensor(j.prompt_ids)
            mask[i, longest - len(j.prompt_ids):] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def _prefill(self, jobs: list[GenerateJob]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """Left-padded prompts through the model: (last logits [B, V], cache, mask [B, T], last position [B, 1])."""
        ids, mask, positions = self._inputs(jobs)
        cache = new_cache()
        logits = self._forward([j.slot for j in jobs], input_ids=ids, attention_mask=mask, position_ids=positions,
                               cache=cache)
        return logits, cache, mask, positions[:, -1:]

    def _stepped(self, kind: str, rows: int, tokens: int) -> None:
        if self.on_step is not None:
            self.on_step(kind, rows, tokens)

    def _begin(self, jobs: list[GenerateJob], decoding: int) -> Prefill | None:
        """A chunked prefill of ``jobs`` while ``decoding`` rows run, if it is more than one chunk of work, else None.

        A chunk holds ``prefill_chunk_tokens`` per running row that each newcomer stands against (at least one
        budget): what a chunk delays is ``decoding`` rows, what it speeds is ``len(jobs)`` first tokens. Two rows
        decoding while thirty newcomers wait (a wave that arrived over a few milliseconds) is one prefill, not thirty
        chunks that each stall two rows; a newcomer or two joining twenty running rows come in small chunks."""
        budget = self.prefill_chunk_tokens * max(1, len(jobs) // max(1, decoding))
        longest = max(len(j.prompt_ids) for j in jobs)
        if not decoding or self.prefill_chunk_tokens <= 0 or len(jobs) * longest <= budget:
            return None
        return self._prefill_of(jobs, step=max(1, budget // len(jobs)))

    def _prefill_of(self, jobs: list[GenerateJob], step: int = 0) -> Prefill:
        """A prefill of ``jobs`` in chunks of ``step`` columns (0: one chunk); ragged where the model allows."""
        ids, mask, positions = self._inputs(jobs)
        own = None
        if self.fuse and ragged.unsupported(self._model, [], ids.shape[1]) is None:
            own = [new_cache() for _ in jobs]
        return Prefill(jobs, ids, mask, positions, step=step or ids.shape[1], own=own)

    def _advance(self, pre: Prefill, whole: bool) -> Batch | None:
        """The next chunk of ``pre`` (all that is left if ``whole``): its started batch once the last chunk is in,
        else None. A chunk that raises: the newcomers' prefill is redone in one go, which finds the rows that fail
        alone (``_start``)."""
        width = pre.ids.shape[1]
        end = width if whole else min(width, pre.done + pre.step)
        logits: Sequence[torch.Tensor | None]
        try:
            if pre.own is not None:
                segments = pre.segments(end)
                logits = ragged.forward(self._model, self._lora, segments, self._attention)
                tokens = sum(s.ids.numel() for s in segments)
            else:
                logits = [self._forward([j.slot for j in pre.jobs], input_ids=pre.ids[:, pre.done:end],
                                        attention_mask=pre.mask[:, :end], position_ids=pre.positions[:, pre.done:end],
                                        cache=pre.cache)]
                tokens = len(pre.jobs) * (end - pre.done)
        except Exception:  # noqa: BLE001 - the one-shot prefill sorts out whose fault it was
            pre.done = width
            self._stepped("prefill", len(pre.jobs), len(pre.jobs) * width)
            return self._start(pre.jobs)
        self._stepped("prefill", len(pre.jobs), tokens)
        pre.done = end
        if end < width:
            return None
        return pre.started(logits)

    def _start(self, jobs: list[GenerateJob]) -> Batch | None:
        """Prefill ``jobs``, leaving out (and failing) those that fail alone; None if none is left."""
        while jobs:
            try:
                return (*self._prefill(jobs), [Row.start(j) for j in jobs])
            except Exception as exc:
                bad = culprits(jobs, self._prefill, exc)
                if not bad:
                    raise
                for job, err in bad:
                    job.reject(row_error(err, "prefill"))
                jobs = [j for j in jobs if all(j is not b for b, _ in bad)]
        return None

    def _decode(self, live: list[Row], ids: torch.Tensor, cache: DynamicCache, mask: torch.Tensor,
                pos: torch.Tensor) -> tuple[torch.Tensor, list[Row], torch.Tensor, torch.Tensor]:
        """One decode step (``ids`` [B, 1], ``mask`` [B, T+1], ``pos`` [B, 1]) -> (logits [B', V], rows, mask, pos):
        rows that make the step fail on their own are failed and dropped (from ``cache`` too)."""
        while live:
            try:
                logits = self._step(live, ids, cache, mask, pos)
                return logits, live, mask, pos
            except Exception as exc:
                if not joinable(cache):
                    raise
                truncate(cache, mask.shape[1] - 1)  # undo the layers the failed forward already appended to
                bad = culprits(list(range(len(live))), self._retry_step(live, ids, cache, mask, pos), exc)
                if not bad:
                    raise
                for r, err in bad:
                    live[r].job.reject(row_error(err, "a decode step"))
                failed = {r for r, _ in bad}
                keep = fill_order([r for r in range(len(live)) if r not in failed])
                index = torch.tensor(keep, dtype=torch.long, device=self._device)
                cache.batch_select_indices(index)
                ids, mask, pos, live = ids[index], mask[index], pos[index], [live[r] for r in keep]
        return torch.empty((0, 0), device=self._device), live, mask, pos

    def _step(self, live: list[Row], ids: torch.Tensor, cache: DynamicCache, mask: torch.Tensor,
              pos: torch.Tensor) -> torch.Tensor:
        """A decode step's forward: through ``ragged`` where the native decode attention is loaded and the model is
        one it supports (its attention then reads only the positions each row attends to), else the model's own."""
        slots = [r.job.slot for r in live]
        if self._attention is not None and self._fusable(cache, mask):
            segment = ragged.Segment(cache, ids, pos, mask, slots, keep=True)
            logits = ragged.forward(self._model, self._lora, [segment], self._attention)[0]
            assert logits is not None, "the rows keep their logits"
            return logits
        return self._forward(slots, input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache)

    def _retry_step(self, live: list[Row], ids: torch.Tensor, cache: DynamicCache, mask: torch.Tensor,
                    pos: torch.Tensor) -> Callable[[list[int]], object]:
        """The decode step again for some of the rows only, on a copy of their part of the cache."""

        def attempt(rows: list[int]) -> object:
            index = torch.tensor(rows, dtype=torch.long, device=self._device)
            return self._forward([live[r].job.slot for r in rows], input_ids=ids[index], attention_mask=mask[index],
                                 position_ids=pos[index], cache=subset(cache, index))

        return attempt

    def _generate(self, jobs: list[GenerateJob]) -> None:
        started = self._start(jobs)
        if started is None:
            return
        self._stepped("prefill", len(started[4]), started[2].numel())
        logits, cache, mask, last_pos, live = started
        pending: Prefill | None = None  # newcomers being prefilled in chunks
        while True:
            fused = None
            if live:
                choices = choose(live, logits)
                keep = fill_order(self._emit(live, choices))  # rows that leave: holes filled from the end
                live = [live[r] for r in keep]
            if live:
                next_ids = torch.tensor([_token(choices[r]) for r in keep], device=self._device).unsqueeze(-1)  # [B, 1]
                if len(keep) < len(choices):
                    index = torch.tensor(keep, device=self._device)
                    cache.batch_select_indices(index)
                    mask, last_pos = _trimmed(cache, mask[index]), last_pos[index]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)                   # [B, T+1]
                if pending is not None and not pending.separate and self._fusable(cache, mask, pending.jobs):
                    fused = self._fused(live, next_ids, cache, mask, last_pos + 1, pending)
                if fused is not None:  # the step carried the next chunk of the newcomers' prefill
                    logits, started = fused
                    last_pos = last_pos + 1
                    if started is not None:
                        pending = None
                        logits, cache, mask, last_pos, live = self._join((logits, cache, mask, last_pos, live),
                                                                         started)
                else:
                    logits, live, mask, last_pos = self._decode(live, next_ids, cache, mask, last_pos + 1)
                    self._stepped("decode", len(live), len(live))
            if not live and pending is None:
                return
            # between two decode steps: scoring requests run, new generations join (at most one chunk of prefill per
            # step: run here, or with the next decode step as one forward where the model allows, see ragged.py)
            waiting = self._take(self.max_batch - len(live) - (len(pending.jobs) if pending else 0), block=False)
            self._run_scores([j for j in waiting if isinstance(j, ScoreJob)])
            joining = [j for j in waiting if isinstance(j, GenerateJob) and not j.cancelled.is_set()]
            if joining and (pending is not None or (live and not joinable(cache))):
                # a chunked prefill is under way (they start after it), or an unusual cache layout (next batch)
                self._backlog[:0] = joining
                joining = []
            newcomers = pending.jobs if pending is not None else joining
            started = None
            try:
                if joining:
                    jobs.extend(joining)  # the batch's jobs: if the batch fails as a whole, they are failed with it
                    pending = self._begin(joining, decoding=len(live))
                    if pending is None and live and self._fusable(cache, mask, joining):  # one chunk: all of it
                        pending = self._prefill_of(joining)
                    elif pending is None:
                        started = self._start(joining)
                        if started is not None:
                            self._stepped("prefill", len(started[4]), started[2].numel())
                if pending is not None and fused is None and (pending.separate or not live
                                                              or not self._fusable(cache, mask, pending.jobs)):
                    started = self._advance(pending, whole=not live)
                    if pending.done == pending.ids.shape[1]:
                        pending = None
            except Exception as exc:  # noqa: BLE001 - no single newcomer caused it: only the newcomers fail
                for job in newcomers:
                    job.reject(batch_error(exc, "prefill"))
                started = pending = None
            if started is not None:
                logits, cache, mask, last_pos, live = self._join((logits, cache, mask, last_pos, live), started)
            if not live and pending is None:
                return
            self.stats.running = len(live) + (len(pending.jobs) if pending else 0)

    def _fusable(self, cache: DynamicCache, mask: torch.Tensor, newcomers: Sequence[GenerateJob] = ()) -> bool:
        """Whether the running rows (and ``newcomers``) can run as a ragged forward."""
        if not self.fuse:
            return False
        longest = max([mask.shape[1], *(len(j.prompt_ids) for j in newcomers)])
        return ragged.unsupported(self._model, [cache], longest) is None

    def _fused(self, live: list[Row], ids: torch.Tensor, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor,
               pre: Prefill) -> tuple[torch.Tensor, Batch | None] | None:
        """The decode step of ``live`` and the next chunk of ``pre`` as one forward: (the running rows' logits, the
        newcomers' started batch once their last chunk is in). None if it raised: both caches are as they were, and
        the caller runs them as separate forwards (which find the rows that fail alone)."""
        width = pre.ids.shape[1]
        end = min(width, pre.done + pre.step)
        running = ragged.Segment(cache, ids, pos, mask, [r.job.slot for r in live], keep=True)
        chunk = pre.segments(end)
        try:
            logits, *theirs = ragged.forward(self._model, self._lora, [running, *chunk], self._attention)
        except Exception:  # noqa: BLE001 - the separate forwards sort out whose fault it was
            truncate(cache, mask.shape[1] - 1)
            pre.undo()
            pre.separate = True
            return None
        assert logits is not None, "the running rows keep their logits"
        self._stepped("decode", len(live), len(live))
        self._stepped("prefill", len(pre.jobs), sum(s.ids.numel() for s in chunk))
        pre.done = end
        return logits, (pre.started(theirs) if end == width else None)

    @staticmethod
    def _join(running: Batch, newcomers: Batch) -> Batch:
        """The running batch with the newcomers' prefilled rows appended (KV caches and masks left-padded)."""
        logits, cache, mask, last_pos, live = running
        new_logits, their_cache, new_mask, new_pos, new_rows = newcomers
        if not live:
            return newcomers
        join_caches(cache, their_cache)
        width = max(mask.shape[1], new_mask.shape[1])
        mask = torch.cat([pad_left(mask, width), pad_left(new_mask, width)], dim=0)
        return (torch.cat([logits, new_logits], dim=0), cache, mask, torch.cat([last_pos, new_pos], dim=0),
                live + new_rows)

    def _emit(self, live: list[Row], choices: Sequence[Choice | BaseException]) -> list[int]:
        """Send each row its token (or its error); return the batch rows that go on."""
        keep = []
        for b, (row, choice) in enumerate(zip(live, choices, strict=True)):
            job = row.job
            if isinstance(choice, BaseException):
                job.reject(choice)
                continue
            row.produced += 1
            if job.cancelled.is_set():
                job.settled = True
                continue
            tok = choice.token
            if tok in job.stop_ids:
                job.finish([tok], "stop", choice.logprobs)
            elif row.produced >= job.max_new_tokens:
                job.finish([tok], "length", choice.logprobs)
            else:
                job.emit([tok], False, "", choice.logprobs)
                keep.append(b)
        chosen = sum(isinstance(c, Choice) for c in choices)
        self.stats.tokens += chosen
        self.stats.recent.append((time.monotonic(), chosen))
        return keep


def _trimmed(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` [B, T] without its leading columns that no row attends to (dropped from ``cache`` too: a growing
    layer only moves where its view starts, so any such column goes at once). A row that joined a longer batch was
    left-padded to its width, and the width only grows while the batch runs: under steady load the batch never
    empties, so without this every step would attend over (and keep) the padding of rows long gone."""
    unused = int(mask.any(0).to(torch.uint8).argmax())  # the first column some row attends to
    if unused and joinable(cache):
        drop_left(cache, unused)
        return mask[:, unused:]
    return mask


def _token(choice: Choice | BaseException) -> int:
    assert isinstance(choice, Choice), "only rows that got a token go on"
    return choice.token

