"""spb-monitor web: the community dashboard in the browser, live and verified.

A small ASGI app (starlette) over the monitor's Feed, served by uvicorn: `/` is the page,
`/static/...` its own script and style (package data: no CDN, works offline), `/api/snapshot`
the view's snapshot as JSON, and `/api/events` the same snapshot as server-sent events: one
when a browser connects, then a fresh one whenever the view changed, at most one per
MIN_GAP_S (the bus carries dozens of messages a second; a page needs a few frames), with a
comment every KEEPALIVE_S so a proxy or a browser does not take a quiet stream for a dead one.

The view holds verified data only, so the page shows nothing else; what the monitor refused
appears as counts by reason. The page is read only: no route changes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from monitor.feed import Feed
from monitor.runner import connected_feed, port_arguments, say, until_signalled
from monitor.view import Seen

STATIC = Path(__file__).with_name("static")
MIN_GAP_S = 0.25  # at most four snapshots a second per browser
KEEPALIVE_S = 15.0
# Everything the page loads comes from this server: a stray external reference fails loudly
# in the browser (a console error) instead of silently needing the internet.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    port_arguments(p)


def run(args: argparse.Namespace) -> int:
    stop = until_signalled()  # uvicorn hands its captured SIGTERM or SIGINT back here on its way out
    with connected_feed(args) as (feed, _client):
        app = make_app(feed)
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.create_server((args.host, args.port), family=family)  # bound here: --port 0 learns its port
        server = DashboardServer(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"), app.state.changes
        )
        host, port = listener.getsockname()[:2]
        say(f"dashboard http://{f'[{host}]' if ':' in host else host}:{port}/")
        if not stop.is_set():
            server.run(sockets=[listener])
        listener.close()
    return 0


class Changes:
    """The view's version for the event streams: bumped from the feed's thread (paho's, under
    the feed's lock), awaited on the server's event loop. A bump wakes every waiting stream;
    the snapshot's JSON is made once per version, however many browsers watch."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.version = 0
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._pending = False  # a bump is queued on the loop already: one is enough
        self._cached: tuple[int, str] = (-1, "")

    def attach(self) -> None:
        """Listen to the feed; called on the loop the streams run on (the app's startup)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()  # an event waited on belongs to one loop: this one
        self.closed = False
        with self.feed.lock:
            self.feed.listeners.append(self._on_seen)

    def detach(self) -> None:
        with self.feed.lock:
            if self._on_seen in self.feed.listeners:
                self.feed.listeners.remove(self._on_seen)
        self.close()

    def close(self) -> None:
        """End every stream: uvicorn waits for open responses before it exits, and a stream of
        events never ends by itself."""
        self.closed = True
        self._changed.set()

    def _on_seen(self, seen: Seen) -> None:
        if seen is None or self._pending or self._loop is None:
            return  # None: traffic that is not the view's (consensus, CoE) changed nothing shown
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is watching
            self._loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self._pending = False
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, version: int, timeout: float) -> bool:
        """Whether the view moved past `version` (or the streams close) within timeout s."""
        if self.version != version or self.closed:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        return self.version != version or self.closed

    def snapshot_json(self) -> tuple[int, str]:
        """(version, the snapshot as JSON); the version is read first, so a message that lands
        meanwhile is in this snapshot and, at worst, sent again with the next."""
        version = self.version
        if self._cached[0] != version:
            self._cached = (version, json.dumps(self.feed.snapshot(), separators=(",", ":")))
        return self._cached

    async def events(self, min_gap_s: float = MIN_GAP_S, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
        """One browser's stream: the snapshot now, then each change, coalesced."""
        loop = asyncio.get_running_loop()
        sent = -1
        last = -min_gap_s
        while not self.closed:
            if self.version == sent:
                if not await self.wait(sent, keepalive_s):
                    yield ": keep-alive\n\n"
                continue
            delay = last + min_gap_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # coalesce: whatever lands meanwhile goes in one snapshot
                continue
            sent, text = self.snapshot_json()
            last = loop.time()
            yield f"event: snapshot\nid: {sent}\ndata: {text}\n\n"


class DashboardServer(uvicorn.Server):
    """uvicorn's server, ending the event streams when it shuts down (it would wait for them)."""

    def __init__(self, config: uvicorn.Config, changes: Changes) -> None:
        super().__init__(config)
        self.changes = changes

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.changes.close()
        await super().shutdown(sockets)


def make_app(feed: Feed) -> Starlette:
    """The dashboard over `feed`; `app.state.changes` streams its changes."""
    changes = Changes(feed)

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def snapshot(_: Request) -> Response:
        return JSONResponse(feed.snapshot(), headers={"Cache-Control": "no-store"})

    async def events(_: Request) -> Response:
        return StreamingResponse(
            changes.events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": True, "messages": feed.messages, "streams_closed": changes.closed})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        changes.attach()
        try:
            yield
        finally:
            changes.detach()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/snapshot", snapshot),
            Route("/api/events", events),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(_SecurityHeaders)
    app.state.changes = changes
    return app


class _SecurityHeaders:
    """SECURITY_HEADERS on every response (pure ASGI: it does not buffer the event stream)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = message | {"headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
