"""`adapterfleet generate` / `adapterfleet score` against a worker or a router (same API)."""

from __future__ import annotations

import json
import sys

import grpc

from adapterfleet.cli.flags import client_security
from adapterfleet.common.errors import InvalidArgument
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import open_channel
from adapterfleet.sdk.direct import DirectRouter, DirectWorkerStub
from adapterfleet.sdk.fleet import Accumulator, generate_request
from adapterfleet.sdk.logprobs import Logprob
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc


def _ids(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(f"cannot parse token ids {text!r}: use comma-separated integers, e.g. 1,2,3") from None


def run_inference(args) -> int:
    address = args.worker or args.router
    if getattr(args, "direct", False) and not args.router:
        raise InvalidArgument("--direct asks a router where to go: use it with --router ADDR (--worker ADDR is "
                              "direct already)")
    security = client_security(args)
    with open_channel(address, security) as channel:
        stub: worker_pb2_grpc.WorkerStub | DirectWorkerStub = worker_pb2_grpc.WorkerStub(channel)
        direct = DirectRouter(channel, security) if getattr(args, "direct", False) else None
        try:
            if direct is not None:
                stub = DirectWorkerStub(direct)  # the router says where; the stream goes to the worker
            return _generate(stub, args) if args.command == "generate" else _score(stub, args)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        finally:
            if direct is not None:
                direct.close()


def _generate(stub, args) -> int:
    if not args.prompt and not args.prompt_ids:
        raise InvalidArgument("give --prompt TEXT or --prompt-ids 1,2,3")
    stop = [args.stop] if isinstance(args.stop, str) else list(args.stop or ())  # from the environment: one string
    request = generate_request(
        args.prompt or _ids(args.prompt_ids), adapter=args.adapter, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop_ids=_ids(args.stop_ids), routing_key=args.routing_key, stop=stop, logprobs=args.logprobs,
        top_logprobs=args.top_logprobs, repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)
    acc = Accumulator("")
    for chunk in stub.Generate(request):
        acc.add(chunk)
        if not args.json and chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    g = acc.result()
    if args.json:
        out = {"token_ids": list(g.token_ids), "text": g.text, "adapter_key": g.adapter_key,
               "finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
               "completion_tokens": g.completion_tokens}
        if args.logprobs:
            out["logprobs"] = [{**_logprob(lp.chosen), "top": [_logprob(t) for t in lp.top]} for lp in g.logprobs]
        print(json.dumps(out))
        return 0
    print("" if g.text else ",".join(map(str, g.token_ids)))  # ends the streamed text's line, or shows the ids
    for lp in g.logprobs:
        alternatives = ", ".join(f"{t.token_id} {t.text!r} {t.logprob:.4f}" for t in lp.top)
        print(f"{lp.chosen.token_id}\t{lp.chosen.text!r}\t{lp.chosen.logprob:.4f}"
              + (f"\ttop: {alternatives}" if alternatives else ""))
    return 0


def _logprob(lp: Logprob) -> dict:
    return {"token_id": lp.token_id, "text": lp.text, "logprob": lp.logprob}


def _score(stub, args) -> int:
    request = worker_pb2.ScoreRequest(adapter=args.adapter, token_ids=_ids(args.prompt_ids), text=args.text or "",
                                      routing_key=args.routing_key)
    reply = stub.Score(request)
    if args.json:
        print(json.dumps({"logprobs": list(reply.logprobs), "adapter_key": reply.adapter_key}))
    else:
        print(" ".join(f"{x:.4f}" for x in reply.logprobs))
    return 0
