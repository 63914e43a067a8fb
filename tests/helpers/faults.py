"""A fault-injecting TCP proxy on loopback, between a client and a real `mlflow server`: it
passes bytes both ways until told to fail for a stretch, then refuses connections (reset at
once), or answers every request with HTTP 503, and passes again when the stretch ends. A stretch
starts when told (``fail``) or when a given request first passes through (``fail_on``: the moment
is then the same on a fast machine and a slow one). Threads only, bounded: it stops with its
context manager."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from .servers import free_port

MODES = ("pass", "reset", "503")
_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FaultyProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.mode = "pass"
        self.refused = 0  # new connections or requests failed on purpose
        self.dropped = 0  # open connections reset when a fault began
        self._until = 0.0
        self._trigger: tuple[bytes, list[tuple[str, float]]] | None = None
        self.triggered = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self._drop_open()

    def fail(self, mode: str, seconds: float) -> None:
        """Fail every connection for ``seconds`` from now (the open ones are reset too)."""
        assert mode in MODES[1:], mode
        with self._lock:
            self.mode, self._until = mode, time.monotonic() + seconds
        self._drop_open()

    def fail_on(self, request: bytes, stretches: list[tuple[str, float]]) -> None:
        """When a request whose first line contains ``request`` (e.g. ``b"PUT /api/2.0/mlflow-artifacts/"``)
        reaches the proxy, fail for each (mode, seconds) stretch in turn, starting before that
        request is passed on (it is the first to fail)."""
        assert stretches and all(mode in MODES[1:] for mode, _ in stretches), stretches
        with self._lock:
            self._trigger = (request, list(stretches))

    def _check_trigger(self, data: bytes) -> bool:
        """True when ``data`` (bytes from a client) sets off the armed trigger."""
        with self._lock:
            if self._trigger is None or self._trigger[0] not in data.split(b"\r\n", 1)[0]:
                return False
            _, stretches = self._trigger
            self._trigger = None
        self.fail(*stretches[0])
        if len(stretches) > 1:
            threading.Thread(target=self._later_stretches, args=(stretches,), daemon=True).start()
        self.triggered.set()
        return True

    def _later_stretches(self, stretches: list[tuple[str, float]]) -> None:
        for (_, before), (mode, seconds) in zip(stretches, stretches[1:]):
            if self._stop.wait(before):
                return
            self.fail(mode, seconds)

    def failing(self) -> str | None:
        with self._lock:
            if self.mode != "pass" and time.monotonic() >= self._until:
                self.mode = "pass"
            return None if self.mode == "pass" else self.mode

    # -- plumbing -----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            mode = self.failing()
            if mode == "reset":
                self.refused += 1
                _reset(client)
            elif mode == "503":
                self.refused += 1
                threading.Thread(target=self._unavailable, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _unavailable(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            client.settimeout(5)
            client.recv(65536)  # the request line and headers (a body is dropped with the connection)
            client.sendall(_UNAVAILABLE)
        with contextlib.suppress(OSError):
            client.close()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        pumps = [threading.Thread(target=_pump, args=(client, upstream, self._check_trigger), daemon=True),
                 threading.Thread(target=_pump, args=(upstream, client), daemon=True)]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.close()

    @property
    def faults(self) -> int:
        """Connections the faults broke: refused while failing, or reset when failing began."""
        return self.refused + self.dropped

    def _drop_open(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        self.dropped += len(sockets) // 2  # a client's socket and its upstream's
        for s in sockets:
            _reset(s)


def _pump(source: socket.socket, sink: socket.socket, stop_at=None) -> None:
    """Copy bytes from ``source`` to ``sink``; ``stop_at(data)`` true drops ``data`` (the proxy
    has begun to fail and reset both sockets)."""
    source.settimeout(None)
    try:
        while True:
            data = source.recv(65536)
            if not data or (stop_at is not None and stop_at(data)):
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset by peer'."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()
