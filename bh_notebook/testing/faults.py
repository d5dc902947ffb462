"""FaultProxy: a TCP proxy on loopback that injects network faults between a client and an S3 server.

Modes (for the next ``count`` connections, then back to passing through, or for good with ``count=None``):
``"pass"``, ``"refuse"`` (accept and close at once), ``"http500"`` / ``"http503"`` (answer with that status),
``"reset"`` (relay ``reset_after`` bytes of the response, then reset the connection), ``"slow"`` (hold each
response ``delay`` seconds), ``"hang"`` (accept and read the request, never answer: a dead endpoint),
``"trickle"`` (relay both ways in pieces of ``trickle_bytes``, waiting ``delay`` seconds before each: a slow
link that keeps moving), ``"corrupt"`` (flip one bit of the request at byte ``corrupt_at``, past the headers of
a large upload: what a faulty middlebox or NIC does), ``"cut_request"`` (relay requests whole except the next ``cut_times`` whose
request line contains ``cut_match``: of those, the headers and the first ``cut_body_at`` body bytes, then a reset of
both sides: an upload cut off right after its headers, or mid-body). Changing the mode closes open connections, so pooled ones meet the new mode too.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

_BODY = {
    500: b"<Error><Code>InternalError</Code><Message>injected fault</Message></Error>",
    503: b"<Error><Code>SlowDown</Code><Message>injected fault</Message></Error>",
}


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``target`` (host, port), with faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._mode = "pass"
        self._remaining: int | None = None
        self.reset_after = 64 * 1024
        self.delay = 2.0
        self.trickle_bytes = 16 * 1024
        self.corrupt_at = 4096
        self.cut_body_at = 0
        self.cut_match = b""
        self.cut_times = 0
        self.faults = 0
        self.connections = 0
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def set(self, mode: str, count: int | None = None, **options: Any) -> None:
        """Apply ``mode`` to the next ``count`` connections (None: until changed)."""
        with self._lock:
            self._mode = mode
            self._remaining = count
            for name, value in options.items():
                setattr(self, name, value)
            open_now, self._open = self._open, set()
        for s in open_now:
            _close(s)

    def _next_mode(self) -> str:
        with self._lock:
            self.connections += 1
            mode = self._mode
            if mode != "pass" and self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._mode = "pass"
            if mode != "pass":
                self.faults += 1
            return mode

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        mode = self._next_mode()
        if mode == "refuse":
            _reset(client)
            return
        if mode in ("http500", "http503"):
            status = int(mode[4:])
            client.settimeout(0.5)
            try:
                client.recv(65536)
            except OSError:
                pass
            body = _BODY[status]
            reason = b"Internal Server Error" if status == 500 else b"Service Unavailable"
            try:
                client.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
                               b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            except OSError:
                pass
            _close(client)
            return
        if mode == "hang":
            with self._lock:
                self._open.add(client)
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
            _close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open |= {client, upstream}
        budget = [self.reset_after if mode == "reset" else None]
        trickle = self.delay if mode == "trickle" else None
        corrupt = self.corrupt_at if mode == "corrupt" else None
        if mode == "cut_request":
            threading.Thread(target=self._cut_request, args=(client, upstream), daemon=True).start()
            self._pipe(upstream, client, None, 0.0)
            return
        threading.Thread(target=self._pipe, args=(client, upstream, None, 0.0, trickle, corrupt), daemon=True).start()
        self._pipe(upstream, client, budget, self.delay if mode == "slow" else 0.0, trickle)

    def _pipe(self, src: socket.socket, dst: socket.socket, budget: list[int | None] | None, delay: float,
              trickle: float | None = None, corrupt_at: int | None = None) -> None:
        try:
            first = True
            seen = 0
            while True:
                data = src.recv(self.trickle_bytes if trickle is not None else 65536)
                if not data:
                    break
                if corrupt_at is not None and seen <= corrupt_at < seen + len(data):
                    i = corrupt_at - seen
                    data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
                seen += len(data)
                if trickle is not None:
                    time.sleep(trickle)
                if first and delay:
                    time.sleep(delay)
                first = False
                if budget is not None and budget[0] is not None:
                    if len(data) >= budget[0]:
                        dst.sendall(data[: budget[0]])
                        _reset(dst)
                        _close(src)
                        return
                    budget[0] -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        _close(dst)
        _close(src)

    def _cut_request(self, client: socket.socket, upstream: socket.socket) -> None:
        """Relay requests whole, except the next ``cut_times`` whose request line contains ``cut_match``: of those
        only the headers and the first ``cut_body_at`` body bytes go upstream, then both sides are reset."""
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                end = buf.index(b"\r\n\r\n") + 4
                head = buf[:end]
                line = head.split(b"\r\n", 1)[0]
                length = 0
                for header in head.split(b"\r\n")[1:]:
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                with self._lock:
                    cut = self.cut_times > 0 and self.cut_match in line
                    if cut:
                        self.cut_times -= 1
                        self.faults += 1
                if cut:
                    upstream.sendall(buf[: end + min(length, int(self.cut_body_at))])
                    break
                while len(buf) < end + length:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                upstream.sendall(buf[: end + length])
                buf = buf[end + length:]
        except OSError:
            pass
        _reset(upstream)
        _reset(client)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._stop.set()
        _close(self._listener)
        self.set("pass")
        self._thread.join(2)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def _reset(s: socket.socket) -> None:
    """Close with an RST instead of a FIN, as a crashed peer or a middlebox would."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass
