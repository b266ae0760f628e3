"""A TCP forwarder in front of a server, that a test can cut: the network between a store and its S3 going away
while the S3 server itself keeps its data (moto keeps objects in memory only; stopping it would lose them).

    cut = NetCut(moto_port).up()            # point the store at 127.0.0.1:cut.port
    cut.down()                              # connection refused from now on, open connections reset
    cut.cut_after(upstream=1 << 20)         # cut once 1 MiB more has gone towards the server (mid-upload)
    cut.cut_after(downstream=1 << 20)       # ... or come back from it (mid-download)
    cut.silence()                           # as a host that died: open connections carry nothing more, with no
                                            # reset or close, and new ones are refused
    cut.up()                                # the same port answers again
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from adapterfleet.common.embedded_redis import free_port

_BUFFER = 64 << 10


class NetCut:
    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._budget: dict[str, int | None] = {"up": None, "down": None}
        self._silent = False
        self.cuts = 0  # how many times the link went down

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control --------------------------------------------------------------------------------------------------
    def up(self) -> NetCut:
        with self._lock:
            if self._listener is not None:
                return self
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
            self._budget = {"up": None, "down": None}
            self._silent = False
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        """Refuse new connections and reset the open ones, as an unreachable endpoint would."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
            if listener is not None:
                self.cuts += 1
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:  # silenced ones too
            with contextlib.suppress(OSError):  # RST, not FIN: the peer sees the connection break
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def silence(self) -> None:
        """Go silent as a host that died (or a network that drops everything) does: the open connections stay open
        but carry nothing more, without a reset or a close, so their peers hear nothing at all; new connections are
        refused. ``down()`` resets the silent connections."""
        with self._lock:
            listener, self._listener = self._listener, None
            self._silent = True
            if listener is None:
                return
            self.cuts += 1
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()

    def cut_after(self, *, upstream: int | None = None, downstream: int | None = None) -> None:
        """Go down once ``upstream`` more bytes went to the server, or ``downstream`` more came back."""
        with self._lock:
            self._budget = {"up": upstream, "down": downstream}

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # --- plumbing -------------------------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    server.close()
                    return
                self._conns |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(_BUFFER):
                if self._silent:
                    return  # dropped; nothing read or sent again, and the sockets are left open (silence())
                with self._lock:
                    budget = self._budget[direction]
                    if budget is not None:
                        self._budget[direction] = budget - len(data)
                    trip = budget is not None and budget - len(data) <= 0
                if trip:
                    dst.sendall(data[:max(budget or 0, 0)])
                    self.down()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not self._silent:
                self._close(src, dst)

    def _close(self, src: socket.socket, dst: socket.socket) -> None:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._conns -= {src, dst}
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()
