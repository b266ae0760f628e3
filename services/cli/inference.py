"""`adapterfleet generate` / `adapterfleet score` against a worker or a router (same API)."""

from __future__ import annotations

import json
import sys

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.errors import InvalidArgument
from adapterfleet.common.grpc_errors import error_from_rpc
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
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        try:
            return _generate(stub, args) if args.command == "generate" else _score(stub, args)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None


def _generate(stub, args) -> int:
    if not args.prompt and not args.prompt_ids:
        raise InvalidArgument("give --prompt TEXT or --prompt-ids 1,2,3")
    sampling = worker_pb2.SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                         seed=args.seed or 0, has_seed=args.seed is not None)
    request = worker_pb2.GenerateRequest(adapter=args.adapter, prompt=args.prompt or "",
                                         prompt_ids=_ids(args.prompt_ids), max_new_tokens=args.max_new_tokens,
                                         sampling=sampling, stop_ids=_ids(args.stop_ids),
                                         routing_key=args.routing_key)
    tokens, text, key, reason = [], [], "", ""
    for chunk in stub.Generate(request):
        tokens += chunk.token_ids
        text.append(chunk.text)
        key = key or chunk.adapter_key
        reason = chunk.finish_reason or reason
        if not args.json and chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    if args.json:
        print(json.dumps({"token_ids": tokens, "text": "".join(text), "adapter_key": key, "finish_reason": reason}))
    elif not "".join(text):
        print(",".join(map(str, tokens)))
    else:
        print()
    return 0


def _score(stub, args) -> int:
    request = worker_pb2.ScoreRequest(adapter=args.adapter, token_ids=_ids(args.prompt_ids), text=args.text or "",
                                      routing_key=args.routing_key)
    reply = stub.Score(request)
    if args.json:
        print(json.dumps({"logprobs": list(reply.logprobs), "adapter_key": reply.adapter_key}))
    else:
        print(" ".join(f"{x:.4f}" for x in reply.logprobs))
    return 0
