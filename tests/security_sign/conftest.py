"""Fixtures of the signed-adapter and safe-client tests: one tiny Llama and two PEFT adapters for it, per session."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    from tests.helpers.models import make_base_model, make_peft_adapter

    root = tmp_path_factory.mktemp("security_sign")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "llama", seed=0)
        return {"base": base,
                "one": make_peft_adapter(base, root / "one", seed=1, r=4, target_modules=["q_proj", "v_proj"]),
                "two": make_peft_adapter(base, root / "two", seed=2, r=4, target_modules=["q_proj", "v_proj"])}
