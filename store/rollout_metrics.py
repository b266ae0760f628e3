"""Rollout figures for Prometheus, per alias, from the controller's last look at Redis (read at scrape time)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapterfleet.store.rollout_record import STATES


class RolloutCollector:
    def __init__(self, controller):
        self._controller = controller

    def describe(self):
        return []

    def collect(self):
        view = self._controller.view
        state = GaugeMetricFamily("adapterfleet_rollout_state", "each rollout's state: 1 for the one it is in "
                                  "(running, paused, done, rolled_back, aborted)", labels=["name", "alias", "state"])
        step = GaugeMetricFamily("adapterfleet_rollout_step", "the step a rollout is at (1-based; 0 before the "
                                 "first)", labels=["name", "alias"])
        weight = GaugeMetricFamily("adapterfleet_rollout_new_version_weight", "percent of the alias's traffic on "
                                   "the new version", labels=["name", "alias", "version"])
        errors = GaugeMetricFamily("adapterfleet_rollout_gate_error_rate", "error rate of each version over the "
                                   "last judged window", labels=["name", "alias", "version"])
        p99 = GaugeMetricFamily("adapterfleet_rollout_gate_p99_ms", "p99 latency (time to first answer) of each "
                                "version over the last judged window", labels=["name", "alias", "version"])
        for r in view:
            for s in STATES:
                state.add_metric([r.name, r.alias, s], float(r.state == s))
            step.add_metric([r.name, r.alias], r.step + 1)
            weight.add_metric([r.name, r.alias, str(r.to_version)], dict(r.targets).get(r.to_version, 0))
            for f in (r.gates.old, r.gates.new):
                if f.version:
                    errors.add_metric([r.name, r.alias, str(f.version)], f.error_rate)
                    p99.add_metric([r.name, r.alias, str(f.version)], f.p99_ms)
        yield from (state, step, weight, errors, p99)
        yield GaugeMetricFamily("adapterfleet_rollout_driving", "rollouts this store process drives now",
                                value=len(self._controller.driving()))
        yield CounterMetricFamily("adapterfleet_rollout_takeovers", "rollouts this process took over from another "
                                  "store process that stopped renewing its lease", value=self._controller.takeovers)
