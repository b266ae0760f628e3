"""Fixtures for the deploy-file tests (the helpers they use are plain modules beside this one)."""

from __future__ import annotations

import pytest

from tests.deploy.cli_settings import Cli


@pytest.fixture(scope="session")
def cli() -> Cli:
    """The CLI's own parser and layered settings, to read deploy files' command lines as `main` would."""
    return Cli()
