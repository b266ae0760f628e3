"""`adapterfleet router serve`: flags -> RouterConfig, then run."""

from __future__ import annotations

import asyncio

from adapterfleet.cli.flags import metrics_config
from adapterfleet.common.logs import configure_logging
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.placement import PlacementConfig


def config_from_args(args, store_addr: str) -> RouterConfig:
    return RouterConfig(
        store=store_addr, host=args.host, port=args.port, region=args.region, redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        placement=PlacementConfig(eps=args.eps, hot_requests_per_copy=args.hot_rps_per_copy,
                                  max_copies=args.max_copies),
        drain_s=args.drain_seconds, metrics=metrics_config(args),
        http_port=args.http_port, http_host=args.http_host, tokenizer=args.tokenizer,
    )


def run_router(args, store_addr: str) -> int:
    configure_logging("router", args.log_level, args.log_format)
    from adapterfleet.router.server import serve  # noqa: PLC0415

    cfg = config_from_args(args, store_addr)
    asyncio.run(serve(cfg, on_ready=lambda port, http_port: print(ready_line(cfg, port, http_port), flush=True)))
    return 0


def ready_line(cfg: RouterConfig, port: int, http_port: int | None) -> str:
    http = f"; OpenAI-compatible HTTP on http://{cfg.http_host}:{http_port}/v1" if http_port is not None else ""
    return f"router listening on {cfg.host}:{port}{http}"
