"""The worker's gRPC servicer: proto in, one domain call, proto out."""

from __future__ import annotations

from adapterfleet.common import auth
from adapterfleet.common.tiers import ACTIVE, DISK, HOST, LOADING, tier_from_pb, tier_to_pb
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.cache import Entry
from adapterfleet.worker.logprobs import Logprob, TokenLogprobs
from adapterfleet.worker.sampling import Sampling
from adapterfleet.worker.service import GenerateParams, WorkerCore


def state_pb(e: Entry, core: WorkerCore) -> worker_pb2.AdapterState:
    tier = LOADING if e.key in core.cache.loading() and e.slot is None else e.tier
    return worker_pb2.AdapterState(key=e.key, tier=tier_to_pb(tier), bytes=e.nbytes or e.disk_bytes, pinned=e.pinned,
                                   in_use=e.refs, slot=-1 if e.slot is None else e.slot, hits=e.hits)


def sampling_from_pb(pb: worker_pb2.SamplingParams) -> Sampling:
    """Proto3's zeros mean "off" where the domain's neutral value is not 0 (top_p, repetition_penalty)."""
    return Sampling(temperature=pb.temperature, top_k=pb.top_k, top_p=pb.top_p or 1.0,
                    seed=pb.seed if pb.has_seed else None, repetition_penalty=pb.repetition_penalty or 1.0,
                    presence_penalty=pb.presence_penalty, frequency_penalty=pb.frequency_penalty)


def logprobs_pb(lp: TokenLogprobs) -> worker_pb2.TokenLogprobs:
    def one(x: Logprob) -> worker_pb2.Logprob:
        return worker_pb2.Logprob(token_id=x.token_id, logprob=x.logprob, text=x.text)

    return worker_pb2.TokenLogprobs(chosen=one(lp.chosen), top=[one(t) for t in lp.top])


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Authorization (adapterfleet.common.auth) first: serving needs `serve` on the adapter's tenant; Unload and Pin
    are an operator's (`admin`); Stats and ListResident show every tenant's adapters (service identities)."""

    def __init__(self, core: WorkerCore):
        self.core = core

    async def Generate(self, request, context):
        auth.require(auth.SERVE, "generating", auth.ref_name(request.adapter))
        params = GenerateParams(
            adapter=request.adapter, prompt=request.prompt, prompt_ids=tuple(request.prompt_ids),
            max_new_tokens=request.max_new_tokens or 16, sampling=sampling_from_pb(request.sampling),
            stop_ids=tuple(request.stop_ids), routing_key=request.routing_key, resume_ids=tuple(request.resume_ids),
            stop=tuple(request.stop), logprobs=request.logprobs, top_logprobs=request.top_logprobs)
        async for c in self.core.generate(params):
            yield worker_pb2.GenerateResponse(token_ids=c.token_ids, text=c.text, finished=c.finished,
                                              finish_reason=c.finish_reason, adapter_key=c.adapter_key,
                                              prompt_tokens=c.prompt_tokens,
                                              logprobs=[logprobs_pb(lp) for lp in c.logprobs],
                                              completion_tokens=c.completion_tokens)

    async def Score(self, request, context):
        auth.require(auth.SERVE, "scoring", auth.ref_name(request.adapter))
        key, logprobs = await self.core.score(request.adapter, tuple(request.token_ids), request.text,
                                              request.routing_key)
        return worker_pb2.ScoreResponse(logprobs=logprobs, adapter_key=key)

    async def LoadAdapter(self, request, context):
        auth.require(auth.SERVE, "loading an adapter", auth.ref_name(request.ref) or "")
        if request.pin:  # as Pin: a pinned adapter is never evicted, so pins are an operator's to set
            auth.require(auth.ADMIN, "loading an adapter pinned", auth.ref_name(request.ref) or "")
        return state_pb(await self.core.load(request.ref, request.pin, tier_from_pb(request.tier)), self.core)

    async def UnloadAdapter(self, request, context):
        auth.require(auth.ADMIN, "unloading an adapter", auth.ref_name(request.ref) or "")
        return worker_pb2.UnloadAdapterResponse(unloaded=await self.core.unload(request.ref))

    async def Pin(self, request, context):
        auth.require(auth.ADMIN, "pinning an adapter", auth.ref_name(request.ref) or "")
        return state_pb(await self.core.pin(request.ref, request.pinned), self.core)

    async def ListResident(self, request, context):
        auth.require_service(auth.ADMIN, "listing a worker's adapters")
        return worker_pb2.ListResidentResponse(adapters=[state_pb(e, self.core) for e in self.core.cache.entries()])

    async def Stats(self, request, context):
        auth.require_service(auth.ADMIN, "a worker's stats")
        core, cache, engine = self.core, self.core.cache, self.core.engine
        return worker_pb2.WorkerStats(
            base_model=core.host.path, fingerprint=core.host.fingerprint, queue_depth=engine.queue_depth,
            running=engine.stats.running, requests_total=engine.stats.requests,
            tokens_generated=engine.stats.tokens, tokens_per_second=engine.stats.tokens_per_second(),
            adapters=[state_pb(e, core) for e in cache.entries()], max_slots=cache.max_slots,
            active_bytes=cache.tier_bytes(ACTIVE), host_bytes=cache.tier_bytes(HOST),
            disk_bytes=cache.tier_bytes(DISK), region=core.cfg.region, cold_loads=cache.stats.cold_loads,
            evictions=sum(cache.stats.evictions.values()))
