"""Proof of work through the two transports: a Ray victim actor (the proxy passes challenges and
proofs through) and the isolated HTTP endpoint (challenge route, nonce header, counters after
the batch), with the same codes and the same charging as in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray
from arena_testkit import ServiceFactory

from arena.data import DataSplits
from arena.errors import RejectionCode, VictimUnavailable
from arena.http_oracle import HttpEndpoint
from arena.oracle import Answer, InputSpec, Oracle, Rejection
from arena.specs import PluginSpec, VictimSpec
from arena.victims import load_or_train
from arena.work import WorkProof, solve
from orchestration.endpoint import IsolatedEndpoint, TokenTable
from orchestration.openapi import openapi_document
from orchestration.ray_service import RayServiceProxy, start_victim_service

WORK = PluginSpec(name="proof_of_work", params={"base_bits": 2, "max_bits": 8})
TOKEN = "alice-token-0000000000000000"


@pytest.mark.ray
def test_work_through_the_ray_proxy(ray_session: None, digits: DataSplits, cache_dir: Path) -> None:
    victim_spec = VictimSpec(dataset="digits", arch="mlp", epochs=10, lr=3e-3)
    victim = load_or_train(victim_spec, digits, cache_dir)
    handle = start_victim_service(
        victim_spec,
        (WORK,),
        ray.put(victim.model.state_dict()),
        InputSpec(shape=digits.input_shape, max_batch=64),
        digits.num_classes,
    )
    try:
        proxy = RayServiceProxy(handle)
        proxy.open_account("thief", 100)
        x = digits.test.x[:20].numpy()
        missing = proxy.answer("thief", "q0", x)
        assert isinstance(missing, Rejection) and missing.code == RejectionCode.WORK_REQUIRED
        oracle = Oracle(proxy, "thief")
        assert len(oracle.query_all(digits.test.x[:40], 20)) == 40
        assert oracle.work_hashes >= 40 and proxy.account_stats("thief").work_queries == 40
        assert proxy.work_challenge("thief", "q0", 20) is not None  # q0 was never charged
    finally:
        ray.kill(handle)


def test_work_over_http(make_service: ServiceFactory, digits_data: DataSplits) -> None:
    service = make_service([WORK])
    with IsolatedEndpoint(service, TokenTable({TOKEN: "alice"}, {"alice": 100})) as endpoint:
        client = HttpEndpoint(endpoint.url, TOKEN)
        assert client.public_spec()[1].work_required
        x = digits_data.test.x[:8].numpy()
        missing = client.answer("alice", "q0", x)
        assert isinstance(missing, Rejection) and missing.code == RejectionCode.WORK_REQUIRED
        challenge = client.work_challenge("alice", "q0", 8)
        assert challenge is not None and challenge.count == 8
        proof = solve(challenge).proof
        foreign = client.answer("alice", "q1", x, work=proof)
        assert isinstance(foreign, Rejection) and foreign.code == RejectionCode.WORK_INVALID
        wrong = client.answer("alice", "q0", x, work=WorkProof(proof.nonce, (1 << 63,) * 8))
        assert isinstance(wrong, Rejection) and wrong.code == RejectionCode.WORK_INVALID
        assert service.account_status("alice").used == 0
        answered = client.answer("alice", "q0", x, work=proof)
        assert isinstance(answered, Answer) and answered.used == 8
        assert client.work_challenge("alice", "q0", 8) is None  # charged: a retry needs no work
        replay = client.answer("alice", "q0", x)
        assert isinstance(replay, Answer) and replay.used == 8
        oracle = Oracle(client, "alice")
        assert len(oracle.query(digits_data.test.x[8:20])) == 12 and oracle.work_seconds > 0
        assert service.account_stats("alice").work_queries == 20
    # a server gone between batches: the challenge is VictimUnavailable, which the oracle retries
    with pytest.raises(VictimUnavailable, match="not reachable"):
        client.work_challenge("alice", "q9", 8)


def test_the_openapi_document_describes_the_challenge() -> None:
    document: dict[str, Any] = json.loads(json.dumps(openapi_document()))
    assert "/v1/challenge" in document["paths"]
    assert {"422", "428"} <= set(document["paths"]["/v1/query"]["post"]["responses"])
    assert {"nonce", "bits", "count"} <= set(
        document["components"]["schemas"]["Challenge"]["properties"]
    )
