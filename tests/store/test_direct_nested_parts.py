"""Direct blob reads of a version with several files large enough for ranged GETs: the files beside the largest
run in a pool of their own, so their ranged parts never queue behind the very threads that wait for them (with
``streams`` such files at once, every thread of one shared pool waited for ever). A Range-capable HTTP server on
port 0 stands in for S3."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
import time

from adapterfleet.store.blob_urls import BlobUrl, DirectFetchConfig
from adapterfleet.store.direct_fetch import DirectFetcher
from adapterfleet.store.manifest import FileEntry, Manifest

BLOBS = {"adapter_model.safetensors": os.urandom(3 << 20), "b.txt": os.urandom(2 << 20), "c.txt": os.urandom(2 << 20)}


class Ranged(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        data = BLOBS[self.path.lstrip("/")]
        m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if m:
            first, last = int(m[1]), int(m[2])
            body = data[first:last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_several_files_in_ranged_parts_at_once_all_arrive():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ranged)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    manifest = Manifest("acme/x", tuple(FileEntry(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in BLOBS.items()))
    urls = [BlobUrl(n, f"http://127.0.0.1:{port}/{n}", 300.0) for n in BLOBS]
    fetcher = DirectFetcher(DirectFetchConfig(streams=2, part_bytes=256 << 10, parallel_min_bytes=1 << 20,
                                              measure_ranges=False))
    got: dict[str, bytes] = {}
    done = threading.Thread(target=lambda: fetcher.fetch_files(manifest, urls, time.monotonic(),
                                                                lambda n, b: got.__setitem__(n, bytes(b))),
                            daemon=True)
    try:
        done.start()
        done.join(60)  # a guard against a hang, not a speed limit
        assert not done.is_alive(), "the fetch hung"
        assert got == BLOBS
    finally:
        fetcher.close()
        server.shutdown()
