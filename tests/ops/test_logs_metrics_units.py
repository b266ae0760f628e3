"""JSON log lines and the adapter label budget, without servers."""

from __future__ import annotations

import json
import logging
import sys

from adapterfleet.common.logs import JsonFormatter, request_id
from adapterfleet.common.metrics import BASE, OTHER, AdapterLabels


def test_json_lines_carry_request_id_extras_and_exceptions():
    fmt = JsonFormatter("worker")
    token = request_id.set("r-1")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("adapterfleet.x").makeRecord(
                "adapterfleet.x", logging.ERROR, __file__, 1, "loaded %s", ("a@3",), sys.exc_info(),
                extra={"adapter": "a@3", "duration_ms": 1.5})
        line = json.loads(fmt.format(record))
    finally:
        request_id.reset(token)
    assert line["msg"] == "loaded a@3" and line["service"] == "worker" and line["level"] == "ERROR"
    assert line["request_id"] == "r-1" and line["adapter"] == "a@3" and line["duration_ms"] == 1.5
    assert "ValueError: boom" in line["exc"]
    assert line["ts"].endswith("Z")
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "no request", (), None)
    assert "request_id" not in json.loads(fmt.format(record))


def test_adapter_labels_are_names_with_bounded_cardinality():
    labels = AdapterLabels(limit=2)
    assert labels("acme/a@prod") == "acme/a" and labels("acme/a@sha256:" + "0" * 64) == "acme/a"
    assert labels("") == BASE and labels(None) == ""
    assert labels("acme/b@3") == "acme/b"
    assert labels("acme/c@3") == OTHER  # over budget
    assert labels("acme/a") == "acme/a"  # still known
