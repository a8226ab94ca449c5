"""The isolated endpoint: a victim service reachable over HTTP by *untrusted* attackers.

Inside a Ray cluster every piece of code is trusted (an actor handle can run code in the victim's
actor, find it by name, kill it), so an untrusted attacker never joins the cluster: it talks to
this endpoint from outside, with a bearer token, and can send nothing but numeric arrays. The
endpoint stands in front of any object with the service interface (an in-process
:class:`arena.service.VictimService` or an :class:`orchestration.ray_service.RayServiceProxy`).

The server is the standard library's :class:`http.server.ThreadingHTTPServer`: Ray Serve is not
installed here with its dependencies (FastAPI, uvicorn, starlette, ...), and three fixed routes
need no framework. What the protocol allows, and nothing else:

* ``GET /v1/spec``: the public input/output spec.
* ``GET /v1/status``: budget, used, remaining of the token's attacker (of no other).
* ``POST /v1/query``: the body is the batch as raw little-endian float32 bytes
  (``Content-Type: application/octet-stream``), its shape in ``X-Arena-Shape: B,d1,d2,...``,
  the client's query id in ``X-Arena-Query-Id``, optional zoo targets as a two-number JSON
  object in ``X-Arena-Targets``. The answer is ``{"outputs": [[...]], "used": n,
  "remaining": m}``. Bytes are only ever read as float32 numbers: nothing is unpickled,
  evaluated or looked up by name, and no file is ever served.

Every failure is ``{"code": ..., "message": ...}`` (``requested``/``remaining`` added for a budget
error) with an HTTP status: 400 malformed (the service's own codes: ``shape``, ``dtype``,
``non_finite`` ...), 401 missing or unknown token, 402 budget exhausted, 403 refused by a
detector, 404 unknown route, 405 wrong method, 409 query id reused for other inputs, 411 no
``Content-Length``, 413 body larger than ``max_batch`` inputs (checked on ``Content-Length``
before a byte of the body is read), 415 a body that is not raw float32, 408 a body that stalls,
429 too many queries in flight, 503 victim unavailable, 500 anything unexpected (no detail
leaves the server).

Tokens: several tokens may name one attacker, whose one ledger (and so one budget) they share;
the endpoint opens each attacker's account with its budget at start. The ledger is idempotent on
(attacker, query id): a retried query id is answered again without a second charge.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import re
import secrets
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from arena.errors import ArenaError
from arena.oracle import AccountStatus, Answer, OracleEndpoint, Rejection

log = logging.getLogger(__name__)

SHAPE_HEADER = "X-Arena-Shape"
QUERY_ID_HEADER = "X-Arena-Query-Id"
TARGETS_HEADER = "X-Arena-Targets"
DTYPE_HEADER = "X-Arena-Dtype"
BODY_SLACK = 64
"""bytes allowed over ``max_batch`` inputs before a body is refused with 413 (none are needed
for raw float32; a little slack keeps the bound obviously safe)"""
MAX_DIMS = 8
QUERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SHAPE = re.compile(rf"[0-9]{{1,8}}(,[0-9]{{1,8}}){{0,{MAX_DIMS - 1}}}")
LENGTH = re.compile(r"[0-9]{1,15}")
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
ATTACKER = re.compile(r"[A-Za-z0-9._-]{1,128}")

STATUS_OF_CODE = {
    "batch_too_large": 413,
    "budget_exhausted": 402,
    "refused": 403,
    "query_id_reused": 409,
    "overloaded": 429,
    "unavailable": 503,
    "unknown_attacker": 401,
}
"""HTTP status of each rejection code the service returns; any other code is a 400"""


class ServedService(OracleEndpoint, Protocol):
    """What the endpoint needs from the service: the oracle half plus opening accounts."""

    def open_account(self, attacker_id: str, budget: int) -> None: ...


class TokenFileError(ArenaError):
    """A tokens file that cannot be used; the message names the problem in one line."""


class AttackerEntry(BaseModel):
    """One attacker of the tokens file: its one budget and every token that acts as it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ATTACKER.pattern)
    budget: NonNegativeInt
    tokens: list[str] = Field(min_length=1)


class TokensFile(BaseModel):
    """``attackers: [{id, budget, tokens: [...]}, ...]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attackers: list[AttackerEntry] = Field(min_length=1)


@dataclass(frozen=True)
class TokenTable:
    """Which attacker each token acts as, and each attacker's budget."""

    owners: Mapping[str, str]
    """token -> attacker id"""
    budgets: Mapping[str, int]
    """attacker id -> budget"""

    def __post_init__(self) -> None:
        for token, owner in self.owners.items():
            if not TOKEN.fullmatch(token):
                raise TokenFileError(
                    f"token of {owner!r} must be 16-256 characters of [A-Za-z0-9._~+/=-]"
                )
            if owner not in self.budgets:
                raise TokenFileError(f"token of {owner!r} names an attacker with no budget")

    @classmethod
    def from_entries(cls, entries: list[AttackerEntry]) -> TokenTable:
        owners: dict[str, str] = {}
        budgets: dict[str, int] = {}
        for entry in entries:
            if entry.id in budgets:
                raise TokenFileError(f"attacker {entry.id!r} is listed twice")
            budgets[entry.id] = entry.budget
            for token in entry.tokens:
                if token in owners:
                    raise TokenFileError(f"a token of {entry.id!r} is also given to another entry")
                owners[token] = entry.id
        return cls(owners, budgets)


def load_tokens(path: Path) -> TokenTable:
    """Read and check a tokens file; every problem is a one-line :class:`TokenFileError`."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TokenFileError(f"tokens file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TokenFileError(f"cannot read tokens file {path}: {type(exc).__name__}") from None
    try:
        parsed = TokensFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise TokenFileError(f"tokens file {path}: {where}: {first['msg']}") from None
    return TokenTable.from_entries(parsed.attackers)


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return secrets.token_urlsafe(32)


class _HttpError(Exception):
    """A typed error response; raised inside the handler only, never to a caller."""

    def __init__(self, status: int, code: str, message: str, **extra: int) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"code": code, "message": message, **extra}


def rejection_body(rejection: Rejection) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a service rejection."""
    body: dict[str, Any] = {"code": rejection.code, "message": rejection.message}
    if rejection.code == "budget_exhausted":
        body.update(requested=rejection.requested, remaining=rejection.remaining)
    return STATUS_OF_CODE.get(rejection.code, 400), body


class IsolatedEndpoint:
    """Serve ``service`` over HTTP to the attackers of ``tokens`` (opens their accounts).

    ``port=0`` picks a free port (read :attr:`url`). ``max_inflight`` queries run at once, more
    get 429; a connection idle for ``timeout_s`` is dropped.
    """

    def __init__(
        self,
        service: ServedService,
        tokens: TokenTable,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_inflight: int = 16,
        max_connections: int = 64,
        timeout_s: float = 30.0,
    ) -> None:
        self._service = service
        self._tokens = [(t.encode(), owner) for t, owner in tokens.owners.items()]
        for attacker, budget in tokens.budgets.items():
            service.open_account(attacker, budget)
        input_spec, output_spec = service.public_spec()
        self._item_bytes = 4 * math.prod(input_spec.shape)
        self.max_body = input_spec.max_batch * self._item_bytes + BODY_SLACK
        self._spec_body = {
            "input": {
                "shape": list(input_spec.shape),
                "dtype": input_spec.dtype,
                "low": input_spec.low,
                "high": input_spec.high,
                "max_batch": input_spec.max_batch,
            },
            "output": {
                "num_classes": output_spec.num_classes,
                "label_only": output_spec.label_only,
            },
        }
        self._inflight = threading.BoundedSemaphore(max_inflight)
        self._server = _Server((host, port), _handler(self, timeout_s), max_connections)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> IsolatedEndpoint:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="endpoint")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> IsolatedEndpoint:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- request handling (called from the handler threads) ----------------------------------

    def attacker_of(self, authorization: str | None) -> str:
        """The attacker a bearer token acts as; every token is compared in constant time."""
        if not authorization or not authorization.startswith("Bearer "):
            raise _HttpError(401, "unauthorized", "send Authorization: Bearer <token>")
        presented = authorization.removeprefix("Bearer ").strip().encode("latin-1", "replace")
        owner = None
        for token, attacker in self._tokens:
            if hmac.compare_digest(presented, token):
                owner = attacker
        if owner is None:
            raise _HttpError(401, "unauthorized", "unknown token")
        return owner

    def spec(self) -> dict[str, Any]:
        return self._spec_body

    def status(self, attacker: str) -> dict[str, Any]:
        status: AccountStatus = self._service.account_status(attacker)
        return {"budget": status.budget, "used": status.used, "remaining": status.remaining}

    def check_length(self, length: str | None, encoding: str | None) -> int:
        """The body size from ``Content-Length``, refused before the body is read."""
        if encoding is not None:
            raise _HttpError(411, "length_required", "send a Content-Length, not chunks")
        if length is None or not LENGTH.fullmatch(length.strip()):
            raise _HttpError(411, "length_required", "send a Content-Length header")
        size = int(length.strip())
        if size > self.max_body:
            raise _HttpError(
                413,
                "batch_too_large",
                f"body of {size} bytes exceeds the maximum {self.max_body} "
                f"({self.max_body // max(self._item_bytes, 1)} inputs of {self._item_bytes} bytes)",
            )
        return size

    def check_headers(self, headers: Message[str, str], size: int) -> tuple[str, tuple[int, ...]]:
        """The query id and batch shape, checked against the body size before it is read."""
        kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/octet-stream":
            raise _HttpError(
                415,
                "not_array",
                "the body must be the batch as raw little-endian float32 bytes "
                "(Content-Type: application/octet-stream)",
            )
        dtype = headers.get(DTYPE_HEADER)
        if dtype is not None and dtype.strip().lower() != "float32":
            raise _HttpError(400, "dtype", f"expected dtype float32, got {dtype[:40]!r}")
        query_id = headers.get(QUERY_ID_HEADER) or ""
        if not QUERY_ID.fullmatch(query_id):
            raise _HttpError(
                400, "bad_request", f"{QUERY_ID_HEADER} must be 1-128 characters of [A-Za-z0-9._:-]"
            )
        raw_shape = (headers.get(SHAPE_HEADER) or "").replace(" ", "")
        if not SHAPE.fullmatch(raw_shape):
            raise _HttpError(400, "shape", f"{SHAPE_HEADER} must be the batch shape, e.g. 16,1,8,8")
        shape = tuple(int(s) for s in raw_shape.split(","))
        expected = 4 * math.prod(shape)
        if expected != size:
            raise _HttpError(
                400,
                "shape",
                f"shape {list(shape)} needs {expected} bytes of float32, the body has {size}",
            )
        return query_id, shape

    def parse_targets(self, raw: str | None) -> dict[str, float] | None:
        """Zoo targets: a JSON object of numbers only (the service checks the fields)."""
        if raw is None:
            return None
        if len(raw) > 200:
            raise _HttpError(400, "targets", f"{TARGETS_HEADER} is too long")
        try:
            value = json.loads(raw)
        except ValueError:
            raise _HttpError(400, "targets", f"{TARGETS_HEADER} is not JSON") from None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and type(v) in (int, float) for k, v in value.items()
        ):
            raise _HttpError(400, "targets", "targets must be a JSON object of numbers")
        return {k: float(v) for k, v in value.items()}

    def query(
        self,
        attacker: str,
        query_id: str,
        body: bytes,
        shape: tuple[int, ...],
        targets: dict[str, float] | None,
    ) -> tuple[int, dict[str, Any]]:
        """Answer one batch through the service, at most ``max_inflight`` at a time."""
        if not self._inflight.acquire(blocking=False):
            raise _HttpError(429, "overloaded", "too many queries in flight; retry later")
        try:
            x = np.frombuffer(body, dtype="<f4").reshape(shape).astype(np.float32, copy=False)
            result = self._service.answer(attacker, query_id, x, targets)
        finally:
            self._inflight.release()
        if isinstance(result, Rejection):
            return rejection_body(result)
        assert isinstance(result, Answer)
        outputs = np.asarray(result.outputs, dtype=np.float32)
        return 200, {
            "outputs": outputs.tolist(),
            "used": int(result.used),
            "remaining": int(result.remaining),
        }


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that caps its connections and logs errors without tracebacks."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], connections: int
    ) -> None:
        self._connections = threading.BoundedSemaphore(connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: the connection is closed at once
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("endpoint: connection from %s ended with an error", client_address)


def _handler(endpoint: IsolatedEndpoint, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one endpoint."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "arena"
        timeout = timeout_s

        def setup(self) -> None:
            super().setup()
            # answers go out as headers then body: without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every request
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            try:
                status, body = self._route(method)
            except _HttpError as exc:
                status, body = exc.status, exc.body
                if method == "POST":
                    self.close_connection = True  # the body may be unread: end the connection
            except Exception:
                log.exception("endpoint: unexpected error")
                status, body = 500, {"code": "internal", "message": "internal error"}
                self.close_connection = True
            self._send(status, body)

        def _route(self, method: str) -> tuple[int, dict[str, Any]]:
            if method == "GET" and self.headers.get("Content-Length", "0").strip() != "0":
                self.close_connection = True  # a GET body is never read: end the connection
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.1"
                raise _HttpError(400, "bad_request", "HTTP/1.0 or HTTP/1.1 only")
            attacker = endpoint.attacker_of(self.headers.get("Authorization"))
            path = urlsplit(self.path).path
            routes = {"/v1/spec": "GET", "/v1/status": "GET", "/v1/query": "POST"}
            if path not in routes:
                raise _HttpError(404, "not_found", "unknown route")
            if routes[path] != method:
                raise _HttpError(405, "method_not_allowed", f"use {routes[path]} {path}")
            if path == "/v1/spec":
                return 200, endpoint.spec()
            if path == "/v1/status":
                return 200, endpoint.status(attacker)
            size = endpoint.check_length(
                self.headers.get("Content-Length"), self.headers.get("Transfer-Encoding")
            )
            query_id, shape = endpoint.check_headers(self.headers, size)
            targets = endpoint.parse_targets(self.headers.get(TARGETS_HEADER))
            try:
                body = self.rfile.read(size)
            except TimeoutError:
                raise _HttpError(408, "timeout", "the body did not arrive in time") from None
            if len(body) != size:
                raise _HttpError(400, "bad_request", "the body ended early")
            return endpoint.query(attacker, query_id, body, shape, targets)

        def _send(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """Protocol errors (bad request line, unsupported method) as typed JSON, not HTML."""
            self.close_connection = True
            self.request_version = "HTTP/1.1"  # a status line even for a broken request line
            with contextlib.suppress(OSError):
                self._send(code, {"code": f"http_{code}", "message": message or "bad request"})

        def version_string(self) -> str:
            return "arena"  # no Python version in the Server header

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("endpoint %s: " + format, self.client_address[0], *args)

    return Handler
