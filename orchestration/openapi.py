"""The OpenAPI 3.0 description of the served-victim protocol (:mod:`arena.wire`).

``arena serve`` publishes it at ``GET /v1/openapi.json`` (no token needed: it holds nothing of
the victim), so client generators and schema-driven fuzzers (the suite runs schemathesis against
the live server) read the same contract the server enforces. Written as data, from the same
patterns and names the server checks with.
"""

from __future__ import annotations

from typing import Any

from arena import wire


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry:
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return response


def _ok(schema: str) -> dict[str, Any]:
    return {
        "description": "OK",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_COMMON = {
    "400": _error("malformed request, or framed ambiguously (request smuggling shapes)"),
    "401": _error("missing or unknown bearer token"),
    "405": _error("wrong method for this route"),
    "408": _error("the request did not arrive within the server's deadline"),
    "413": _error("body larger than the largest batch"),
    "429": _error("too many connections, queries in flight or requests of this token", True),
    "431": _error("header block too large"),
    "500": _error("unexpected server error (no detail is given)"),
}


def _header(name: str, description: str, pattern: str | None, required: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = f"^{pattern}$"
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


def openapi_document() -> dict[str, Any]:
    """The protocol as an OpenAPI 3.0.3 document (a fresh dict each call)."""
    get_ops = {
        wire.SPEC_ROUTE: ("The public input/output spec of the served victim", "Spec"),
        wire.STATUS_ROUTE: ("This token's attacker's budget, used and remaining", "Status"),
    }
    paths: dict[str, Any] = {
        route: {
            "get": {
                "summary": summary,
                "operationId": route.rsplit("/", 1)[1],
                "security": [{"bearer": []}],
                "responses": {"200": _ok(schema), **_COMMON},
            }
        }
        for route, (summary, schema) in get_ops.items()
    }
    paths[wire.QUERY_ROUTE] = {
        "post": {
            "summary": "Answer one batch (charged once per query id, never when refused)",
            "operationId": "query",
            "security": [{"bearer": []}],
            "parameters": [
                _header(
                    wire.SHAPE_HEADER, "the batch shape, e.g. 16,1,28,28", wire.SHAPE.pattern, True
                ),
                _header(
                    wire.QUERY_ID_HEADER,
                    "the client's id of this batch; a retry with the "
                    "same id and inputs is answered again without a second charge",
                    wire.QUERY_ID.pattern,
                    True,
                ),
                _header(
                    wire.TARGETS_HEADER,
                    "model zoos: the caller's targets as a JSON object of numbers",
                    None,
                    False,
                ),
                _header(wire.DTYPE_HEADER, "optional; only float32 is accepted", None, False),
                _header(
                    wire.WORK_HEADER,
                    "proof of work: the nonce of this query id's challenge (the counters follow "
                    "the batch in the body)",
                    wire.NONCE.pattern,
                    False,
                ),
            ],
            "requestBody": {
                "required": True,
                "description": "the batch as raw little-endian float32 bytes; with "
                f"{wire.WORK_HEADER}, then one little-endian uint64 counter per input",
                "content": {wire.BODY_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {
                "200": _ok("Answer"),
                **_COMMON,
                "402": _error("the batch needs more queries than the budget has left"),
                "403": _error("a detector refuses this caller"),
                "409": _error("query id reused for other inputs"),
                "411": _error("no Content-Length"),
                "415": _error("the body is not raw float32"),
                "422": _error("the proof of work does not solve this query id's challenge"),
                "428": _error("the victim asks for proof of work and none came"),
                "503": _error("the victim is unavailable (restarting)", True),
            },
        }
    }
    paths[wire.CHALLENGE_ROUTE] = {
        "get": {
            "summary": "A proof-of-work challenge for one query id and batch size",
            "operationId": "challenge",
            "security": [{"bearer": []}],
            "parameters": [
                _header(wire.QUERY_ID_HEADER, "the query id", wire.QUERY_ID.pattern, True),
                _header(wire.BATCH_HEADER, "the batch size", wire.BATCH.pattern, True),
            ],
            "responses": {"200": _ok("Challenge"), **_COMMON},
        }
    }
    paths[wire.OPENAPI_ROUTE] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **{k: v for k, v in _COMMON.items() if k != "401"},
            },
        }
    }
    number = {"type": "number"}
    count = {"type": "integer", "minimum": 0}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Model-Stealing Arena: served victim",
            "version": "1",
            "description": "A victim model behind its defenses, metered per attacker token.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "requested": count,
                        "remaining": count,
                    },
                    "additionalProperties": False,
                },
                "Spec": {
                    "type": "object",
                    "required": ["input", "output"],
                    "additionalProperties": False,
                    "properties": {
                        "input": {
                            "type": "object",
                            "required": ["shape", "dtype", "low", "high", "max_batch"],
                            "properties": {
                                "shape": {"type": "array", "items": count},
                                "dtype": {"type": "string", "enum": ["float32"]},
                                "low": number,
                                "high": number,
                                "max_batch": count,
                            },
                        },
                        "output": {
                            "type": "object",
                            "required": ["num_classes", "label_only"],
                            "properties": {
                                "num_classes": count,
                                "label_only": {"type": "boolean"},
                                "work_required": {"type": "boolean"},
                            },
                        },
                    },
                },
                "Challenge": {
                    "type": "object",
                    "required": ["required"],
                    "additionalProperties": False,
                    "properties": {
                        "required": {"type": "boolean"},
                        "nonce": {"type": "string", "pattern": f"^{wire.NONCE.pattern}$"},
                        "bits": count,
                        "count": count,
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["budget", "used", "remaining"],
                    "additionalProperties": False,
                    "properties": {"budget": count, "used": count, "remaining": count},
                },
                "Answer": {
                    "type": "object",
                    "required": ["outputs", "used", "remaining"],
                    "additionalProperties": False,
                    "properties": {
                        "outputs": {
                            "type": "array",
                            "description": "one row of class probabilities per input",
                            "items": {"type": "array", "items": number},
                        },
                        "used": count,
                        "remaining": count,
                    },
                },
            },
        },
    }
