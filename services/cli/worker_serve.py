"""`adapterfleet worker serve`: flags -> WorkerConfig, then run (imports torch and transformers)."""

from __future__ import annotations

import asyncio

from adapterfleet.cli.auth_flags import auth_config
from adapterfleet.cli.flags import metrics_config, service_security
from adapterfleet.cli.signing_flags import trust_keys
from adapterfleet.common.logs import configure_logging
from adapterfleet.store.blob_urls import DirectFetchConfig
from adapterfleet.worker.config import WorkerConfig


def config_from_args(args, store_addr: str) -> WorkerConfig:
    tls, security = service_security(args)
    return WorkerConfig(
        base_model=args.base_model, store=store_addr, host=args.host, port=args.port, device=args.device,
        dtype=args.dtype, region=args.region, max_slots=args.max_slots, host_bytes=args.host_cache_mb << 20,
        disk_bytes=args.disk_cache_mb << 20, disk_dir=args.disk_cache_dir, max_batch=args.max_batch,
        prefill_chunk_tokens=args.prefill_chunk_tokens, packed_weights=not args.no_packed_weights,
        fused_steps=not args.no_fused_steps, native_kernel=not args.no_native_kernel, native_dir=args.native_dir,
        decode_attention=not args.no_decode_attention,
        threads=args.threads or 0,
        advertise=args.advertise, drain_s=args.drain_seconds, metrics=metrics_config(args),
        tls=tls, security=security, reflection=args.reflection, trust_keys=trust_keys(args),
        auth=auth_config(args), direct=DirectFetchConfig(enabled=not args.no_direct_blobs),
    )


def run_worker(args, store_addr: str) -> int:
    configure_logging("worker", args.log_level, args.log_format)
    cfg = config_from_args(args, store_addr)  # before torch: a refused setting answers at once
    from adapterfleet.worker.server import serve  # noqa: PLC0415

    def ready(port: int, fingerprint: str) -> None:
        print(f"worker listening on {cfg.host}:{port} base={cfg.base_model} fingerprint={fingerprint}", flush=True)

    asyncio.run(serve(cfg, on_ready=ready))
    return 0
