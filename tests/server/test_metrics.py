"""GET /metrics over the real server: Prometheus text that counts handshakes, connections,
deliveries and commits as they happen, and names nobody."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from protocol import Msg, Send, TextBody
from tests.harness import Harness, assert_error, start_harness

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: Harness, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await server.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_handshakes_connections_deliveries_and_commits(
    server: Harness,
) -> None:
    # The values are the process's (several tests share it): compare before and after.
    before = await scrape(server)
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    ann_client = await server.synced(ann)
    bob_client = await server.synced(bob)
    during = await scrape(server)
    assert value(during, "obrol_connections", state="live") >= 2
    assert (
        value(during, "obrol_handshakes_total", outcome="ok")
        - value(before, "obrol_handshakes_total", outcome="ok")
        == 2
    )
    assert (
        value(during, "obrol_handshake_seconds_count")
        - value(before, "obrol_handshake_seconds_count")
        == 2
    )

    await ann_client.send(
        *(Send(cid=f"m{i}", conv=conv.bytes, body=TextBody(text="hi")) for i in range(3))
    )
    got = 0
    with trio.fail_after(10):
        while got < 3:
            got += sum(isinstance(f, Msg) for f in await bob_client.receive())
    after = await scrape(server)
    # Each message went to ann's and bob's live connection.
    assert value(after, "obrol_deliveries_total") - value(during, "obrol_deliveries_total") >= 6
    assert value(after, "obrol_delivery_latency_seconds_count") > value(
        during, "obrol_delivery_latency_seconds_count"
    )
    committed = value(after, "obrol_commit_batch_size_sum") - value(
        during, "obrol_commit_batch_size_sum"
    )
    assert committed == 3
    assert value(after, "obrol_storage_call_seconds_count") > value(
        during, "obrol_storage_call_seconds_count"
    )

    await ann_client.aclose()
    await bob_client.aclose()
    with trio.fail_after(10):
        while True:  # the gauge follows the closes
            closed = await scrape(server)
            if (
                value(closed, "obrol_connections", state="live")
                <= value(during, "obrol_connections", state="live") - 2
            ):
                break
            await trio.sleep(0.05)

    # No label carries an id or an address: only the fixed vocabulary.
    labels = {v for (_, pairs) in after for (_, v) in pairs}
    assert not any(str(x) in " ".join(labels) for x in (ann.id, bob.id, conv, "@"))


async def test_a_metrics_token_is_required_once_set(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    token = "a-long-random-metrics-token-000"
    async with start_harness(nursery, database_url, tmp_path, metrics_token=token) as server:
        assert_error(await server.client.get("/metrics"), 401, "unauthenticated")
        wrong = {"Authorization": "Bearer not-the-token-at-all-0000000"}
        assert_error(await server.client.get("/metrics", headers=wrong), 401, "unauthenticated")
        assert value(await scrape(server, token), "obrol_sweep_passes_total") >= 0
