"""`adapterfleet store serve`: flags -> StoreConfig, the embedded default, then run."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from adapterfleet.cli.auth_flags import auth_config
from adapterfleet.cli.flags import metrics_config, service_security
from adapterfleet.cli.rollout import rollout_config
from adapterfleet.common.embedded_redis import RedisProcess
from adapterfleet.common.errors import InvalidArgument, Unavailable
from adapterfleet.common.logs import configure_logging
from adapterfleet.store.config import Limits, ReplicaConfig, S3Config, StoreConfig

log = logging.getLogger("adapterfleet.store")


def config_from_args(args) -> StoreConfig:
    s3 = None
    if args.s3_endpoint:
        from adapterfleet.store.blobs.s3 import validate_bucket_name  # noqa: PLC0415 - boto3 only for S3

        validate_bucket_name(args.bucket)  # a clear refusal now, not a botocore traceback at the first call
        s3 = S3Config(endpoint_url=args.s3_endpoint, bucket=args.bucket, region=args.s3_region,
                      access_key_id=args.s3_access_key_id, secret_access_key=args.s3_secret_access_key,
                      part_size=args.s3_part_mb << 20, single_put_max=args.s3_single_put_mb << 20,
                      presign_expiry_s=args.s3_presign_expiry,
                      presign_endpoint_url=args.s3_presign_endpoint)
    tls, security = service_security(args)
    replica = None
    if getattr(args, "primary", None):
        replica = ReplicaConfig(primary=args.primary, replicate=args.replicate or "lazy")
    elif getattr(args, "replicate", None):
        raise InvalidArgument("--replicate applies to a secondary region's store: add --primary ADDR (the primary "
                              "region's store)")
    return StoreConfig(
        host=args.host, port=args.port, redis_url=args.redis_url, redis_prefix=args.redis_prefix, s3=s3,
        data_dir=args.data_dir, region=args.region, chunk_size=args.chunk_size,
        limits=Limits(max_file_bytes=args.max_file_mb << 20, max_rank=args.max_rank),
        blob_cache_bytes=args.blob_cache_mb << 20, validator_processes=args.validator_processes,
        blob_lookups=args.blob_lookups,
        drain_s=args.drain_seconds, metrics=metrics_config(args),
        tls=tls, security=security, reflection=args.reflection, replica=replica, auth=auth_config(args),
        rollout=rollout_config(args),
    )


def embedded_redis(data_dir: str):
    """A private redis-server persisting under data_dir; else an in-process fake, loudly."""
    try:
        proc = RedisProcess(Path(data_dir) / "redis").start()
        log.info("embedded redis-server on port %d (data in %s/redis)", proc.port, data_dir)
        return proc.url, proc
    except Unavailable as err:
        log.warning("%s", err)
    try:
        import fakeredis  # noqa: F401, PLC0415 - only probing that the extra is installed
    except ImportError:
        raise Unavailable("no redis-server binary and no in-process fallback: install Redis, pass --redis-url, or "
                          "`pip install adapterfleet[embedded]`") from None
    log.warning("!!! NO redis-server FOUND: using an IN-PROCESS, NON-PERSISTENT fake Redis. Versions vanish when "
                "this process exits. Do not use this in production: pass --redis-url. !!!")
    return None, None


def run_store(args) -> int:
    configure_logging("store", args.log_level, args.log_format)
    cfg = config_from_args(args)
    proc = None
    if cfg.redis_url is None:
        url, proc = embedded_redis(cfg.data_dir)
    else:
        url = cfg.redis_url
    try:
        asyncio.run(_serve(cfg, url))
    finally:
        if proc:
            proc.stop()
    return 0


async def _serve(cfg: StoreConfig, url: str | None) -> None:
    from adapterfleet.store.server import make_redis, serve  # noqa: PLC0415 - boto3/redis only when serving

    if url is None:
        from fakeredis.aioredis import FakeRedis  # noqa: PLC0415 - optional extra

        client = FakeRedis()
    else:
        client = make_redis(url)
    await serve(cfg, client, on_ready=lambda port: print(f"store listening on {cfg.host}:{port}", flush=True))
