"""A domain error reaches the client as its own class (not only its status code's), through the store and through
the router's hop to a worker."""

from __future__ import annotations

import pytest

from adapterfleet.common.errors import AliasConflict, FailedPrecondition, InvalidAdapter, InvalidArgument
from tests.helpers.synthetic import write_adapter


def test_store_errors_keep_their_class(store, tmp_path):
    client = store.client()
    adapter = write_adapter(tmp_path / "a")
    client.push_dir(adapter, "acme/types", alias="prod")
    with pytest.raises(AliasConflict) as err:  # a FailedPrecondition, and more precisely a lost compare-and-set
        client.set_alias("acme/types", "prod", [(1, 100)], expect=None)
    assert isinstance(err.value, FailedPrecondition) and err.value.code == "FAILED_PRECONDITION"
    (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InvalidAdapter) as err:
        client.push_dir(adapter, "acme/types")
    assert isinstance(err.value, InvalidArgument)
