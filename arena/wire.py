"""The HTTP wire protocol of a served victim (``arena serve``), defined once for both sides.

The server (``orchestration/endpoint.py``) and the client (:mod:`arena.http_oracle`) import the
routes, header names, patterns and status codes from here, so the two cannot drift apart. The
protocol itself: the batch goes out as raw little-endian float32 bytes with its shape in a
header; the answer comes back as JSON numbers; every refusal is ``{"code", "message"}`` with the
HTTP status of its code. Nothing is ever unpickled, evaluated or looked up by name.

Proof of work (a victim whose spec says ``work_required``): ``GET /v1/challenge`` with the query
id and batch size in headers gives ``{"required", "nonce", "bits", "count"}``; the query then
names the challenge's nonce in :data:`WORK_HEADER` and appends one little-endian uint64 counter
per query after the float32 batch.
"""

from __future__ import annotations

import re

from arena.errors import RejectionCode

SPEC_ROUTE = "/v1/spec"
STATUS_ROUTE = "/v1/status"
QUERY_ROUTE = "/v1/query"
CHALLENGE_ROUTE = "/v1/challenge"
OPENAPI_ROUTE = "/v1/openapi.json"
ROUTES = {
    SPEC_ROUTE: "GET",
    STATUS_ROUTE: "GET",
    QUERY_ROUTE: "POST",
    CHALLENGE_ROUTE: "GET",
    OPENAPI_ROUTE: "GET",
}
"""every route the server has, with its one method"""
PUBLIC_ROUTES = frozenset({OPENAPI_ROUTE})
"""routes answered without a token (the protocol's description, no victim data)"""

SHAPE_HEADER = "X-Arena-Shape"
QUERY_ID_HEADER = "X-Arena-Query-Id"
TARGETS_HEADER = "X-Arena-Targets"
DTYPE_HEADER = "X-Arena-Dtype"
BATCH_HEADER = "X-Arena-Batch"
"""the batch size a proof-of-work challenge is asked for"""
WORK_HEADER = "X-Arena-Work"
"""the nonce of the challenge whose counters follow the batch in the body"""
COUNTER_BYTES = 8
"""each proof-of-work counter: a little-endian uint64 after the float32 batch"""
NONCE = re.compile(r"[0-9a-f]{1,64}")
BATCH = re.compile(r"[0-9]{1,8}")
BODY_TYPE = "application/octet-stream"
"""the query body's media type: the batch as raw little-endian float32 bytes"""

MAX_DIMS = 8
QUERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SHAPE = re.compile(rf"[0-9]{{1,8}}(,[0-9]{{1,8}}){{0,{MAX_DIMS - 1}}}")
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
MAX_TARGETS_CHARS = 200

REJECTION_CODES = frozenset(code.value for code in RejectionCode)
"""codes that are the victim service's own rejections (everything else is the HTTP layer's)"""


def status_of(code: str) -> int:
    """The HTTP status a service rejection code travels with."""
    return RejectionCode(code).http_status if code in REJECTION_CODES else 400
