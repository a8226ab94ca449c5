"""The isolated endpoint: a victim service reachable over HTTP by *untrusted* attackers.

Inside a Ray cluster every piece of code is trusted (an actor handle can run code in the victim's
actor, find it by name, kill it), so an untrusted attacker never joins the cluster: it talks to
this endpoint from outside, with a bearer token, and can send nothing but numeric arrays. The
endpoint stands in front of any object with the service interface (an in-process
:class:`arena.service.VictimService` or an :class:`orchestration.ray_service.RayServiceProxy`);
the HTTP server itself, with its deadlines and limits, is :mod:`orchestration.http_server`.
What the protocol (:mod:`arena.wire`) allows, and nothing else:

* ``GET /v1/spec``: the public input/output spec.
* ``GET /v1/status``: budget, used, remaining of the token's attacker (of no other).
* ``POST /v1/query``: the body is the batch as raw little-endian float32 bytes
  (``Content-Type: application/octet-stream``), its shape in ``X-Arena-Shape: B,d1,d2,...``,
  the client's query id in ``X-Arena-Query-Id``, optional zoo targets as a two-number JSON
  object in ``X-Arena-Targets``. The answer is ``{"outputs": [[...]], "used": n,
  "remaining": m}``. Bytes are only ever read as float32 numbers: nothing is unpickled,
  evaluated or looked up by name, and no file is ever served.
* ``GET /v1/challenge``: a proof-of-work challenge for the query id in ``X-Arena-Query-Id`` and
  the batch size in ``X-Arena-Batch``: ``{"required": true, "nonce", "bits", "count"}``, or
  ``{"required": false}`` when the victim asks for no work (or the query id is charged). A query
  then carries the nonce in ``X-Arena-Work`` and one little-endian uint64 counter per input after
  the float32 batch; 428 without a proof, 422 with one that does not solve the challenge.
* ``GET /v1/openapi.json`` (no token): the OpenAPI description of the above.

Every failure is ``{"code": ..., "message": ...}`` (``requested``/``remaining`` added for a budget
error) with an HTTP status: 400 malformed (the service's own codes: ``shape``, ``dtype``,
``non_finite`` ...; and requests framed ambiguously), 401 missing or unknown token, 402 budget
exhausted, 403 refused by a detector, 404 unknown route, 405 wrong method, 408 a request that
does not arrive in time, 409 query id reused for other inputs, 411 no ``Content-Length``, 413
body larger than ``max_batch`` inputs (checked on ``Content-Length`` before a byte of the body
is read), 415 a body that is not raw float32, 429 (with ``Retry-After``) too many connections,
queries in flight, or requests of one token, 503 victim unavailable, 500 anything unexpected (no
detail leaves the server).

Tokens: several tokens may name one attacker, whose one ledger (and so one budget) they share;
the endpoint opens each attacker's account with its budget at start (an account the service's
ledger file already holds keeps what it used). The ledger is idempotent on (attacker, query id):
a retried query id is answered again without a second charge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from arena import wire
from arena.data import load_dataset
from arena.defenses import DEFENSES
from arena.errors import ArenaError, RejectionCode
from arena.home import ArenaHome
from arena.ledger import Ledger
from arena.oracle import AccountStatus, Answer, Rejection
from arena.service import ServiceAPI
from arena.service_factory import build_service
from arena.specs import PluginSpec, VictimSpec
from arena.versions import canonical_plugin, versioned_victim
from arena.work import WorkProof
from orchestration.config import TournamentConfig
from orchestration.http_server import HttpError, HttpServer, Limits, RequestHead, Response
from orchestration.openapi import openapi_document
from orchestration.yaml_input import UnreadableYaml, read_yaml_file

BODY_SLACK = 64
"""bytes allowed over ``max_batch`` inputs before a body is refused with 413 (none are needed
for raw float32; a little slack keeps the bound obviously safe)"""
LENGTH_DIGITS = 15
ATTACKER = r"[A-Za-z0-9._-]{1,128}"


class TokenFileError(ArenaError):
    """A tokens file that cannot be used; the message names the problem in one line."""


class AttackerEntry(BaseModel):
    """One attacker of the tokens file: its one budget and every token that acts as it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ATTACKER)
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
            if not wire.TOKEN.fullmatch(token):
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
        raw = read_yaml_file(path)
    except UnreadableYaml as exc:
        raise TokenFileError(f"tokens file {exc}") from None
    try:
        parsed = TokensFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise TokenFileError(f"tokens file {path}: {where}: {first['msg']}") from None
    return TokenTable.from_entries(parsed.attackers)


class TokenBucket:
    """At most ``rate`` requests a second on average, ``burst`` at once (thread-safe)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one request; 0.0 when allowed, else the seconds until one is."""
        with self._lock:
            now = time.monotonic()
            self._level = min(self.burst, self._level + (now - self._at) * self.rate)
            self._at = now
            if self._level >= 1.0:
                self._level -= 1.0
                return 0.0
            return (1.0 - self._level) / self.rate


def rejection_response(rejection: Rejection) -> Response:
    """The HTTP response of a service rejection."""
    body: dict[str, Any] = {"code": rejection.code, "message": rejection.message}
    if rejection.code == RejectionCode.BUDGET_EXHAUSTED:
        body.update(requested=rejection.requested, remaining=rejection.remaining)
    retry = rejection.code in (RejectionCode.OVERLOADED, RejectionCode.UNAVAILABLE)
    headers = {"Retry-After": "1"} if retry else {}
    return Response(wire.status_of(rejection.code), body, headers)


class IsolatedEndpoint:
    """Serve ``service`` over HTTP to the attackers of ``tokens`` (opens their accounts).

    ``port=0`` picks a free port (read :attr:`url`). ``limits`` bounds time, sizes and
    connections (:class:`~orchestration.http_server.Limits`); ``timeout_s`` is a shortcut for its
    whole-request deadline. ``token_rate`` caps each token's requests a second (a burst of twice
    that); ``tls`` serves HTTPS.
    """

    def __init__(
        self,
        service: ServiceAPI,
        tokens: TokenTable,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: Limits | None = None,
        timeout_s: float | None = None,
        token_rate: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._service = service
        self._tokens = [(t.encode(), owner) for t, owner in tokens.owners.items()]
        for attacker, budget in tokens.budgets.items():
            service.open_account(attacker, budget)
        input_spec, output_spec = service.public_spec()
        self._item_bytes = 4 * math.prod(input_spec.shape)
        per_input = self._item_bytes + (wire.COUNTER_BYTES if output_spec.work_required else 0)
        self.max_body = input_spec.max_batch * per_input + BODY_SLACK
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
                "work_required": output_spec.work_required,
            },
        }
        self._buckets = (
            {}
            if token_rate is None
            else {token: TokenBucket(token_rate, 2 * token_rate) for token, _ in self._tokens}
        )
        limits = limits or Limits()
        if timeout_s is not None:
            limits = dataclasses.replace(limits, request_timeout_s=timeout_s)
        self._server = HttpServer(self, host, port, limits, tls)

    @property
    def url(self) -> str:
        host, port = self._server.address
        shown = f"[{host}]" if ":" in host else host
        return f"{self._server.scheme}://{shown}:{port}"

    def start(self) -> IsolatedEndpoint:
        """Serve from a background thread."""
        self._server.start()
        return self

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (or SIGTERM turned into it)."""
        self._server.start()
        self._server.wait()

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> IsolatedEndpoint:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- the application (orchestration.http_server.Application) ------------------------------

    def admit(self, head: RequestHead) -> int:
        """Route, token and headers, all checked before a byte of the body is read."""
        method = wire.ROUTES.get(head.path)
        if method is None:
            raise HttpError(404, "not_found", "unknown route")
        if head.path in wire.PUBLIC_ROUTES:
            self._check_method(head, method)
            return 0
        token = self._token(head.headers.get("authorization"))
        self._check_method(head, method)
        bucket = self._buckets.get(token)
        wait = bucket.take() if bucket is not None else 0.0
        if bucket is not None and wait:
            raise HttpError(
                429,
                "overloaded",
                f"this token is over its rate of {bucket.rate:g} requests a second",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if method == "GET":
            return 0
        size = self._check_length(head.headers)
        self._check_query_headers(head.headers, size)
        return size

    def respond(self, head: RequestHead, body: bytes) -> Response:
        if head.path == wire.OPENAPI_ROUTE:
            return Response(200, openapi_document())
        attacker = self._owner(head.headers["authorization"])
        if head.path == wire.SPEC_ROUTE:
            return Response(200, self._spec_body)
        if head.path == wire.CHALLENGE_ROUTE:
            return self._challenge(attacker, head.headers)
        if head.path == wire.STATUS_ROUTE:
            status: AccountStatus = self._service.account_status(attacker)
            return Response(
                200, {"budget": status.budget, "used": status.used, "remaining": status.remaining}
            )
        return self._query(attacker, head.headers, body)

    # ---- checks ------------------------------------------------------------------------------

    @staticmethod
    def _check_method(head: RequestHead, method: str) -> None:
        if head.method != method:
            raise HttpError(
                405, "method_not_allowed", f"use {method} {head.path}", {"Allow": method}
            )

    def _token(self, authorization: str | None) -> bytes:
        """The presented bearer token: the scheme matched case-insensitively (RFC 7235), one
        space, then the token exactly as issued."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "unauthorized", "send Authorization: Bearer <token>")
        presented = token.encode("latin-1", "replace")
        self._owner_of(presented)
        return presented

    def _owner(self, authorization: str) -> str:
        return self._owner_of(authorization.partition(" ")[2].encode("latin-1", "replace"))

    def _owner_of(self, presented: bytes) -> str:
        """The attacker a token acts as; every token is compared in constant time."""
        owner = None
        for token, attacker in self._tokens:
            if hmac.compare_digest(presented, token):
                owner = attacker
        if owner is None:
            raise HttpError(401, "unauthorized", "unknown token")
        return owner

    def _check_length(self, headers: Mapping[str, str]) -> int:
        """The body size from ``Content-Length``, refused before the body is read."""
        length = headers.get("content-length")
        if length is None:
            raise HttpError(411, "length_required", "send a Content-Length header")
        if not length.isdigit() or len(length) > LENGTH_DIGITS:
            raise HttpError(400, "bad_request", "Content-Length must be a byte count")
        size = int(length)
        if size > self.max_body:
            raise HttpError(
                413,
                "batch_too_large",
                f"body of {size} bytes exceeds the maximum {self.max_body} "
                f"({self.max_body // max(self._item_bytes, 1)} inputs of {self._item_bytes} bytes)",
            )
        return size

    def _check_query_headers(self, headers: Mapping[str, str], size: int) -> None:
        """Body type, dtype, query id, shape and targets, checked against the body size."""
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != wire.BODY_TYPE:
            raise HttpError(
                415,
                "not_array",
                "the body must be the batch as raw little-endian float32 bytes "
                f"(Content-Type: {wire.BODY_TYPE})",
            )
        dtype = headers.get(wire.DTYPE_HEADER.lower())
        if dtype is not None and dtype.strip().lower() != "float32":
            raise HttpError(400, "dtype", f"expected dtype float32, got {dtype[:40]!r}")
        if not wire.QUERY_ID.fullmatch(headers.get(wire.QUERY_ID_HEADER.lower(), "")):
            raise HttpError(
                400,
                "bad_request",
                f"{wire.QUERY_ID_HEADER} must be 1-128 characters of [A-Za-z0-9._:-]",
            )
        shape = _shape(headers)
        nonce = _nonce(headers)
        counters = 0 if nonce is None else wire.COUNTER_BYTES * shape[0]
        expected = 4 * math.prod(shape) + counters
        if expected != size:
            work = f" and {counters} bytes of counters" if counters else ""
            raise HttpError(
                400,
                "shape",
                f"shape {list(shape)} needs {expected - counters} bytes of float32{work}, "
                f"the body has {size}",
            )
        _targets(headers)

    def _query(self, attacker: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one batch through the service."""
        shape = _shape(headers)
        values = 4 * math.prod(shape)
        x = np.frombuffer(body[:values], dtype="<f4").reshape(shape).astype(np.float32, copy=False)
        query_id = headers[wire.QUERY_ID_HEADER.lower()]
        nonce = _nonce(headers)
        work = None
        if nonce is not None:
            counters = np.frombuffer(body[values:], dtype="<u8")
            work = WorkProof(nonce, tuple(int(c) for c in counters))
        result = self._service.answer(attacker, query_id, x, _targets(headers), work)
        if isinstance(result, Rejection):
            return rejection_response(result)
        assert isinstance(result, Answer)
        outputs = np.asarray(result.outputs, dtype=np.float32)
        return Response(
            200,
            {
                "outputs": outputs.tolist(),
                "used": int(result.used),
                "remaining": int(result.remaining),
            },
        )

    def _challenge(self, attacker: str, headers: Mapping[str, str]) -> Response:
        """A proof-of-work challenge for the query id and batch size the headers name."""
        query_id = headers.get(wire.QUERY_ID_HEADER.lower(), "")
        batch = headers.get(wire.BATCH_HEADER.lower(), "")
        if not wire.QUERY_ID.fullmatch(query_id) or not wire.BATCH.fullmatch(batch):
            raise HttpError(
                400,
                "bad_request",
                f"send {wire.QUERY_ID_HEADER} (1-128 characters of [A-Za-z0-9._:-]) and "
                f"{wire.BATCH_HEADER} (the batch size)",
            )
        found = self._service.work_challenge(attacker, query_id, int(batch))
        if found is None:
            return Response(200, {"required": False})
        body = {"required": True, "nonce": found.nonce, "bits": found.bits, "count": found.count}
        return Response(200, body)


def _nonce(headers: Mapping[str, str]) -> str | None:
    """The proof-of-work nonce a query names, if it carries a proof."""
    raw = headers.get(wire.WORK_HEADER.lower())
    if raw is None:
        return None
    if not wire.NONCE.fullmatch(raw):
        raise HttpError(400, "bad_request", f"{wire.WORK_HEADER} must be the challenge's hex nonce")
    return raw


def _shape(headers: Mapping[str, str]) -> tuple[int, ...]:
    raw = headers.get(wire.SHAPE_HEADER.lower(), "").replace(" ", "")
    if not wire.SHAPE.fullmatch(raw):
        raise HttpError(400, "shape", f"{wire.SHAPE_HEADER} must be the batch shape, e.g. 16,1,8,8")
    return tuple(int(s) for s in raw.split(","))


def _targets(headers: Mapping[str, str]) -> dict[str, float] | None:
    """Zoo targets: a JSON object of numbers only (the service checks the fields)."""
    raw = headers.get(wire.TARGETS_HEADER.lower())
    if raw is None:
        return None
    if len(raw) > wire.MAX_TARGETS_CHARS:
        raise HttpError(400, "targets", f"{wire.TARGETS_HEADER} is too long")
    try:
        value = json.loads(raw)
    except ValueError:
        raise HttpError(400, "targets", f"{wire.TARGETS_HEADER} is not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and type(v) in (int, float) and math.isfinite(v)
        for k, v in value.items()
    ):
        raise HttpError(400, "targets", "targets must be a JSON object of finite numbers")
    return {k: float(v) for k, v in value.items()}


@dataclass(frozen=True)
class ServedVictim:
    """A victim of a config behind its endpoint, with the ledger it keeps."""

    endpoint: IsolatedEndpoint
    ledger: Ledger
    label: str
    """the defense chain, as the audit log names it"""


def served_ledger_path(home: ArenaHome, victim: VictimSpec, chain: tuple[PluginSpec, ...]) -> Path:
    """The ledger of one served (victim, defense chain): the same file every time it is served,
    so budgets, replayable query ids, detector states and the audit log survive restarts."""
    defenses = "-".join(d.key() for d in chain) or "none"
    key = hashlib.sha256(f"{victim.key()}/{defenses}".encode()).hexdigest()[:16]
    return home.ledgers / "serve" / f"{victim.key()}-{key}.sqlite3"


def serve_config_victim(
    config: TournamentConfig,
    victim: int,
    defense: int,
    tokens: TokenTable,
    home: ArenaHome,
    host: str,
    port: int,
    *,
    limits: Limits | None = None,
    token_rate: float | None = None,
    tls: ssl.SSLContext | None = None,
) -> ServedVictim:
    """``config.victims[victim]`` behind ``config.defenses[defense]``, served to ``tokens`` (not
    started yet), with its ledger under ``home`` reopened where the last run left it."""
    chain = tuple(canonical_plugin(DEFENSES, p.name, p.params) for p in config.defenses[defense])
    target = versioned_victim(config.victims[victim])
    ledger = Ledger(served_ledger_path(home, target, chain))
    data = load_dataset(target.dataset, home.data_dir, config.download)
    service = build_service(target, chain, data, home.victims, ledger=ledger)
    try:
        endpoint = IsolatedEndpoint(
            service, tokens, host, port, limits=limits, token_rate=token_rate, tls=tls
        )
    except ValueError as exc:  # a budget that differs from the one the ledger holds
        ledger.close()
        raise TokenFileError(
            f"{exc} in the ledger {ledger.path}: keep that budget in the tokens file, or give "
            "the attacker a new id"
        ) from None
    return ServedVictim(endpoint, ledger, service.defense_label)
