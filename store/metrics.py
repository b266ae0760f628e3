"""The store's figures for Prometheus, read from its stats at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class StoreCollector:
    def __init__(self, core):
        self._core = core

    def describe(self):
        return []

    def collect(self):
        s = self._core.stats
        c = CounterMetricFamily("adapterfleet_store_bytes", "adapter file bytes by direction", labels=["direction"])
        c.add_metric(["received"], s.bytes_received)
        c.add_metric(["deduplicated"], s.bytes_deduplicated)
        c.add_metric(["sent"], s.bytes_sent)
        yield c
        c = CounterMetricFamily("adapterfleet_store_pushes", "pushes by outcome", labels=["outcome"])
        c.add_metric(["created"], s.versions_created)
        c.add_metric(["unchanged"], s.pushes_unchanged)
        yield c
        yield CounterMetricFamily("adapterfleet_store_presigned_urls",
                                  "fetched files answered with a presigned S3 URL (their bytes went straight from S3)",
                                  value=s.urls_issued)


class ReplicationCollector:
    """A secondary region's replication from its primary (nothing in a primary): lag in events and seconds, blobs
    not yet copied, whether the primary's stream is followed, and what the follower and the copier did."""

    def __init__(self, status):
        self._status = status  # store/status_source.StatusSource

    def describe(self):
        return []

    def collect(self):
        follower = self._status.follower
        if follower is None:
            return
        s, copier = follower.state, follower.copier
        yield GaugeMetricFamily("adapterfleet_store_replication_lag_events", "primary events not yet applied in "
                                "this region (at the last check)", value=s.lag_events)
        yield GaugeMetricFamily("adapterfleet_store_replication_lag_seconds", "how long the oldest change not yet "
                                "applied here has waited (0: caught up; primary unreachable: since last caught up)",
                                value=s.lag_seconds)
        yield GaugeMetricFamily("adapterfleet_store_replication_connected", "1 while the primary's event stream is "
                                "followed", value=float(s.connected))
        yield GaugeMetricFamily("adapterfleet_store_replication_blobs_pending", "blobs of replicated versions not "
                                "yet copied into this region's bucket", value=s.blobs_pending)
        yield CounterMetricFamily("adapterfleet_store_replication_events", "primary events applied here",
                                  value=s.events_applied)
        yield CounterMetricFamily("adapterfleet_store_replication_resyncs", "complete resynchronisations (the "
                                  "primary's stream was trimmed past the cursor)", value=s.resyncs)
        c = CounterMetricFamily("adapterfleet_store_replication_blobs", "blobs copied from the primary, by outcome "
                                "(copied: verified and stored; refused: bytes that did not hash to the manifest)",
                                labels=["outcome"])
        c.add_metric(["copied"], copier.copied)
        c.add_metric(["refused"], copier.refused)
        yield c
        yield CounterMetricFamily("adapterfleet_store_replication_copied_bytes", "blob bytes copied from the primary",
                                  value=copier.bytes_copied)
