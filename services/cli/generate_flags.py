"""The generation options of `adapterfleet generate` beyond the basic sampling flags (kept here, beside no heavy
imports, so that building the parser stays instant). The worker checks every value (INVALID_ARGUMENT naming it)."""

from __future__ import annotations

import argparse


def add_generation_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--stop", action="append", metavar="TEXT",
                   help="a stop string (repeat for more; at most 16): the text ends before it")
    s.add_argument("--logprobs", action="store_true", help="report each generated token's log-probability")
    s.add_argument("--top-logprobs", type=int, default=0, metavar="N",
                   help="with --logprobs: also the N (0..20) most likely tokens at each step")
    s.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="transformers' repetition penalty over prompt and output, (0, 10]; 1: off")
    s.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's presence penalty, -2..2")
    s.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's frequency penalty, -2..2")
