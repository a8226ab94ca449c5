"""I1, B4 and replays over the isolated HTTP endpoint: real sockets on 127.0.0.1, an in-process
victim service behind them, attackers that hold nothing but a token."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from arena_testkit import ServiceFactory, pool_knowledge
from typer.testing import CliRunner

from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.errors import BudgetExhausted, InvalidQuery, QueryErrorCode
from arena.http_oracle import EndpointError, HttpEndpoint
from arena.oracle import Oracle, Rejection
from arena.registry import build_plugin
from arena.service import VictimService
from arena.training import accuracy, predict_probs
from arena.victims import TrainedVictim
from orchestration.cli import app
from orchestration.endpoint import IsolatedEndpoint, TokenTable
from orchestration.tracking import TRUST_TAG, TRUSTED_IN_CLUSTER, Tracker

REPO = Path(__file__).resolve().parents[2]
ALICE = ["alice-token-0000000000000000", "alice-token-1111111111111111"]
BOB = "bob-token-22222222222222222222"
BUDGETS = {"alice": 500, "bob": 300}
ERROR_FIELDS = {"code", "message", "requested", "remaining"}


@dataclass
class Served:
    endpoint: IsolatedEndpoint
    service: VictimService
    host: str
    port: int

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = ALICE[0],
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        """One raw request on a fresh connection (the path is sent exactly as given)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            sent = dict(headers or {})
            if token is not None:
                sent.setdefault("Authorization", f"Bearer {token}")
            if body is not None:
                sent.setdefault("Content-Length", str(len(body)))
            for key, value in sent.items():
                conn.putheader(key, value)
            conn.endheaders()
            if body is not None:
                with contextlib.suppress(OSError):  # the server may close early (413)
                    conn.send(body)
            response = conn.getresponse()
            return response.status, response.read(), response
        finally:
            conn.close()


@pytest.fixture()
def served(make_service: ServiceFactory) -> Iterator[Served]:
    service = make_service()
    owners = {ALICE[0]: "alice", ALICE[1]: "alice", BOB: "bob"}
    with IsolatedEndpoint(service, TokenTable(owners, BUDGETS)) as endpoint:
        host, port = endpoint.url.removeprefix("http://").split(":")
        yield Served(endpoint, service, host, int(port))


def query_headers(shape: tuple[int, ...], query_id: str = "q-1") -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "X-Arena-Shape": ",".join(map(str, shape)),
        "X-Arena-Query-Id": query_id,
    }


def images(data: DataSplits, n: int, start: int = 0) -> np.ndarray:
    return data.test.x[start : start + n].numpy().astype("<f4")


def test_I1_outside_attacker_escapes_all_fail(
    served: Served, digits_data: DataSplits, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.system, (f"touch {marker}",)

    evil_pickle = pickle.dumps(Exploit())
    evil_pickle += b"\0" * (-len(evil_pickle) % 4)
    good = images(digits_data, 2)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    inf = good.copy()
    inf[1, 0, 3, 3] = np.inf
    expression = b"__import__('os').system('touch " + str(marker).encode() + b"')"
    expression += b" " * (-len(expression) % 4)
    q = query_headers
    too_many = (served.service.public_spec()[0].max_batch + 1, 1, 8, 8)
    escapes: list[tuple[str, str, str, bytes | None, dict[str, str], str | None]] = [
        # private methods and the referee half of the service
        ("private method", "GET", "/v1/_accounts", None, {}, ALICE[0]),
        ("ray call", "POST", "/v1/__ray_call__", b"x", {}, ALICE[0]),
        ("open account", "POST", "/v1/open_account", b'{"budget": 1e9}', {}, ALICE[0]),
        ("account stats", "GET", "/v1/account_stats", None, {}, ALICE[0]),
        ("reference outputs", "GET", "/v1/reference_outputs", None, {}, ALICE[0]),
        ("ownership keys", "GET", "/v1/ownership_keys", None, {}, ALICE[0]),
        ("underscore", "GET", "/v1/_model", None, {}, ALICE[0]),
        ("dunder", "GET", "/v1/__dict__", None, {}, ALICE[0]),
        # run code
        (
            "pickle as json",
            "POST",
            "/v1/query",
            evil_pickle,
            {
                "Content-Type": "application/python-pickle",
                "X-Arena-Shape": "1",
                "X-Arena-Query-Id": "p1",
            },
            ALICE[0],
        ),
        (
            "pickle as numbers",
            "POST",
            "/v1/query",
            evil_pickle,
            q((len(evil_pickle) // 4,), "p2"),
            ALICE[0],
        ),
        (
            "class json",
            "POST",
            "/v1/query",
            json.dumps({"__class__": "os.system", "args": ["id"]}).encode(),
            {**q((1, 1, 8, 8), "c1"), "Content-Type": "application/json"},
            ALICE[0],
        ),
        (
            "python expression",
            "POST",
            "/v1/query",
            expression,
            {**q((len(expression) // 4,), "e1"), "Content-Type": "text/x-python"},
            ALICE[0],
        ),
        (
            "expression as numbers",
            "POST",
            "/v1/query",
            expression,
            q((len(expression) // 4,), "e2"),
            ALICE[0],
        ),
        (
            "eval in shape",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "s1") | {"X-Arena-Shape": "__import__('os')"},
            ALICE[0],
        ),
        (
            "eval in targets",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "t1") | {"X-Arena-Targets": "__import__('os').getcwd()"},
            ALICE[0],
        ),
        (
            "object targets",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "t2") | {"X-Arena-Targets": '{"min_accuracy": {"__class__": "x"}}'},
            ALICE[0],
        ),
        # look up actors, kill the victim, admin routes
        ("list actors", "GET", "/api/actors", None, {}, ALICE[0]),
        ("get actor", "GET", "/v1/get_actor?name=victim", None, {}, ALICE[0]),
        ("kill", "POST", "/v1/kill", b"", {}, ALICE[0]),
        ("shutdown", "POST", "/v1/shutdown", b"", {}, ALICE[0]),
        ("admin", "GET", "/admin", None, {}, ALICE[0]),
        ("admin accounts", "POST", "/v1/admin/accounts", b"{}", {}, ALICE[0]),
        ("delete", "DELETE", "/v1/query", None, {}, ALICE[0]),
        ("put", "PUT", "/v1/status", b"{}", {}, ALICE[0]),
        ("wrong method", "GET", "/v1/query", None, {}, ALICE[0]),
        # read files
        ("traversal", "GET", "/../../etc/passwd", None, {}, ALICE[0]),
        ("encoded traversal", "GET", "/static/..%2f..%2f..%2fetc%2fpasswd", None, {}, ALICE[0]),
        ("route traversal", "GET", "/v1/spec/../../../../etc/passwd", None, {}, ALICE[0]),
        ("file url", "GET", "file:///etc/passwd", None, {}, ALICE[0]),
        ("absolute url", "GET", "http://127.0.0.1/etc/passwd", None, {}, ALICE[0]),
        # tokens
        ("missing token", "GET", "/v1/status", None, {}, None),
        ("wrong token", "GET", "/v1/status", None, {}, "x" * 28),
        ("empty bearer", "GET", "/v1/spec", None, {"Authorization": "Bearer "}, None),
        ("basic auth", "GET", "/v1/spec", None, {"Authorization": "Basic YWxpY2U6eA=="}, None),
        ("token prefix", "GET", "/v1/status", None, {}, ALICE[0][:-1]),
        ("query without token", "POST", "/v1/query", good.tobytes(), q((2, 1, 8, 8), "n1"), None),
        # sizes and framing
        (
            "huge length",
            "POST",
            "/v1/query",
            None,
            q((2, 1, 8, 8), "h1") | {"Content-Length": str(10**12)},
            ALICE[0],
        ),
        (
            "over max batch",
            "POST",
            "/v1/query",
            None,
            q(too_many, "h2") | {"Content-Length": str(4 * 64 * too_many[0])},
            ALICE[0],
        ),
        (
            "negative length",
            "POST",
            "/v1/query",
            None,
            q((2, 1, 8, 8), "h3") | {"Content-Length": "-1"},
            ALICE[0],
        ),
        (
            "chunked",
            "POST",
            "/v1/query",
            None,
            q((2, 1, 8, 8), "h4") | {"Transfer-Encoding": "chunked"},
            ALICE[0],
        ),
        ("no length", "POST", "/v1/query", None, q((2, 1, 8, 8), "h5"), ALICE[0]),
        ("short shape", "POST", "/v1/query", good.tobytes(), q((1, 1, 8, 8), "h6"), ALICE[0]),
        (
            "negative shape",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "h7") | {"X-Arena-Shape": "-2,1,8,8"},
            ALICE[0],
        ),
        (
            "traversal query id",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "../../etc/passwd"),
            ALICE[0],
        ),
        # non-numeric dtypes, non-finite values
        (
            "object dtype",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "d1") | {"X-Arena-Dtype": "object"},
            ALICE[0],
        ),
        (
            "string dtype",
            "POST",
            "/v1/query",
            good.tobytes(),
            q((2, 1, 8, 8), "d2") | {"X-Arena-Dtype": "<U8"},
            ALICE[0],
        ),
        (
            "float64 bytes",
            "POST",
            "/v1/query",
            good.astype("<f8").tobytes(),
            q((2, 1, 8, 8), "d3"),
            ALICE[0],
        ),
        ("nan", "POST", "/v1/query", nan.tobytes(), q((2, 1, 8, 8), "v1"), ALICE[0]),
        ("inf", "POST", "/v1/query", inf.tobytes(), q((2, 1, 8, 8), "v2"), ALICE[0]),
        (
            "out of range",
            "POST",
            "/v1/query",
            (good + 2).tobytes(),
            q((2, 1, 8, 8), "v3"),
            ALICE[0],
        ),
        ("wrong rank", "POST", "/v1/query", good.tobytes(), q((2, 64), "v4"), ALICE[0]),
        ("empty batch", "POST", "/v1/query", b"", q((0, 1, 8, 8), "v5"), ALICE[0]),
    ]
    before = {a: served.service.account_status(a) for a in BUDGETS}
    succeeded = []
    for label, method, path, body, headers, token in escapes:
        status, raw, response = served.request(method, path, body, headers, token)
        text = raw.decode("latin-1")
        reply = json.loads(raw)
        leaked = "root:" in text or "Traceback" in text or " object at 0x" in text
        if status < 400 or leaked or not set(reply) <= ERROR_FIELDS:
            succeeded.append((label, status, text[:200]))
        assert "Python" not in (response.getheader("Server") or "")
        assert response.getheader("Content-Type") == "application/json"
    assert succeeded == []
    # an HTTP request line that is not HTTP, and a header block that never ends, on raw sockets
    for garbage in (b"\x80\x04\x95 pickle\r\n\r\n", b"GET /v1/spec HTTP/9.9\r\n\r\n"):
        with socket.create_connection((served.host, served.port), timeout=10) as sock:
            sock.sendall(garbage)
            answer = sock.recv(4096)  # the status line is all this needs
        assert answer.startswith(b"HTTP/") and b" 200 " not in answer.split(b"\r\n")[0]
    assert not marker.exists(), "a pickle or an expression was executed"
    # another attacker's ledger: a token only ever sees its own attacker
    for leak in ("/v1/status?attacker=alice", "/v1/status"):
        status, raw, _ = served.request("GET", leak, token=BOB, headers={"X-Attacker": "alice"})
        assert status == 200 and json.loads(raw) == {"budget": 300, "used": 0, "remaining": 300}
    after = {a: served.service.account_status(a) for a in BUDGETS}
    assert after == before, "a refused request was charged"
    # the victim still answers, with only the specified fields
    status, raw, _ = served.request("POST", "/v1/query", good.tobytes(), q((2, 1, 8, 8), "ok"))
    reply = json.loads(raw)
    assert status == 200 and set(reply) == {"outputs", "used", "remaining"}
    assert np.asarray(reply["outputs"]).shape == (2, 10) and reply["used"] == 2
    status, raw, _ = served.request("GET", "/v1/spec")
    assert status == 200 and set(json.loads(raw)) == {"input", "output"}


def test_I1_rejections_over_http_are_the_same_typed_errors(
    served: Served, digits_data: DataSplits
) -> None:
    oracle = Oracle(HttpEndpoint(served.endpoint.url, ALICE[0]), "alice")
    assert (oracle.budget, oracle.used) == (500, 0)
    x = digits_data.test.x[:4]
    cases = [
        (x.double(), QueryErrorCode.DTYPE),
        (x.clone().fill_(float("nan")), QueryErrorCode.NON_FINITE),
        (x.reshape(4, 64), QueryErrorCode.SHAPE),
        (x + 5, QueryErrorCode.OUT_OF_RANGE),
        (x[:0], QueryErrorCode.EMPTY),
        (digits_data.test.x[:1].expand(1025, 1, 8, 8), QueryErrorCode.BATCH_TOO_LARGE),
        # a 2.6 GB view: refused without ever being copied into a request body
        (digits_data.test.x[:1].expand(10**7, 1, 8, 8), QueryErrorCode.BATCH_TOO_LARGE),
        (digits_data.test.x[:1].expand(1, 10**7, 8, 8), QueryErrorCode.SHAPE),
    ]
    for bad, code in cases:
        with pytest.raises(InvalidQuery) as caught:
            oracle.query(bad)
        assert caught.value.code == code
    with pytest.raises(BudgetExhausted) as exhausted:
        oracle.query(digits_data.test.x[:1].repeat(501, 1, 1, 1))
    assert (exhausted.value.requested, exhausted.value.remaining) == (501, 500)
    assert served.service.account_status("alice").used == 0
    with pytest.raises(EndpointError) as denied:
        HttpEndpoint(served.endpoint.url, "not-a-token-000000000000").public_spec()
    assert denied.value.status == 401


def test_B4_tokens_of_one_attacker_share_one_budget(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service()
    tokens = [f"shared-token-{i}-0123456789abcdef" for i in range(5)]
    table = TokenTable(dict.fromkeys(tokens, "mallory"), {"mallory": 1000})
    pool = images(digits_data, 256)
    answered = [0] * len(tokens)
    biggest_used = [0] * len(tokens)
    with IsolatedEndpoint(service, table) as endpoint:

        def spend(index: int) -> None:
            client = HttpEndpoint(endpoint.url, tokens[index])
            rng = np.random.default_rng(index)
            size, sent = int(rng.integers(1, 24)), 0
            while True:
                start = int(rng.integers(0, 256 - size))
                result = client.answer("ignored", f"t{index}-{sent}", pool[start : start + size])
                sent += 1
                if isinstance(result, Rejection):
                    assert result.code == "budget_exhausted", result
                    if result.remaining == 0:
                        return
                    size = min(size, result.remaining)  # spend the rest exactly
                    continue
                answered[index] += size
                biggest_used[index] = max(biggest_used[index], result.used)
                size = int(rng.integers(1, 24))

        threads = [threading.Thread(target=spend, args=(i,)) for i in range(len(tokens))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        # more attempts after the budget is gone: all refused
        for token in tokens:
            late = HttpEndpoint(endpoint.url, token).answer("x", "late", pool[:1])
            assert isinstance(late, Rejection) and late.code == "budget_exhausted"
    assert sum(answered) == 1000
    assert max(biggest_used) == 1000
    assert all(a > 0 for a in answered), "every token got a share"
    assert service.account_status("mallory").used == 1000


def test_B2_replayed_query_id_over_http_is_charged_once(
    served: Served, digits_data: DataSplits
) -> None:
    x = images(digits_data, 8)
    first = HttpEndpoint(served.endpoint.url, ALICE[0]).answer("alice", "same-id", x)
    again = HttpEndpoint(served.endpoint.url, ALICE[0]).answer("alice", "same-id", x)
    # the other token of the same attacker replays it too: one ledger, one charge
    other = HttpEndpoint(served.endpoint.url, ALICE[1]).answer("alice", "same-id", x)
    assert not isinstance(first, Rejection) and not isinstance(again, Rejection)
    assert not isinstance(other, Rejection)
    assert np.array_equal(first.outputs, again.outputs) and np.array_equal(
        first.outputs, other.outputs
    )
    assert first.used == again.used == other.used == 8
    assert served.service.account_status("alice").used == 8
    reused = HttpEndpoint(served.endpoint.url, ALICE[0]).answer("alice", "same-id", x[::-1].copy())
    assert isinstance(reused, Rejection) and reused.code == "query_id_reused"
    status, raw, _ = served.request(
        "POST", "/v1/query", x.tobytes(), query_headers((8, 1, 8, 8), "same-id")
    )
    assert status == 200 and json.loads(raw)["used"] == 8
    assert served.service.account_status("alice").used == 8


def test_I1_registered_attack_runs_through_http_as_in_process(
    served: Served, make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    """knockoff against the served victim: the same substitute as against the service itself."""
    attack = build_plugin(ATTACKS, "knockoff", {"epochs": 10})
    knowledge = pool_knowledge(digits_data)
    oracle = Oracle(HttpEndpoint(served.endpoint.url, BOB), "whoever")
    stolen = attack.steal(oracle, knowledge, np.random.default_rng(7))
    assert oracle.used == 300 and served.service.account_status("bob").used == 300
    local_service = make_service()
    local_service.open_account("bob", 300)
    local = attack.steal(Oracle(local_service, "bob"), knowledge, np.random.default_rng(7))
    over_http = predict_probs(stolen, digits_data.test.x)
    in_process = predict_probs(local, digits_data.test.x)
    assert accuracy(over_http, digits_data.test.y) > 0.3
    assert torch.equal(over_http, in_process), "the attacker could tell HTTP from in-process"


def test_I1_arena_attack_against_arena_serve_in_other_processes(
    tmp_path: Path, digits_victim: TrainedVictim, victim_cache: Path
) -> None:
    """Two real processes: ``arena serve`` (the digits victim from the session's cache behind
    reverse sigmoid) and ``arena attack`` holding only the URL and a token."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "victims").symlink_to(victim_cache)  # the session's trained victim: no retraining
    config = tmp_path / "served.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "served",
                "victims": [digits_victim.spec.model_dump(mode="json")],
                "defenses": ["none", {"name": "reverse_sigmoid", "params": {"beta": 0.5}}],
                "attacks": ["knockoff"],
                "budgets": [200],
            }
        )
    )
    tokens = tmp_path / "tokens.yaml"
    secret = "cli-token-abcdefghijklmnop"
    tokens.write_text(
        yaml.safe_dump({"attackers": [{"id": "eve", "budget": 200, "tokens": [secret]}]})
    )
    env = {**os.environ, "ARENA_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    arena = [sys.executable, "-m", "orchestration"]
    server = subprocess.Popen(
        [*arena, "serve", str(config), "--tokens", str(tokens), "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(100, server.kill)  # never hang the suite on a silent server
    watchdog.start()
    try:
        assert server.stdout is not None and server.stderr is not None
        line = server.stdout.readline()  # blocks until it serves (or dies)
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, (line, server.stderr.read() if server.poll() is not None else "")
        assert "reverse_sigmoid" in line  # the first chain that defends
        attack = subprocess.run(
            [*arena, "attack", "--url", found.group(0), "--token", secret, "--attack",
             "knockoff", "--dataset", "digits", "--options", '{"epochs": 10}'],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert attack.returncode == 0, attack.stderr
        shown = re.search(
            r"untrusted-http: .*stolen accuracy (0\.\d{4}) with 200/200", attack.stdout
        )
        assert shown, attack.stdout
        assert float(shown.group(1)) > 0.3
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        watchdog.cancel()
    assert server.returncode == 0


def test_I1_cli_mistakes_are_one_line_exit_2(
    tmp_path: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real CLI in this process (a subprocess each would cost ~10 s of imports here)."""
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    bad = tmp_path / "tokens.yaml"
    bad.write_text("attackers:\n  - {id: eve, budget: -1, tokens: [short]}\n")
    short = tmp_path / "short.yaml"
    short.write_text("attackers:\n  - {id: eve, budget: 5, tokens: [short]}\n")
    bomb = tmp_path / "bomb.yaml"  # a few hundred bytes that would expand to 9**6 tokens
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcde", "bcdef", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    bomb.write_text("\n".join([*lines, "attackers: [{id: eve, budget: 5, tokens: [*f]}]\n"]))
    smoke = str(REPO / "configs" / "digits_smoke.yaml")
    url = served.endpoint.url
    attack = ["attack", "--url", url, "--token", BOB, "--dataset", "digits"]
    mistakes = {
        "budget": ["serve", smoke, "--tokens", str(bad)],
        "16-256 characters": ["serve", smoke, "--tokens", str(short)],
        "not found": ["serve", smoke, "--tokens", str(tmp_path / "no.yaml")],
        "50,000 values": ["serve", smoke, "--tokens", str(bomb)],
        "expected http(s)": ["attack", "--url", "nope", "--token", "t", "--attack", "knockoff"],
        "not reachable": [*attack[:2], "http://127.0.0.1:9", *attack[3:], "--attack", "knockoff"],
        "401": ["attack", "--url", url, "--token", "wrong-token-000000000", "--attack", "knockoff"],
        "unknown attack": [*attack, "--attack", "knockof"],
        "epochs": [*attack, "--attack", "knockoff", "--options", '{"epochs": 0}'],
        "not JSON": [*attack, "--attack", "knockoff", "--options", "{epochs"],
        "unknown dataset": [*attack[:-1], "iris", "--attack", "knockoff"],
    }
    runner = CliRunner()
    for expected, args in mistakes.items():
        result = runner.invoke(app, args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)
        assert "Traceback" not in result.output
    good = tmp_path / "good.yaml"
    good.write_text(f"attackers:\n  - {{id: eve, budget: 5, tokens: [{'t' * 20}]}}\n")
    result = runner.invoke(app, ["serve", smoke, "--tokens", str(good), "--victim", "3"])
    assert result.exit_code == 2 and "--victim must be 0..0" in result.stderr
    result = runner.invoke(app, ["serve", smoke, "--tokens", str(good), "--max-per-client", "0"])
    assert result.exit_code == 2 and "--max-per-client" in result.output
    assert served.service.account_status("bob").used == 0, "a mistake was charged"
    # a token whose budget is spent: the attack says so and exits 1
    served.service.answer("bob", "spend-all", images_like(300))
    result = runner.invoke(app, [*attack, "--attack", "knockoff"])
    assert result.exit_code == 1 and "budget" in result.stderr, result.output


def images_like(n: int) -> np.ndarray:
    return np.full((n, 1, 8, 8), 0.5, dtype=np.float32)


def test_I2_tournament_runs_are_labelled_trusted(tmp_path: Path) -> None:
    from arena.specs import MatchSpec, PluginSpec, VictimSpec

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "trust")
    parent = tracker.open_tournament("t", {"name": "t"})
    spec = MatchSpec(
        victim=VictimSpec(dataset="digits", arch="mlp"),
        defenses=(),
        attack=PluginSpec(name="knockoff"),
        budget=10,
    )
    child = tracker.log_failure(parent, spec, "a failed match is still an in-cluster run")
    for run_id in (parent, child):
        assert tracker.client.get_run(run_id).data.tags[TRUST_TAG] == TRUSTED_IN_CLUSTER


@pytest.mark.ray
def test_I1_endpoint_in_front_of_the_ray_victim_actor(
    ray_session: None,
    digits_victim: TrainedVictim,
    digits_data: DataSplits,
    make_service: ServiceFactory,
) -> None:
    """The endpoint in front of a victim actor (RayServiceProxy): the outside attacker gets the
    same answers as from the service in this process, and still no way into the actor."""
    import ray

    from arena.oracle import InputSpec
    from orchestration.ray_service import RayServiceProxy, start_victim_service

    handle = start_victim_service(
        digits_victim.spec,
        (),
        ray.put(digits_victim.model.state_dict()),
        InputSpec(shape=digits_data.input_shape),
        digits_data.num_classes,
    )
    try:
        table = TokenTable({BOB: "bob"}, {"bob": 64})
        with IsolatedEndpoint(RayServiceProxy(handle, timeout_s=60), table) as endpoint:
            oracle = Oracle(HttpEndpoint(endpoint.url, BOB), "bob")
            answers = oracle.query(digits_data.test.x[:16])
            host, port = endpoint.url.removeprefix("http://").split(":")
            served = Served(endpoint, make_service(), host, int(port))
            for path in ("/v1/__ray_call__", "/v1/get_actor", "/v1/kill", "/v1/open_account"):
                status, raw, _ = served.request("POST", path, b"{}", token=BOB)
                assert status == 404 and set(json.loads(raw)) <= ERROR_FIELDS
            status, raw, _ = served.request("GET", "/v1/status", token=BOB)
            assert json.loads(raw) == {"budget": 64, "used": 16, "remaining": 48}
        local = make_service()
        local.open_account("bob", 64)
        assert torch.equal(answers, Oracle(local, "bob").query(digits_data.test.x[:16]))
    finally:
        ray.kill(handle)


def test_I1_a_stalled_body_times_out_uncharged(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    """A client that promises a body and never sends it holds a thread for ``timeout_s`` only."""
    service = make_service()
    with IsolatedEndpoint(service, TokenTable({BOB: "bob"}, {"bob": 10}), timeout_s=1) as endpoint:
        host, port = endpoint.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in query_headers((2, 1, 8, 8)).items())
            sock.sendall(
                f"POST /v1/query HTTP/1.1\r\nHost: arena\r\nAuthorization: Bearer {BOB}\r\n{head}"
                f"Content-Length: 512\r\n\r\n".encode()
                + images(digits_data, 2).tobytes()[:100]
            )
            started = time.perf_counter()
            answer = b""
            while chunk := sock.recv(4096):  # headers and body may come apart: read to the end
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"timeout"' in answer
        assert time.perf_counter() - started < 5
    assert service.account_status("bob").used == 0
