"""Typed configuration of a worker, built once at the entry point."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterfleet.common.auth_config import AuthConfig
from adapterfleet.common.metrics_config import MetricsConfig
from adapterfleet.common.security_config import INSECURE, ClientSecurity, ServerTLS
from adapterfleet.store.blob_urls import DirectFetchConfig

PORT = 50061  # where `adapterfleet worker serve` listens unless told otherwise (WorkerConfig's 0: any free port)


@dataclass(frozen=True)
class WorkerConfig:
    base_model: str
    store: str
    host: str = "127.0.0.1"
    port: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    region: str = "local"
    max_slots: int = 8               # adapters active on the device at once
    host_bytes: int = 2 << 30        # host-RAM tier budget
    disk_bytes: int = 20 << 30       # local-disk tier budget
    disk_dir: str = ".adapterfleet/worker-cache"
    # rows decoding at once: at overload, 64 rows against 32 cut TTFT p99 1.7-4.6x at the same or more tok/s, ITL p99
    # still far under vLLM's (benchmarks/engine_vs_vllm.py with "--paths ours --max-batch N")
    max_batch: int = 64
    threads: int = 0                 # torch threads of the engine (0: the CPUs it may use, cgroup limit included)
    # float32 CPU linear weights prepacked for oneDNN (lora/packed.py): decode steps in 0.40-0.80x the time
    # (benchmarks/few_rows.py), and the base model's linear weights take twice their memory
    packed_weights: bool = True
    # the native LoRA kernel (lora/native.py): built here in the background on first start (a C++ compiler on PATH),
    # kept in native_dir; until it loads, or where it cannot, torch's ops serve. Decode steps with 32 distinct adapters
    # ~1.3 ms faster, a prefill's LoRA terms 1.5-2.5x faster; open loop +6% tok/s (benchmarks/RESULTS.md)
    native_kernel: bool = True
    # decode rows' attention through the native kernels' decode_attention.cpp, only the positions each row attends to
    # (decode steps then run as ragged forwards; Llama, Mistral, Qwen2): a 48-64-row step of rows of different lengths
    # -19% (benchmarks/RESULTS.md); off: the model's own attention
    decode_attention: bool = True
    native_dir: str = ".adapterfleet/native"
    prefill_chunk_tokens: int = 512  # while rows decode, longer prefills run in chunks of this many tokens (0: off)
    # a decode step and a newcomer's prefill chunk as one forward (worker/ragged.py; Llama, Mistral, Qwen2)
    fused_steps: bool = True
    max_new_tokens_limit: int = 2048
    max_prompt_tokens: int = 32768   # also bounded by the model's positions
    max_prompt_chars: int = 1 << 20  # text longer than this is refused before it is tokenized
    slot_wait_s: float = 30.0
    max_rank: int = 256
    advertise: str = ""              # address routers should call (default host:port)
    announce_every_s: float = 1.0
    announce_ttl_s: float = 3.0      # a worker that stops announcing is out after this
    drain_s: float = 10.0            # on SIGTERM: in-flight requests get this long to finish
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # blobs by presigned URL straight from S3 when the store gives them (no S3 credentials needed here)
    direct: DirectFetchConfig = field(default_factory=DirectFetchConfig)
    # signed adapters: "PEM" (every tenant) or "TENANT=PEM" public keys; any set -> only signed adapters install
    trust_keys: tuple[str, ...] = ()
    tls: ServerTLS | None = None      # None: a plaintext port (the CLI allows that only with --insecure)
    security: ClientSecurity = INSECURE  # what this service presents when it calls other services (TLS, token)
    reflection: bool = False          # serve grpc.reflection (off: it lists the whole API to anyone)
    auth: AuthConfig = field(default_factory=AuthConfig)  # tokens verified here (no public key: auth off)
