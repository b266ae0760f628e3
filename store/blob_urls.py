"""What direct blob reads need to be described, apart from the downloader (``direct_fetch.py``, which pulls in
``http.client`` and ``ssl``): the store's answer for one file, and the clients' setting. Light on purpose: the
worker's and the SDK's configs import it, and so does every CLI start."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlobUrl:
    """Where to GET one file of a version: a presigned URL, valid ``expires_in_s`` after the store answered."""

    file: str
    url: str
    expires_in_s: float


@dataclass(frozen=True)
class DirectFetchConfig:
    """How clients (workers, the SDK, the CLI) read blobs by URL. ``enabled=False``: always through the store."""

    enabled: bool = True
    # Files below parallel_min_bytes come as one GET (hashed beside the reader), larger ones as parallel ranged GETs.
    # On S3 one connection carries roughly 100 MB/s and AWS's guidance is byte-range GETs of 8-16 MB in parallel to
    # go past it, so a 100 MB adapter is read about streams times faster in parts. Servers that copy the whole object
    # for every ranged GET (moto, some S3 look-alikes) make parts cost one full read each: there, streams=1 (or a
    # larger parallel_min_bytes) is the setting, and one stream is as fast as a plain get_object; with measure_ranges
    # the client finds that out itself after two large files.
    part_bytes: int = 16 << 20          # size of one ranged GET of a large file
    measure_ranges: bool = True         # time ranged vs one GET per endpoint and use the faster (range_choice.py)
    parallel_min_bytes: int = 64 << 20  # files at least this large are fetched as parallel ranged GETs
    streams: int = 4                    # ranged GETs in flight per client
    connect_timeout_s: float = 3.0      # an S3 endpoint this client cannot reach costs this long, then the store
    read_timeout_s: float = 30.0
    expiry_margin_s: float = 1.0        # a URL this close to its expiry is not started
    unreachable_backoff_s: float = 60.0  # an endpoint that could not be reached is not tried again for this long
    ca_file: str | None = None          # extra CA bundle for https endpoints with a private CA
    # verified files up to small_blob_bytes (configs, READMEs) are kept by sha256, small_cache_bytes in all, and not
    # fetched again for the next version that has the same bytes (0: keep none)
    small_blob_bytes: int = 64 << 10
    small_cache_bytes: int = 1 << 20
