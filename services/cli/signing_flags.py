"""The flags of signed adapters: ``push --sign-key PEM`` and ``worker serve --trust-key [TENANT=]PEM`` (repeatable).

``--trust-key`` from ``ADAPTERFLEET_TRUST_KEY`` or a ``--config`` file is one comma-separated string; keys given on
the command line replace it (a flag wins, as for every other setting).
"""

from __future__ import annotations

import argparse


class _Repeatable(argparse.Action):
    """``--flag A --flag B`` -> ``[A, B]``; a layered default (a string) is replaced by the first flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(current if isinstance(current, list) else []), values])


def add_trust_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-key", action=_Repeatable, metavar="[TENANT=]PEM",
        help="install only adapters signed (OpenSSF Model Signing) by this EC public key; TENANT=PEM trusts it for "
             "that tenant's adapters only. Repeatable. With any key set, unsigned adapters are refused")


def add_sign_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sign-key", metavar="PEM",
                        help="sign the pushed files with this EC private key (OpenSSF Model Signing); the signature "
                             "is stored with the version and checked by workers started with --trust-key")


def trust_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--trust-key`` values, from flags (a list) or from the environment / config file (comma-separated)."""
    value = getattr(args, "trust_key", None)
    if not value:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(s.strip() for s in items if s.strip())
