"""`adapterfleet router serve`: flags -> RouterConfig, then run."""

from __future__ import annotations

import asyncio

from adapterfleet.cli.auth_flags import auth_config
from adapterfleet.cli.flags import metrics_config, service_security
from adapterfleet.common.logs import configure_logging
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.placement import PlacementConfig


def config_from_args(args, store_addr: str) -> RouterConfig:
    tls, security = service_security(args)
    return RouterConfig(
        store=store_addr, host=args.host, port=args.port, region=args.region, redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        placement=PlacementConfig(eps=args.eps, hot_requests_per_copy=args.hot_rps_per_copy,
                                  max_copies=args.max_copies),
        drain_s=args.drain_seconds, metrics=metrics_config(args),
        http_port=args.http_port, http_host=args.http_host, tokenizer=args.tokenizer,
        tls=tls, security=security, reflection=args.reflection, auth=auth_config(args),
        fallback_routers=fallback_routers(getattr(args, "fallback_router", None)),
        version_report_s=args.version_report_seconds,
        route_ttl_s=getattr(args, "route_ttl_seconds", RouterConfig.route_ttl_s),
    )


def fallback_routers(value) -> tuple[str, ...]:
    """``--fallback-router A --fallback-router B`` (a list), or ``A,B`` from the environment or --config."""
    items = [value] if isinstance(value, str) else list(value or ())
    return tuple(a.strip() for item in items for a in item.split(",") if a.strip())


def run_router(args, store_addr: str) -> int:
    configure_logging("router", args.log_level, args.log_format)
    from adapterfleet.router.server import serve  # noqa: PLC0415

    cfg = config_from_args(args, store_addr)
    asyncio.run(serve(cfg, on_ready=lambda port, http_port: print(ready_line(cfg, port, http_port), flush=True)))
    return 0


def ready_line(cfg: RouterConfig, port: int, http_port: int | None) -> str:
    http = f"; OpenAI-compatible HTTP on http://{cfg.http_host}:{http_port}/v1" if http_port is not None else ""
    return f"router listening on {cfg.host}:{port}{http}"
