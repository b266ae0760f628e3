"""Typed configuration of the store, built once at the entry point and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterfleet.common.auth_config import AuthConfig
from adapterfleet.common.metrics_config import MetricsConfig
from adapterfleet.common.security_config import INSECURE, ClientSecurity, ServerTLS
from adapterfleet.store.rollout_config import RolloutConfig

PORT = 50051  # where `adapterfleet store serve` listens unless told otherwise (StoreConfig's 0: any free port)
ADDRESS = f"127.0.0.1:{PORT}"  # where clients look for the store unless told otherwise


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 4 << 30
    max_total_bytes: int = 8 << 30
    max_files: int = 16
    max_config_bytes: int = 1 << 20
    max_header_bytes: int = 2 << 20  # ~15,000 tensors; parse time (GIL held) grows with it
    max_extra_file_bytes: int = 4 << 20  # README.md and other small text files
    max_rank: int = 256
    max_digests: int = 256              # sha256 digests in one MissingBlobs request (a push asks one per file)
    max_pattern_seconds: float = 2.0    # CPU seconds to compile a config's patterns, and again to match tensor names
    max_announced_adapters: int = 1 << 16  # resident adapters in one worker announcement


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None
    bucket: str
    region: str = "us-east-1"
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = None
    part_size: int = 8 << 20       # multipart part size (and the threshold above which multipart is used)
    max_concurrency: int = 8       # parts in flight per upload / ranged GETs in flight per fetch
    # blobs from part_size up to this size go up as one PUT streamed while they arrive, its last byte held back
    # until the push is verified (store/blobs/s3_put.py); larger ones as multipart (0: always multipart)
    single_put_max: int = 256 << 20
    # Fetches answer presigned GET URLs valid this long, and clients read the blobs from S3 themselves (0: off,
    # every byte streams through the store). A URL only has to be valid when each of its GETs starts.
    presign_expiry_s: float = 120.0
    presign_endpoint_url: str | None = None  # the S3 endpoint as clients reach it (default: endpoint_url)


REPLICATE_MODES = ("lazy", "eager")


@dataclass(frozen=True)
class ReplicaConfig:
    """A secondary region's store: it follows ``primary`` and forwards writes there (store/replication.py,
    store/forwarding.py). The channel to the primary presents the store's own ``security``."""

    primary: str                         # the primary store's address
    replicate: str = "lazy"              # blobs: "lazy" (copied on first fetch) | "eager" (copied as versions arrive)
    lag_check_s: float = 1.0             # how often the lag (events, seconds) is measured against the primary
    read_your_writes_s: float = 5.0      # a forwarded write waits up to this long to be replicated here
    reconnect_max_s: float = 5.0         # retry the primary's stream after 0.25 s, doubling up to this
    copy_concurrency: int = 4            # blobs copied from the primary at once

    def __post_init__(self) -> None:
        if self.replicate not in REPLICATE_MODES:
            raise ValueError(f"--replicate is {self.replicate!r}; use one of {', '.join(REPLICATE_MODES)}")
        if not self.primary:
            raise ValueError("a secondary store needs --primary ADDR (the primary region's store)")


@dataclass(frozen=True)
class StoreConfig:
    host: str = "127.0.0.1"
    port: int = 0
    redis_url: str | None = None
    redis_prefix: str = "af:"
    s3: S3Config | None = None          # None: blobs in `data_dir` (embedded default)
    data_dir: str = ".adapterfleet/store"
    region: str = "local"
    chunk_size: int = 1 << 20           # fetch chunk size
    lease_seconds: float = 3600.0       # a push must finish within this, or its blobs may be collected
    gc_grace_seconds: float = 3600.0    # GC leaves blobs younger than this alone
    blob_cache_bytes: int = 512 << 20   # in-memory LRU of small blobs (0: off)
    blob_cache_max_item: int = 16 << 20
    limits: Limits = field(default_factory=Limits)
    blob_lookups: int = 4               # threads checking blob existence (MissingBlobs), apart from other I/O
    validators: int = 2                 # threads validating pushed configs and headers, apart from other I/O
    # child processes that validate pushes instead (store/validate_pool.py), so that no push holds the store's GIL
    # (0: the threads above do it)
    validator_processes: int = 2
    watch_outage_s: float = 10.0        # a Watch waits this long for Redis to come back, then ends UNAVAILABLE
    # how long a thread may hold the GIL while another waits (Python's default: 5 ms): validator and lookup threads
    # then delay the event loop by at most about this much each time it wakes. Set by serve(), for the process.
    gil_switch_s: float = 0.001
    # one request message at most (push chunks are 1 MiB): decoding a bigger one would hold the event loop
    max_receive_bytes: int = 4 << 20
    drain_s: float = 10.0               # on SIGTERM: in-flight pushes and fetches get this long
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    replica: ReplicaConfig | None = None  # set: a secondary region's store, following replica.primary
    tls: ServerTLS | None = None      # None: a plaintext port (the CLI allows that only with --insecure)
    security: ClientSecurity = INSECURE  # what this service presents when it calls other services (TLS, token)
    reflection: bool = False          # serve grpc.reflection (off: it lists the whole API to anyone)
    auth: AuthConfig = field(default_factory=AuthConfig)  # tokens verified here (no public key: auth off)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # the rollout controller (store/rollout_*.py)
