"""H1-H4 and H8: the served victim under hostile HTTP, over real sockets on loopback.

Slow clients, bursts, request-smuggling shapes, a restart of ``arena serve`` mid-attack, TLS, and a
schema-driven fuzz of the published OpenAPI description. Other loopback addresses (127.0.0.2 ...)
stand for other hosts: every address in 127.0.0.0/8 is this machine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from arena_testkit import ServiceFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena.data import DataSplits
from arena.defenses.chain import build_chain
from arena.http_oracle import EndpointError, HttpEndpoint
from arena.ledger import Ledger
from arena.oracle import Answer, InputSpec, Rejection
from arena.service import VictimService
from arena.specs import PluginSpec
from arena.victims import TrainedVictim
from orchestration.endpoint import IsolatedEndpoint, TokenTable
from orchestration.http_server import Limits

REPO = Path(__file__).resolve().parents[2]
TOKEN = "honest-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdefg"
SHAPE = (1, 8, 8)


def host_port(endpoint: IsolatedEndpoint) -> tuple[str, int]:
    host, port = endpoint.url.split("://")[1].split(":")
    return host, int(port)


def query_head(
    batch: int, query_id: str, token: str = TOKEN, extra: str = "", length: int | None = None
) -> bytes:
    size = 4 * batch * 64 if length is None else length
    return (
        f"POST /v1/query HTTP/1.1\r\nHost: arena\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nX-Arena-Shape: {batch},1,8,8\r\n"
        f"X-Arena-Query-Id: {query_id}\r\nContent-Length: {size}\r\n{extra}\r\n"
    ).encode()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or 10 s pass)."""
    sock.settimeout(10)
    answer = b""
    with contextlib.suppress(TimeoutError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def rss_bytes(pid: int) -> int:
    """A process's resident memory (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found, "no VmRSS in /proc/self/status"
    return int(found.group(1)) * 1024


def status_of(answer: bytes) -> int:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(found.group(1)) if found else 0


def body_of(answer: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return parsed


@pytest.fixture()
def service(make_service: ServiceFactory) -> VictimService:
    return make_service()


def serve(service: VictimService, **options: Any) -> IsolatedEndpoint:
    table = TokenTable({TOKEN: "honest", OTHER: "other"}, {"honest": 100_000, "other": 100_000})
    return IsolatedEndpoint(service, table, **options)


@dataclass
class SlowClient:
    """Opens a connection from ``source`` and trickles a request until the server ends it."""

    source: str
    kind: str
    """"headers": a header line every ``pause``; "body": whole headers, then a byte a pause"""
    pause: float = 0.25
    seconds: float | None = None
    answer: bytes = b""
    error: str = ""

    def run(self, host: str, port: int, stop_after: float) -> None:
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), 10, (self.source, 0)) as sock:
                if self.kind == "headers":
                    sock.sendall(b"POST /v1/query HTTP/1.1\r\nHost: arena\r\n")
                    trickle = (f"X-Pad-{i}: {i}\r\n".encode() for i in range(10_000))
                else:
                    sock.sendall(query_head(2, f"slow-{self.source}-{id(self)}"))
                    trickle = (b"\0" for _ in range(10_000))
                sock.settimeout(self.pause)
                while time.perf_counter() - started < stop_after:
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        sock.sendall(next(trickle))
                        continue
                    if not chunk:
                        break
                    self.answer += chunk
        except OSError as exc:  # a reset would land here
            self.error = type(exc).__name__
        self.seconds = time.perf_counter() - started


def test_H1_slow_clients_are_cut_at_the_deadline_while_others_are_served(
    service: VictimService, digits_data: DataSplits
) -> None:
    """64 connections from 8 other addresses trickle headers (a line every 0.25 s) or a body (a
    byte every 0.25 s); with a 2 s whole-request deadline each is cut at about 2 s with a typed
    408, and a normal client is answered within a second all along."""
    deadline = 2.0
    x = digits_data.test.x[:4].numpy()
    with serve(service, limits=Limits(request_timeout_s=deadline)) as endpoint:
        host, port = host_port(endpoint)
        slow = [
            SlowClient(f"127.0.0.{2 + i % 8}", "headers" if i % 2 else "body") for i in range(64)
        ]
        threads = [threading.Thread(target=c.run, args=(host, port, 15.0)) for c in slow]
        for thread in threads:
            thread.start()
        honest = HttpEndpoint(endpoint.url, TOKEN)
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < deadline + 1.5:
            began = time.perf_counter()
            answer = honest.answer("honest", f"honest-{len(latencies)}", x)
            latencies.append(time.perf_counter() - began)
            assert isinstance(answer, Answer), answer
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=20)
    cut = [c.seconds for c in slow if c.seconds is not None]
    print(
        f"H1: 64 slow clients cut after {min(cut):.2f}-{max(cut):.2f} s (deadline {deadline} s); "
        f"{len(latencies)} honest calls, slowest {1e3 * max(latencies):.1f} ms"
    )
    assert max(latencies) < 1.0, f"an honest request took {max(latencies):.2f}s"
    assert [c.error for c in slow] == [""] * 64, "a slow client was reset"
    assert all(status_of(c.answer) == 408 for c in slow), {c.answer[:40] for c in slow}
    assert all(body_of(c.answer)["code"] == "timeout" for c in slow)
    assert len(cut) == 64 and max(cut) < deadline + 1.5 and min(cut) > deadline - 0.5, cut
    assert service.account_status("honest").used == 4 * len(latencies)


def test_H1_one_address_cannot_hold_every_connection(service: VictimService) -> None:
    """Over the per-address cap a connection gets a typed 429 at once; other addresses are
    still served."""
    limits = Limits(max_connections_per_client=4, request_timeout_s=5.0)
    with serve(service, limits=limits) as endpoint:
        host, port = host_port(endpoint)
        held = [socket.create_connection((host, port), 10, ("127.0.0.2", 0)) for _ in range(4)]
        try:
            time.sleep(0.2)  # the server has accepted them
            with socket.create_connection((host, port), 10, ("127.0.0.2", 0)) as extra:
                extra.sendall(b"GET /v1/spec HTTP/1.1\r\nHost: arena\r\n\r\n")
                refused = read_response(extra)
            assert status_of(refused) == 429 and b"\r\nRetry-After: 1\r\n" in refused
            assert body_of(refused)["code"] == "overloaded"
            spec = HttpEndpoint(endpoint.url, TOKEN).public_spec()  # from 127.0.0.1
            assert spec[0].shape == SHAPE
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize(
    "limits",
    [Limits(), Limits(max_inflight=2, queue_wait_s=0.01), Limits(max_connections=6)],
    ids=["defaults", "workers", "connections"],
)
def test_H2_a_burst_gets_answers_and_typed_429s_never_a_reset(
    make_service: ServiceFactory,
    digits_data: DataSplits,
    limits: Limits,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """40 clients post at the same moment, 3 rounds: every one gets a 200 or a typed 429 with
    Retry-After (none a reset), and exactly the answered queries are charged."""
    service = make_service(defenses=("reverse_sigmoid",))
    body = digits_data.test.x[:8].numpy().astype("<f4").tobytes()
    outcomes: list[tuple[int, str, str | None]] = []
    lock = threading.Lock()
    with serve(service, limits=limits) as endpoint:
        host, port = host_port(endpoint)
        for round_ in range(3):
            gate = threading.Barrier(40)

            def post(index: int, round_: int = round_, gate: threading.Barrier = gate) -> None:
                conn = http.client.HTTPConnection(host, port, timeout=20)
                headers = {
                    "Authorization": f"Bearer {TOKEN}",
                    "Content-Type": "application/octet-stream",
                    "X-Arena-Shape": "8,1,8,8",
                    "X-Arena-Query-Id": f"burst-{round_}-{index}",
                }
                gate.wait()
                try:
                    conn.request("POST", "/v1/query", body, headers)
                    response = conn.getresponse()
                    code = json.loads(response.read()).get("code", "")
                    outcome = (response.status, code, response.getheader("Retry-After"))
                except OSError as exc:
                    outcome = (0, type(exc).__name__, None)
                finally:
                    conn.close()
                with lock:
                    outcomes.append(outcome)

            threads = [threading.Thread(target=post, args=(i,)) for i in range(40)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
    statuses = [status for status, _, _ in outcomes]
    assert len(outcomes) == 120 and set(statuses) <= {200, 429}, outcomes
    assert all(code == "overloaded" and retry == "1" for s, code, retry in outcomes if s == 429)
    print(
        f"H2: 120 posts in 3 bursts of 40: {statuses.count(200)} answered, "
        f"{statuses.count(429)} typed 429, 0 resets"
    )
    if limits != Limits():  # tight limits: the burst must have met them
        assert statuses.count(429) > 0, "the burst never reached a limit: the test tests nothing"
    assert service.account_status("honest").used == 8 * statuses.count(200)
    if statuses.count(429):
        assert any("429" in r.getMessage() for r in caplog.records), "no refusal was logged"


SMUGGLING = {
    "two equal Content-Length": (0, "Content-Length: 512\r\n"),
    "conflicting Content-Length": (0, "Content-Length: 256\r\n"),
    "Transfer-Encoding with length": (0, "Transfer-Encoding: chunked\r\n"),
    "Transfer-Encoding identity": (0, "Transfer-Encoding: identity\r\n"),
    "obs-fold": (0, "X-Folded: a\r\n b\r\n"),
    "space before colon": (0, "Content-Type : text/plain\r\n"),
    "control character": (0, "X-Evil: a\x01b\r\n"),
}


def test_H4_request_smuggling_shapes_are_400_and_charge_nothing(
    service: VictimService, digits_data: DataSplits
) -> None:
    x = digits_data.test.x[:2].numpy().astype("<f4").tobytes()
    with serve(service) as endpoint:
        host, port = host_port(endpoint)
        answers = {}
        for label, (_, extra) in SMUGGLING.items():
            with socket.create_connection((host, port), 10) as sock:
                sock.sendall(query_head(2, "smuggle", extra=extra) + x)
                answers[label] = read_response(sock)
        # bare LF line endings, and chunked framing without a length
        with socket.create_connection((host, port), 10) as sock:
            sock.sendall(query_head(2, "lf").replace(b"\r\n", b"\n") + x)
            answers["bare LF"] = read_response(sock)
        chunked = query_head(2, "chunked").replace(
            b"Content-Length: 512\r\n", b"Transfer-Encoding: chunked\r\n"
        )
        with socket.create_connection((host, port), 10) as sock:
            sock.sendall(chunked + b"200\r\n" + x + b"\r\n0\r\n\r\n")
            answers["chunked"] = read_response(sock)
        # a pipelined second request smuggled behind a body whose length is read two ways
        with socket.create_connection((host, port), 10) as sock:
            sock.sendall(
                query_head(2, "pipe", extra="Content-Length: 0\r\n")
                + x
                + b"GET /v1/status HTTP/1.1\r\nHost: arena\r\n\r\n"
            )
            answers["pipelined behind two lengths"] = read_response(sock)
    for label, answer in answers.items():
        assert status_of(answer) == 400, (label, answer[:120])
        assert set(body_of(answer)) <= {"code", "message"}, label
        assert answer.count(b"HTTP/1.1 ") == 1, f"{label}: a second request was answered"
    assert service.account_status("honest").used == 0, "a refused request was charged"


def test_H4_bearer_scheme_any_case_token_exactly(service: VictimService) -> None:
    with serve(service) as endpoint:
        host, port = host_port(endpoint)

        def status_with(authorization: str) -> int:
            with socket.create_connection((host, port), 10) as sock:
                sock.sendall(
                    f"GET /v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: {authorization}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                return status_of(read_response(sock))

        accepted = [f"{scheme} {TOKEN}" for scheme in ("Bearer", "bearer", "BEARER", "bEaReR")]
        refused = [
            f"Bearer  {TOKEN}",  # two spaces: the token would be " TOKEN"
            f"Bearer\t{TOKEN}",
            f"Bearer {TOKEN} x",
            f"Bearer {TOKEN[:-1]}",
            f"Bearer {TOKEN}x",
            f"Basic {TOKEN}",
            f"Bearer{TOKEN}",
            TOKEN,
        ]
        assert [status_with(a) for a in accepted] == [200] * len(accepted)
        assert [status_with(a) for a in refused] == [401] * len(refused)


def test_H1_header_block_and_body_bounds(service: VictimService) -> None:
    """A header block over the cap is refused as soon as it exceeds it; a length over the
    largest batch before a byte of the body is read."""
    with serve(service, limits=Limits(max_header_bytes=4096)) as endpoint:
        host, port = host_port(endpoint)
        with socket.create_connection((host, port), 10) as sock:
            sock.sendall(b"GET /v1/spec HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 8000)
            big = read_response(sock)
        assert status_of(big) == 431, big[:80]
        with socket.create_connection((host, port), 10) as sock:
            sock.sendall(query_head(2, "huge", length=10**12))
            huge = read_response(sock)
        assert status_of(huge) == 413 and body_of(huge)["code"] == "batch_too_large"


def test_H2_token_rate_is_a_typed_429(service: VictimService) -> None:
    with serve(service, token_rate=5.0) as endpoint:
        statuses = []
        for _ in range(30):
            try:
                HttpEndpoint(endpoint.url, TOKEN).account_status("honest")
                statuses.append(200)
            except Exception as exc:  # EndpointError carries the status
                statuses.append(getattr(exc, "status", 0))
        other = HttpEndpoint(endpoint.url, OTHER).account_status("other")
    assert statuses[:10] == [200] * 10, statuses  # the burst allowance
    assert set(statuses) == {200, 429} and statuses.count(429) >= 15, statuses
    assert other.remaining == 100_000, "one token's rate does not hold back another's"


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_straight_from_the_server(
    service: VictimService, digits_data: DataSplits, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    x = digits_data.test.x[:3].numpy()
    with serve(service, tls=context, limits=Limits(request_timeout_s=2.0)) as endpoint:
        assert endpoint.url.startswith("https://")
        answer = HttpEndpoint(endpoint.url, TOKEN, ca_file=str(cert)).answer("honest", "t1", x)
        assert isinstance(answer, Answer) and answer.used == 3
        # without the certificate the client refuses the server; plain HTTP gets nothing
        with pytest.raises(EndpointError, match="SSLError"):
            HttpEndpoint(endpoint.url, TOKEN).public_spec()
        host, port = host_port(endpoint)
        started = time.perf_counter()
        with socket.create_connection((host, port), 10) as sock:
            sock.sendall(b"GET /v1/spec HTTP/1.1\r\nHost: a\r\n\r\n")
            assert not read_response(sock).startswith(b"HTTP/1.1 200")
        assert time.perf_counter() - started < 5
    assert service.account_status("honest").used == 3


# ---- H3: restart `arena serve` mid-attack ------------------------------------------------------

STATEFUL = [
    {"name": "prada", "params": {"delta": 0.95, "min_samples": 10, "response": "misinformation"}},
    {"name": "dawn", "params": {"fraction": 0.2}},
]


@dataclass
class ServeProcess:
    """``arena serve`` in a child process; :meth:`start` returns once it listens."""

    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None
    line: str = ""
    restarts: list[float] = field(default_factory=list)

    def start(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestration", "serve", *self.args, "--port", "0"],
            cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        watchdog = threading.Timer(120, self.process.kill)
        watchdog.start()
        assert self.process.stdout is not None
        self.line = self.process.stdout.readline()
        watchdog.cancel()
        found = re.search(r"http://127\.0\.0\.1:\d+", self.line)
        assert found, (self.line, self.process.stderr.read() if self.process.stderr else "")
        return found.group(0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def audited(self) -> tuple[int, int]:
        """Queries in the ledger's audit log, and the thief's used budget (once stopped)."""
        found = re.search(r"ledger (\S+\.sqlite3)", self.line)
        assert found, self.line
        ledger = Ledger(found.group(1))
        try:
            return ledger.audit("thief").queries, ledger.accounts()["thief"].used
        finally:
            ledger.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


def arena_serve(
    tmp_path: Path, victim: TrainedVictim, victim_cache: Path, chain: list[Any], budget: int
) -> ServeProcess:
    """``arena serve`` of ``victim`` (from the session's cache: no retraining) behind ``chain``
    to one attacker, ``thief``, holding :data:`TOKEN`."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "victims").symlink_to(victim_cache)
    config = tmp_path / "served.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "served",
                "victims": [victim.spec.model_dump(mode="json")],
                "defenses": [chain],
                "attacks": ["knockoff"],
                "budgets": [budget],
            }
        )
    )
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        yaml.safe_dump({"attackers": [{"id": "thief", "budget": budget, "tokens": [TOKEN]}]})
    )
    env = {**os.environ, "ARENA_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    return ServeProcess([str(config), "--tokens", str(tokens)], env)


@pytest.fixture()
def served_twice(
    tmp_path: Path, digits_victim: TrainedVictim, victim_cache: Path
) -> Iterator[ServeProcess]:
    server = arena_serve(tmp_path, digits_victim, victim_cache, STATEFUL, 200)
    try:
        yield server
    finally:
        server.kill()


def test_H3_restarted_arena_serve_keeps_budgets_replays_and_detector_state(
    served_twice: ServeProcess, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    """SIGKILL ``arena serve`` after 6 of 12 batches and start it again: the used budget, every
    answered query id and the detectors' per-caller states carry on; answers equal those of a
    service that never stopped; the audit log is continuous."""
    pool = digits_data.attacker_pool.x.numpy()
    batches = [pool[i * 16 : (i + 1) * 16].copy() for i in range(12)]
    reference = VictimService(
        digits_victim.model,
        build_chain([PluginSpec(**d) for d in STATEFUL]),
        InputSpec(shape=digits_data.input_shape),
        digits_data.num_classes,
    )
    reference.open_account("thief", 200)
    expected = [reference.answer("thief", f"q{i}", x) for i, x in enumerate(batches)]

    def answer(url: str, i: int) -> Answer:
        result = HttpEndpoint(url, TOKEN).answer("thief", f"q{i}", batches[i])
        assert isinstance(result, Answer), result
        return result

    first = served_twice.start()
    before = [answer(first, i) for i in range(6)]
    served_twice.kill()
    second = served_twice.start()
    assert HttpEndpoint(second, TOKEN).account_status("thief").used == 96, "budget refunded"
    replayed = answer(second, 3)
    assert replayed.used == 96 and np.array_equal(replayed.outputs, before[3].outputs)
    after = [answer(second, i) for i in range(6, 12)]
    served = before + after
    for got, want in zip(served, expected, strict=True):
        assert isinstance(want, Answer)
        assert np.array_equal(got.outputs, want.outputs), "detector state was not restored"
        assert got.used == want.used
    over = HttpEndpoint(second, TOKEN).answer("thief", "q-over", pool[:9])
    assert isinstance(over, Rejection) and over.code == "budget_exhausted"
    served_twice.kill()
    assert served_twice.audited() == (192, 192)


def test_H1_arena_serve_limits_come_from_its_flags(
    tmp_path: Path, digits_victim: TrainedVictim, victim_cache: Path
) -> None:
    """``--request-timeout`` and ``--max-per-client`` reach the server ``arena serve`` runs."""
    server = arena_serve(tmp_path, digits_victim, victim_cache, ["none"], 10)
    server.args += ["--request-timeout", "1", "--max-per-client", "2"]
    try:
        url = server.start()
        host, port = url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), 10) for _ in range(2)]
        try:
            time.sleep(0.2)
            with socket.create_connection((host, int(port)), 10) as extra:
                extra.sendall(b"GET /v1/spec HTTP/1.1\r\nHost: arena\r\n\r\n")
                assert status_of(read_response(extra)) == 429
            started = time.perf_counter()
            assert status_of(read_response(held[0])) == 408
            assert time.perf_counter() - started < 2.5
        finally:
            for sock in held:
                sock.close()
    finally:
        server.kill()


# ---- H8: schema-driven fuzz of the live endpoint ----------------------------------------------


def test_H8_schema_driven_fuzz_of_the_live_endpoint(
    tmp_path: Path, digits_victim: TrainedVictim, victim_cache: Path
) -> None:
    """schemathesis generates requests from the OpenAPI document ``arena serve`` publishes
    (valid and invalid headers, bodies, methods); some are re-framed into well-formed or valid
    queries so the charged path is fuzzed too. No 5xx, every response as documented, charges ==
    answers == audit log, and the server's memory flat after a warm-up."""
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    chain = [{"name": "reverse_sigmoid", "params": {"beta": 0.5}}]
    server = arena_serve(tmp_path, digits_victim, victim_cache, chain, 100_000)
    try:
        url = server.start()
        schema = schemathesis.openapi.from_url(f"{url}/v1/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        answered: dict[str, int] = {}
        """query id -> batch size of every answered query (a replayed id is charged once)"""

        def fuzz(case: Any, reframe: str, batch: int, seed: int) -> None:
            if case.method == "POST" and reframe != "as generated":
                body = case.body if isinstance(case.body, bytes) else b""
                if reframe == "valid":
                    values = np.random.default_rng(seed).random((batch, 64), dtype=np.float32)
                    body = values.astype("<f4").tobytes()
                body = body[: len(body) - len(body) % 256]
                case.body = body
                headers = {**(case.headers or {}), "X-Arena-Shape": f"{len(body) // 256},1,8,8"}
                if reframe == "valid":  # only the values and the query id are left to chance
                    headers = {"X-Arena-Shape": headers["X-Arena-Shape"]}
                    headers["X-Arena-Query-Id"] = f"fuzz-{seed}"
                case.headers = {**headers, "Content-Type": "application/octet-stream"}
            response = case.call(
                base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20
            )
            case.validate_response(response, checks=checks)
            if case.method == "POST" and response.status_code == 200:
                query_id = response.request.headers["X-Arena-Query-Id"]
                answered[query_id] = len(response.json()["outputs"])

        def run(examples: int) -> None:
            strategies = given(
                case=st.one_of([op.as_strategy() for op in operations]),
                reframe=st.sampled_from(["as generated", "framed", "valid"]),
                batch=st.integers(1, 8),
                seed=st.integers(0, 2**16),
            )
            limits = settings(
                max_examples=examples,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            limits(strategies(fuzz))()

        run(50)  # warm-up: the server's first answers build its caches
        rss_before = rss_bytes(server.pid)
        run(400)
        growth = rss_bytes(server.pid) - rss_before
        used = HttpEndpoint(url, TOKEN).account_status("thief").used
    finally:
        server.kill()
    print(f"H8: {len(answered)} answered ({used} queries), server RSS +{growth / 2**20:.1f} MiB")
    assert answered, "no valid query was fuzzed"
    assert used == sum(answered.values()), "budget drift"
    assert server.audited() == (used, used), "the audit log disagrees with the budget"
    assert growth < 32 * 2**20, f"the server grew by {growth / 2**20:.0f} MiB over 400 requests"
