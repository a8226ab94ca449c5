"""An oracle endpoint over HTTP: attack a victim served by ``arena serve`` from another process.

``Oracle(HttpEndpoint(url, token), attacker_id)`` works for any registered attack. The token, not
``attacker_id``, decides which ledger is charged: the server maps each token to one attacker. The
protocol (``orchestration/endpoint.py``) carries raw float32 bytes out and JSON numbers back;
rejections come back as the same :class:`~arena.oracle.Rejection` codes an in-process service
returns, so the oracle raises the same typed errors. Errors of the HTTP layer itself (bad token,
unknown route) are :class:`EndpointError`; an unreachable server is a
``Rejection("unavailable")`` for a query (the oracle retries it with the same query id, which
is never charged twice) and an :class:`EndpointError` for the spec and status.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
import torch

from arena import wire
from arena.errors import ArenaError, RejectionCode, VictimUnavailable
from arena.oracle import (
    AccountStatus,
    Answer,
    InputSpec,
    OutputSpec,
    Rejection,
    check_structure,
)
from arena.targets import Targets
from arena.work import WorkChallenge, WorkProof


class EndpointError(ArenaError):
    """The endpoint refused the request itself (token, route, protocol) or cannot be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}" + (f" (HTTP {status})" if status else ""))
        self.status = status
        self.code = code
        self.message = message


class HttpEndpoint:
    """Implements :class:`arena.oracle.OracleEndpoint` against an ``arena serve`` URL."""

    def __init__(
        self, url: str, token: str, timeout_s: float = 60.0, ca_file: str | None = None
    ) -> None:
        """``ca_file``: the certificate (or CA bundle) to trust for an ``https`` server whose
        certificate is not signed by a CA the system trusts (a self-signed one)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EndpointError(0, "bad_url", f"expected http(s)://host:port, got {url!r}")
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout_s
        self._verify: bool | str = ca_file if ca_file is not None else True
        """passed with every request: a session's own ``verify`` loses to REQUESTS_CA_BUNDLE"""
        self._local = threading.local()
        self._spec: tuple[InputSpec, OutputSpec] | None = None

    def _session(self) -> requests.Session:
        """One keep-alive session per thread (a ``requests.Session`` is not thread-safe)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _get(self, route: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self._session().get(
                f"{self._url}{route}",
                headers={**self._headers, **(headers or {})},
                timeout=self._timeout,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise EndpointError(
                0, "unreachable", f"{self._url} is not reachable ({type(exc).__name__})"
            ) from None
        body = _json(response)
        if response.status_code != 200:
            raise _error(response.status_code, body)
        return body

    def public_spec(self) -> tuple[InputSpec, OutputSpec]:
        if self._spec is None:
            body = self._get(wire.SPEC_ROUTE)
            try:
                given, out = body["input"], body["output"]
                self._spec = (
                    InputSpec(
                        shape=tuple(int(s) for s in given["shape"]),
                        dtype=str(given["dtype"]),
                        low=float(given["low"]),
                        high=float(given["high"]),
                        max_batch=int(given["max_batch"]),
                    ),
                    OutputSpec(
                        num_classes=int(out["num_classes"]),
                        label_only=bool(out["label_only"]),
                        work_required=bool(out.get("work_required", False)),
                    ),
                )
            except (KeyError, TypeError, ValueError):
                raise EndpointError(200, "bad_response", "the spec is malformed") from None
        return self._spec

    def account_status(self, attacker_id: str) -> AccountStatus:
        """The token's attacker's account (``attacker_id`` is not sent: the token decides)."""
        body = self._get(wire.STATUS_ROUTE)
        try:
            return AccountStatus(budget=int(body["budget"]), used=int(body["used"]))
        except (KeyError, TypeError, ValueError):
            raise EndpointError(200, "bad_response", "the status is malformed") from None

    def work_challenge(self, attacker_id: str, query_id: str, batch: int) -> WorkChallenge | None:
        """The token's attacker's proof-of-work challenge for this query id and batch size (an
        unreachable or unavailable server is :class:`VictimUnavailable`, retried by the oracle)."""
        headers = {wire.QUERY_ID_HEADER: query_id, wire.BATCH_HEADER: str(batch)}
        try:
            body = self._get(wire.CHALLENGE_ROUTE, headers)
        except EndpointError as exc:
            if exc.status == 0 or exc.code == RejectionCode.UNAVAILABLE:
                raise VictimUnavailable(str(exc)) from None
            raise
        try:
            if not body["required"]:
                return None
            return WorkChallenge(str(body["nonce"]), int(body["bits"]), int(body["count"]))
        except (KeyError, TypeError, ValueError):
            raise EndpointError(200, "bad_response", "the challenge is malformed") from None

    def answer(
        self,
        attacker_id: str,
        query_id: str,
        x: Any,
        targets: Any = None,
        work: WorkProof | None = None,
    ) -> Answer | Rejection:
        """Send one batch (and its proof of work: the nonce in a header, the counters after the
        batch); the server validates it again (this side refuses only what fails the service's
        structural checks, with the same codes)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            x = x.numpy() if x.dtype == torch.float32 else x
        spec = self.public_spec()[0]
        # the service's own structural checks, here so a huge view (an expanded tensor) is never
        # copied into a body; the server checks everything again
        rejection = check_structure(x, spec)
        if rejection is not None:
            return rejection
        assert isinstance(x, np.ndarray)  # a float32 tensor was turned into one above
        headers = {
            **self._headers,
            "Content-Type": wire.BODY_TYPE,
            wire.SHAPE_HEADER: ",".join(str(int(s)) for s in x.shape) or "0",
            wire.QUERY_ID_HEADER: query_id,
        }
        if targets is not None:
            fields = targets.as_dict() if isinstance(targets, Targets) else targets
            try:
                headers[wire.TARGETS_HEADER] = json.dumps(dict(fields))
            except (TypeError, ValueError):
                return Rejection("targets", "targets must be a mapping of numbers")
        body = np.ascontiguousarray(x, dtype="<f4").tobytes()
        if work is not None:
            headers[wire.WORK_HEADER] = work.nonce
            body += np.asarray(work.counters, dtype="<u8").tobytes()
        try:
            response = self._session().post(
                f"{self._url}{wire.QUERY_ROUTE}",
                data=body,
                headers=headers,
                timeout=self._timeout,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            return Rejection(
                RejectionCode.UNAVAILABLE, f"{self._url} did not answer ({type(exc).__name__})"
            )
        reply = _json(response)
        if response.status_code == 200:
            try:
                outputs = np.asarray(reply["outputs"], dtype=np.float32)
                return Answer(outputs, used=int(reply["used"]), remaining=int(reply["remaining"]))
            except (KeyError, TypeError, ValueError):
                raise EndpointError(200, "bad_response", "the answer is malformed") from None
        code = str(reply.get("code", ""))
        if code in wire.REJECTION_CODES:
            return Rejection(
                code,
                str(reply.get("message", "")),
                requested=_int(reply.get("requested")),
                remaining=_int(reply.get("remaining")),
            )
        raise _error(response.status_code, reply)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        status = response.status_code
        return {"code": "bad_response", "message": f"not a JSON object (HTTP {status})"}
    return body


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _error(status: int, body: dict[str, Any]) -> EndpointError:
    return EndpointError(status, str(body.get("code", "error")), str(body.get("message", "")))
