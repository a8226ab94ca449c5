"""A strict HTTP/1.1 server for hostile networks: asyncio for the sockets, h11 for the protocol.

Why not uvicorn or hypercorn: both parse with h11 too, but neither bounds the time a request may
take to *arrive*. Their timeouts apply to each read or to idle keep-alive time, and are reset by
every byte, so a client that trickles a header line every few seconds holds its connection for
ever; an ASGI app cannot help, because it is called only once the headers are complete. Here the
connection loop is ours and small, and everything that parses HTTP is h11's (used by uvicorn,
hypercorn and httpcore), so each limit is one line:

* a **whole-request deadline**: the request line, headers and body must all arrive within
  ``request_timeout_s`` of the request's first byte (of the connection's accept, for the first
  request), or the client gets a typed 408 and the connection is closed;
* an idle keep-alive deadline and a cap on requests per connection;
* caps on the header block (``max_header_bytes``), on the body (the application sets it per
  request from the headers, before a byte of the body is read), on open connections overall and
  per client address, and on requests being answered at once;
* a real listen backlog, so a burst of clients waits in the kernel's queue instead of being
  reset; a client over a cap gets a typed 429 with ``Retry-After``, never a reset: the refusal is
  written and the connection is closed *lingering* (what the client still sends is read and
  dropped first; closing a socket with unread data makes the kernel send a reset);
* strict framing: besides h11's own checks (conflicting ``Content-Length``, bad request lines,
  invalid header names or values), a repeated ``Content-Length`` (even with equal values), any
  ``Transfer-Encoding``, an obsolete folded header line or a bare-LF line ending is a 400 — the
  request shapes that front proxies and back ends may read differently (request smuggling);
* TLS straight from the server when it is given an :class:`ssl.SSLContext`.

The application sees whole requests: :meth:`Application.admit` checks the head (on the event
loop, so it must be quick) and says how many body bytes to read; :meth:`Application.respond`
runs in a worker thread with the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
LINGER_S = 2.0
"""how long a refused connection's leftover input is read and dropped before the close"""
LINGER_BYTES = 1 << 20
BLANK_LINE = re.compile(rb"\r?\n\r?\n")
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""control characters (tab aside), which RFC 9110 does not allow in a field value"""


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces; the defaults suit a victim on one machine."""

    request_timeout_s: float = 10.0
    """a whole request (line, headers, body) must arrive within this many seconds"""
    keepalive_timeout_s: float = 15.0
    """an idle keep-alive connection is closed after this many seconds"""
    max_requests_per_connection: int = 10_000
    max_header_bytes: int = 16 * 1024
    """request line plus headers"""
    max_connections: int = 256
    """open connections overall; more get a 429 and are closed"""
    max_connections_per_client: int = 32
    """open connections from one client address"""
    max_inflight: int = 16
    """requests being answered at once (worker threads)"""
    queue_wait_s: float = 1.0
    """how long a request waits for a free worker before it gets a 429"""
    backlog: int = 1024
    """the kernel's queue of connections not yet accepted"""
    retry_after_s: int = 1
    """``Retry-After`` of every 429 the server itself sends"""

    def __post_init__(self) -> None:
        bad = {name: value for name, value in self.__dict__.items() if not value > 0}
        if bad:
            raise ValueError(f"limits must be > 0, got {bad}")


class HttpError(Exception):
    """A typed error response: ``{"code", "message", **extra}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: int,
    ) -> None:
        super().__init__(message)
        self.response = Response(
            status, {"code": code, "message": message, **extra}, dict(headers or {})
        )


@dataclass(frozen=True)
class RequestHead:
    """A request's line and headers; header names lower-case, each at most once."""

    method: str
    path: str
    headers: Mapping[str, str]
    client: str


@dataclass(frozen=True)
class Response:
    """A JSON response."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class Application(Protocol):
    """What the server serves."""

    def admit(self, head: RequestHead) -> int:
        """Check a request's head; return how many body bytes to read, or raise
        :class:`HttpError`. Runs on the event loop: no blocking work."""
        ...

    def respond(self, head: RequestHead, body: bytes) -> Response:
        """Answer a whole request (in a worker thread); may raise :class:`HttpError`."""
        ...


class HttpServer:
    """Serves one :class:`Application` on a socket bound at construction (``port=0`` picks a
    free port; read :attr:`address`). :meth:`start` serves from a background thread,
    :meth:`close` stops it from any thread."""

    def __init__(
        self,
        app: Application,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.limits = limits or Limits()
        self._tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server(
            (host, port), family=family, backlog=self.limits.backlog
        )
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        self._workers = ThreadPoolExecutor(self.limits.max_inflight, thread_name_prefix="http")
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._free_workers: asyncio.Semaphore | None = None
        self._thread: threading.Thread | None = None
        self._open: Counter[str] = Counter()
        """open connections per client address"""
        self._refusing = 0
        """connections over a cap being answered 429 and closed lingering"""
        self._last_warning: dict[str, float] = {}

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    def start(self) -> HttpServer:
        """Serve from a background thread (returns once the server accepts connections)."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name="http-server"
        )
        self._thread.start()
        ready.wait(timeout=30)
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait; then call :meth:`close`)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def close(self) -> None:
        """Stop serving: open connections are dropped, requests being answered are abandoned."""
        if self._thread is not None and self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)
        self._workers.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self._socket.close()
        if self._thread is None and not self._loop.is_closed():
            self._loop.close()  # never started

    # ---- the event loop (everything below runs on the server's thread) ------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            self._loop.run_until_complete(self._serve(ready))
        finally:
            ready.set()
            self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._free_workers = asyncio.Semaphore(self.limits.max_inflight)
        server = await asyncio.start_server(
            self._connection,
            sock=self._socket,
            ssl=self._tls,
            ssl_handshake_timeout=self.limits.request_timeout_s if self._tls else None,
            backlog=self.limits.backlog,
        )
        ready.set()
        await self._stopping.wait()
        server.close()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        with contextlib.suppress(OSError, AttributeError):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        over = self._over_capacity(client)
        try:
            if over is not None:
                self.warn(over, f"too many open {over}; {client} refused with 429")
                refusal = self._too_many(f"too many open {over}")
                if self._refusing >= self.limits.max_connections:
                    # a flood: no lingering for every refused connection (its cost is bounded)
                    writer.write(final_response(refusal))
                    return
                self._refusing += 1
                try:
                    await self.refuse(reader, writer, refusal)
                finally:
                    self._refusing -= 1
                return
            self._open[client] += 1
            try:
                await _Exchange(self, reader, writer, client).run()
            finally:
                self._open[client] -= 1
                if not self._open[client]:
                    del self._open[client]
        except (OSError, ssl.SSLError, h11.LocalProtocolError):
            pass  # the client went away mid-exchange
        except asyncio.CancelledError:
            pass  # the server is closing (Python 3.11's stream callback logs a cancelled task)
        finally:
            with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                writer.close()

    def _over_capacity(self, client: str) -> str | None:
        if sum(self._open.values()) >= self.limits.max_connections:
            return "connections"
        if self._open[client] >= self.limits.max_connections_per_client:
            return "connections from one address"
        return None

    def _too_many(self, why: str) -> Response:
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        return HttpError(429, "overloaded", f"{why}; retry later", retry).response

    def warn(self, kind: str, message: str) -> None:
        """Log a refusal, at most once every 5 s per kind (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -1e9) >= 5.0:
            self._last_warning[kind] = now
            log.warning("http: %s", message)

    async def respond(self, head: RequestHead, body: bytes) -> Response:
        """The application's answer, from a worker thread if one frees up in time."""
        assert self._free_workers is not None
        try:
            await asyncio.wait_for(self._free_workers.acquire(), self.limits.queue_wait_s)
        except TimeoutError:
            self.warn("busy", f"all {self.limits.max_inflight} workers busy; 429 sent")
            return self._too_many("too many requests in flight")
        try:
            return await self._loop.run_in_executor(self._workers, _answer, self.app, head, body)
        finally:
            self._free_workers.release()

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.limits.request_timeout_s):
            await writer.drain()

    async def refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: Response
    ) -> None:
        """Send a final response, then close without a reset: what the client still sends is
        read and dropped first (closing a socket with unread data makes the kernel reset it)."""
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await self.send(writer, final_response(response))
        await self.linger(reader, writer)

    async def linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """End a connection whose last response is sent: no more output, then read and drop the
        client's leftovers until it closes (or for ``LINGER_S``), so the close is not a reset."""
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                dropped = 0
                while dropped < LINGER_BYTES and (chunk := await reader.read(READ_CHUNK)):
                    dropped += len(chunk)


def _answer(app: Application, head: RequestHead, body: bytes) -> Response:
    try:
        return app.respond(head, body)
    except HttpError as exc:
        return exc.response
    except Exception:
        log.exception("http: unexpected error answering %s %s", head.method, head.path)
        return Response(500, {"code": "internal", "message": "internal error"})


def _headers(response: Response, data: bytes, close: bool) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        ("Server", "arena"),
        *response.headers.items(),
    ]
    return [*headers, ("Connection", "close")] if close else headers


def _encode(conn: h11.Connection, response: Response, close: bool) -> bytes:
    data = json.dumps(dict(response.body), allow_nan=False).encode()
    out = conn.send(
        h11.Response(status_code=response.status, headers=_headers(response, data, close))
    )
    return (
        (out or b"")
        + (conn.send(h11.Data(data=data)) or b"")
        + (conn.send(h11.EndOfMessage()) or b"")
    )


def final_response(response: Response) -> bytes:
    """The bytes of a response that ends its connection, whatever state the request was in
    (not parsed yet, broken, half read)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: arena\r\n\r\n")
    conn.next_event()
    return _encode(conn, response, close=True)


class _Exchange:
    """One connection's requests, one after another (keep-alive), each under its deadline."""

    def __init__(
        self,
        server: HttpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str,
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.client = client
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self.head_bytes = bytearray()
        """the current request's bytes until its head is parsed (for the framing checks)"""
        self.reading_head = True
        self.declared_length = 0
        """the current request's ``Content-Length`` (0 without one)"""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.request_timeout_s
        for served in range(self.limits.max_requests_per_connection):
            if served:
                self.conn.start_next_cycle()
                self.head_bytes = bytearray(self.conn.trailing_data[0])
                self.reading_head = True
                if not await self._next_request_begins():
                    return
                deadline = loop.time() + self.limits.request_timeout_s
            last = served == self.limits.max_requests_per_connection - 1
            if not await self._exchange(deadline, last):
                return

    async def _next_request_begins(self) -> bool:
        """Wait, at most the keep-alive time, for a next request; False when there is none."""
        if self.conn.trailing_data[0]:
            return True
        try:
            async with asyncio.timeout(self.limits.keepalive_timeout_s):
                chunk = await self.reader.read(READ_CHUNK)
        except TimeoutError:
            return False
        self._feed(chunk)
        return bool(chunk)

    async def _exchange(self, deadline: float, last: bool) -> bool:
        """Read, answer and send one request; True when the connection stays open."""
        try:
            async with asyncio.timeout_at(deadline):
                head = await self._head()
                if head is None:
                    return False
                size = self.server.app.admit(head)
                body = await self._body(size)
        except TimeoutError:
            self.server.warn("timeout", f"{self.client} did not send a whole request in time")
            await self._refuse(HttpError(408, "timeout", "the request did not arrive in time"))
            return False
        except HttpError as exc:
            await self._refuse(exc)
            return False
        except h11.RemoteProtocolError as exc:
            # 431: the header block is over the cap; every other framing problem is a 400
            status = 431 if exc.error_status_hint == 431 else 400
            await self._refuse(HttpError(status, f"http_{status}", _short(str(exc))))
            return False
        response = await self.server.respond(head, body)
        close = last or response.status >= 500
        await self.server.send(self.writer, _encode(self.conn, response, close))
        if close or self.conn.our_state is h11.MUST_CLOSE:
            await self.server.linger(self.reader, self.writer)
            return False
        return True

    async def _head(self) -> RequestHead | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise HttpError(400, "bad_request", "expected a request")
        _check_framing(self.head_bytes)
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("ascii").lower()
            if key in headers:
                raise HttpError(400, "bad_request", f"header {key} sent twice")
            if CONTROL.search(value):
                raise HttpError(400, "bad_request", f"header {key} holds a control character")
            headers[key] = value.decode("latin-1")
        if "transfer-encoding" in headers:
            raise HttpError(
                400, "bad_request", "Transfer-Encoding is not accepted: send a Content-Length"
            )
        path = event.target.decode("latin-1").split("?", 1)[0].split("#", 1)[0]
        if "://" in path:  # absolute-form: only its path names a route
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return RequestHead(event.method.decode("ascii"), path, headers, self.client)

    async def _body(self, size: int) -> bytes:
        """The body, refused unread when it is longer than the application admitted."""
        declared = self.declared_length
        if declared > size:
            raise HttpError(
                413,
                "batch_too_large",
                f"a body of {declared} bytes is not accepted here (at most {size})",
            )
        if self.conn.client_is_waiting_for_100_continue:
            await self.server.send(
                self.writer,
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"",
            )
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise HttpError(400, "bad_request", "the body ended early")

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Request):
                    self.reading_head = False
                    self.declared_length = int(_header(event, b"content-length") or 0)
                return event
            self._feed(await self.reader.read(READ_CHUNK))

    def _feed(self, chunk: bytes) -> None:
        if self.reading_head:
            self.head_bytes += chunk
        self.conn.receive_data(chunk)

    async def _refuse(self, error: HttpError) -> None:
        await self.server.refuse(self.reader, self.writer, error.response)


def _header(request: h11.Request, name: bytes) -> bytes | None:
    return next((value for key, value in request.headers if key == name), None)


def _check_framing(raw: bytes | bytearray) -> None:
    """Refuse the request shapes h11 tolerates but a proxy in front may read differently."""
    found = BLANK_LINE.search(raw)
    block = bytes(raw[: found.start()] if found else raw)
    lines = block.split(b"\n")
    bare_lf = any(not line.endswith(b"\r") for line in lines[:-1])
    if bare_lf or (found is not None and found.group(0) != b"\r\n\r\n"):
        raise HttpError(400, "bad_request", "every line must end with CRLF")
    lengths = 0
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "bad_request", "folded header lines are not accepted")
        lengths += line.split(b":", 1)[0].strip().lower() == b"content-length"
    if lengths > 1:
        raise HttpError(400, "bad_request", "Content-Length sent more than once")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
