"""A port is held from the check until a server binds it: no outgoing connection and no other `reserve` gets it,
every server of ours (SO_REUSEADDR) can bind it, and a port something else holds is refused by name."""

from __future__ import annotations

import socket
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
import pytest

from adapterfleet.common.ports import PortInUse, ephemeral_range, reserve


def test_a_held_port_is_given_to_no_connection_and_no_other_reservation():
    held = {reserve() for _ in range(4)}
    others = {reserve() for _ in range(200)}
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(600)
        clients = [socket.create_connection(server.getsockname()) for _ in range(300)]
        try:
            used = {c.getsockname()[1] for c in clients}
        finally:
            for c in clients:
                c.close()
    assert len(held) == 4 and not held & others and not held & used


def test_servers_of_ours_bind_a_held_port_and_it_is_refused_while_they_listen():
    grpc_port, http_port = reserve(), reserve()
    server = grpc.server(futures.ThreadPoolExecutor(1))
    assert server.add_insecure_port(f"127.0.0.1:{grpc_port}") == grpc_port
    server.start()
    http = HTTPServer(("127.0.0.1", http_port), BaseHTTPRequestHandler)  # what prometheus_client builds on
    try:
        for port in (grpc_port, http_port):
            with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is in use"):
                reserve(port)
    finally:
        server.stop(0)
        http.server_close()
    assert reserve(grpc_port) == grpc_port  # stopped: the TIME_WAIT it leaves does not count


def test_a_port_an_outgoing_connection_holds_is_refused():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client, pytest.raises(PortInUse):
            reserve(client.getsockname()[1])


def test_the_ephemeral_range_is_read_from_the_kernel():
    low, high = ephemeral_range()
    assert 1024 <= low < high <= 65535
