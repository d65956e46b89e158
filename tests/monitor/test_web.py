"""The dashboard's ASGI app (monitor/web.py) without a bus or a server: a Feed over a
CommunityView fed the messages a market chain's validator publishes (tests/support/market.py:
an ask, a bid, the clearing, the fill settled), driven through starlette's TestClient, and the
event stream read straight off the ASGI app."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ledger.genesis import read_genesis
from ledger.workload import SimCommunity
from monitor.feed import Feed
from monitor.view import CommunityView
from monitor.web import STATIC, Changes, make_app
from tests.support.ledger import NOW
from tests.support.market import I, K, Market, MarketChain
from wire import topics

Output = tuple[str, bytes, bool]


def settled_market(root: Path) -> tuple[list[Output], list[Output]]:
    """What validator 0 publishes while an ask and a bid clear at K's gate (the first part)
    and the fill settles against the seller's export (the second)."""
    c = SimCommunity(4, NOW)
    m = Market(c)
    chain = MarketChain(root, c)
    chain.block(NOW, ("ask", m.ask(0, 10, 5)), ("bid", m.bid(3, 8, 7)))
    chain.block(K * I)
    cleared = len(chain.outputs)
    [fill] = [r for r in chain.state.ctps.values() if r.fill is not None]
    chain.block((K + 1) * I, ("export", m.export(0, K, 9, 9)), ("erc", m.erc(3, fill.ctp.id, 8)))
    chain.store.close()
    return chain.outputs[:cleared], chain.outputs[cleared:]


@pytest.fixture
def market(tmp_path) -> tuple[Feed, list[Output]]:
    """A feed that has seen the clearing, and the messages of the settlement it has not seen yet."""
    first, rest = settled_market(tmp_path)
    feed = Feed(CommunityView(read_genesis(tmp_path)))
    for message in first:
        feed.on_message(*message)
    return feed, rest


@pytest.fixture
def client(market):
    with TestClient(make_app(market[0])) as client:
        yield client


def test_the_snapshot_is_the_views_json(market, client):
    feed, _ = market
    response = client.get("/api/snapshot")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    snap = response.json()
    assert snap == json.loads(json.dumps(feed.snapshot()))
    [trade] = snap["trades"]
    named = (trade["state"], trade["payer_meter"], trade["payee_meter"], trade["trade_wh"])
    assert named == ("held", "m0004", "m0001", 8)
    [result] = snap["results"]
    assert (result["k"], result["open"]) == (K, {"price_units_per_wh": 6, "wh": 8})
    assert result["green"] == {"price_units_per_wh": None, "wh": 0}, "no green bid: no green price"
    assert [m["meter"] for m in snap["meters"]] == ["m0001", "m0002", "m0003", "m0004"]


def test_the_page_loads_only_its_own_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(loaded) == ["/static/dashboard.css", "/static/dashboard.js", "/static/favicon.svg"]
    types = {"dashboard.css": "text/css", "dashboard.js": "javascript", "favicon.svg": "image/svg+xml"}
    for name, kind in types.items():
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name
        assert response.content == (STATIC / name).read_bytes()
    assert "default-src 'self'" in page.headers["content-security-policy"], "nothing from outside, even by mistake"


def test_the_static_files_name_nothing_outside():
    """The only URL in the page's files is the SVG namespace, which is a name, never fetched."""
    for path in STATIC.iterdir():
        urls = set(re.findall(r"[a-z]+://[^\s\"')]+", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{path.name}: {urls}"


def test_unknown_paths_are_not_found(client):
    assert client.get("/static/nothing.js").status_code == 404
    assert client.get("/api/nothing").status_code == 404


def test_health_counts_the_messages(market, client):
    assert client.get("/healthz").json() == {"ok": True, "messages": market[0].messages, "streams_closed": False}


def test_the_event_stream_starts_with_a_snapshot(market):
    """Straight off the ASGI app: the response head, then one `snapshot` event; the browser
    leaves after it (http.disconnect) and the stream ends."""
    feed, _ = market
    head, body = asyncio.run(first_chunk(make_app(feed), "/api/events"))
    assert head["status"] == 200
    headers = {k.decode(): v.decode() for k, v in head["headers"]}
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-store"
    event = parse_event(body)
    assert event["event"] == "snapshot"
    assert json.loads(event["data"]) == json.loads(json.dumps(feed.snapshot()))


def test_a_burst_of_changes_is_one_fresh_snapshot_with_all_of_them(market):
    feed, rest = market

    async def two_events() -> tuple[dict, dict]:
        changes = Changes(feed)
        changes.attach()
        stream = changes.events(min_gap_s=0)
        first = parse_event(await anext(stream))
        for message in rest:  # the settlement: a status, accounts, a block, all before the loop runs again
            feed.on_message(*message)
        second = parse_event(await anext(stream))
        changes.detach()
        return first, second

    first, second = asyncio.run(two_events())
    assert (first["id"], second["id"]) == ("0", "1"), "the burst is one change"
    assert [t["state"] for t in json.loads(first["data"])["trades"]] == ["held"]
    settled = json.loads(second["data"])
    assert [t["state"] for t in settled["trades"]] == ["settled"]
    assert {m["meter"]: m["summary"]["balance_units"] for m in settled["meters"]}["m0001"] == 1_048


def test_a_quiet_stream_keeps_alive_and_closing_ends_it(market):
    async def stream() -> list[str]:
        changes = Changes(market[0])
        changes.attach()
        events = changes.events(keepalive_s=0.01)
        got = [await anext(events), await anext(events)]
        changes.detach()
        got += [item async for item in events]
        return got

    snapshot, keepalive, *after = asyncio.run(stream())
    assert snapshot.startswith("event: snapshot\n") and keepalive == ": keep-alive\n\n"
    assert after == [], "a closed stream ends"


def test_refused_messages_are_counted_not_shown(market, client):
    feed, rest = market
    [(topic, payload, retained)] = [m for m in rest if m[0].startswith(f"{topics.ROOT}/status/")]
    forged = payload[:-1] + bytes([payload[-1] ^ 1])  # the signature's last byte
    feed.on_message(topic, forged, retained)
    snap = client.get("/api/snapshot").json()
    assert snap["unverified"] == {"signature": 1}
    assert [t["state"] for t in snap["trades"]] == ["held"], "the forged settlement changed nothing"


async def first_chunk(app, path: str) -> tuple[dict, str]:
    """(the response's start message, its first body chunk) of a GET, the client leaving after it."""
    messages: list[dict] = []
    left = asyncio.Event()
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            left.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = next(m["body"] for m in messages if m["type"] == "http.response.body" and m.get("body"))
    return start, body.decode()


def parse_event(text: str) -> dict[str, str]:
    """One server-sent event's fields (docs: the HTML standard's event stream format)."""
    assert text.endswith("\n\n"), text[-40:]
    fields = {}
    for line in text.strip("\n").split("\n"):
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields
