"""Whose fault a failed worker call is: the one table lives in :mod:`adapterfleet.common.faults` (shared with the
SDK's direct clients); re-exported here for the router's modules."""

from adapterfleet.common.faults import ENDED_EARLY, STALLED, Fault, Verdict, classify, ended_early, stalled, verdict_of

__all__ = ["ENDED_EARLY", "STALLED", "Fault", "Verdict", "classify", "ended_early", "stalled", "verdict_of"]
