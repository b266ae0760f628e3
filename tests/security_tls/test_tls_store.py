"""A store served over real TLS (in-process, port 0): who gets in, reflection, and certificate rotation while a
Watch stream stays open."""

from __future__ import annotations

import queue
import threading
from dataclasses import replace

import grpc
import pytest

from adapterfleet.cli.auth_cmd import issue_cert
from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.common.security import open_channel
from adapterfleet.store.client import StoreClient
from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter
from tests.security_tls.tls_helpers import client, make_material, peer_serial, serial_of, server_tls


@pytest.fixture
def material(tmp_path):
    return make_material(tmp_path / "sec")


@pytest.fixture
def tls_store(store_config, material):
    address, _, stop = start_store(replace(store_config, tls=server_tls(material)))
    yield address
    stop()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_plaintext_client_is_refused(tls_store):
    with StoreClient(tls_store, timeout=5) as plain, pytest.raises(AdapterFleetError) as err:
        plain.list_adapters()
    assert err.value.code == "UNAVAILABLE"


def test_client_without_certificate_is_refused_by_mtls(tls_store, material):
    with StoreClient(tls_store, timeout=5, security=client(material, cert=False)) as c, \
            pytest.raises(AdapterFleetError) as err:
        c.list_adapters()
    assert err.value.code == "UNAVAILABLE"


def test_client_of_another_ca_is_refused(tls_store, material, tmp_path):
    other = make_material(tmp_path / "other")
    with StoreClient(tls_store, timeout=5, security=client(other)) as c, pytest.raises(AdapterFleetError) as err:
        c.list_adapters()
    assert err.value.code == "UNAVAILABLE"


def test_mtls_client_gets_in_and_reflection_is_off(tls_store, material, tmp_path):
    with StoreClient(tls_store, timeout=10, security=client(material)) as c:
        out = c.push_dir(write_adapter(tmp_path / "a"), "team/a")
        assert [a.name for a in c.list_adapters()] == ["team/a"]
        assert out.manifest.version == 1
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with open_channel(tls_store, client(material)) as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=10))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rotation_keeps_an_open_watch_and_new_connections_get_the_new_certificate(tls_store, material, tmp_path):
    port = _port(tls_store)
    old = serial_of(material.cert)
    assert peer_serial(port, material) == old
    events: queue.Queue = queue.Queue()
    watcher = StoreClient(tls_store, security=client(material))

    def watch():
        try:
            for e in watcher.watch("$", ""):
                events.put(e)
        except AdapterFleetError as err:  # the channel closed at the end of the test
            events.put(err)

    threading.Thread(target=watch, daemon=True).start()
    with StoreClient(tls_store, timeout=10, security=client(material)) as c:
        c.push_dir(write_adapter(tmp_path / "a", seed=1), "team/a")
    first = events.get(timeout=20)
    assert (first.name, first.version) == ("team/a", 1)

    new = issue_cert(material)  # replaces tls.key then tls.crt, as a rotation does
    assert new != old
    assert peer_serial(port, material) == new  # a new connection sees the new certificate

    with StoreClient(tls_store, timeout=10, security=client(material)) as c:  # a new channel, new client cert
        c.push_dir(write_adapter(tmp_path / "b", seed=2), "team/b")
    second = events.get(timeout=20)  # the stream opened before the rotation is still alive
    assert (second.name, second.version) == ("team/b", 1)
    watcher.close()


def test_server_name_override_is_checked_against_the_certificate(tls_store, material):
    port = _port(tls_store)
    with StoreClient(f"127.0.0.1:{port}", timeout=10,
                     security=replace(client(material), server_name="localhost")) as named:
        assert named.list_adapters() == []
    with StoreClient(f"127.0.0.1:{port}", timeout=5,
                     security=replace(client(material), server_name="not-in-the-cert.example")) as wrong, \
            pytest.raises(AdapterFleetError) as err:
        wrong.list_adapters()
    assert err.value.code == "UNAVAILABLE"


def test_half_written_rotation_keeps_the_previous_certificate(material):
    from adapterfleet.common.tls import CertificateReloader
    from tests.security_tls.tls_helpers import server_tls

    reloader = CertificateReloader(server_tls(material))
    assert reloader() is None  # nothing changed
    old_key = material.key.read_bytes()
    issue_cert(material)
    material.key.write_bytes(old_key)  # a new certificate beside the old key: not a usable pair
    assert reloader() is None and reloader.reloads == 0
    issue_cert(material)  # both replaced
    assert reloader() is not None and reloader.reloads == 1
    assert reloader() is None  # and only once
