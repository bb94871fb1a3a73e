"""A fake Slack Socket Mode endpoint, served over a real WebSocket on loopback.

    async with FakeSlack() as slack, FakeSocketMode(slack, app_token="xapp-1-A0APP-1-t") as sm:
        # a Socket Mode client whose web client has base_url=slack.url connects, then:
        await sm.wait_connected()
        ack = await sm.send_envelope("interactive", {"type": "block_actions", ...})
        assert ack["envelope_id"] == sm.envelopes[-1]["envelope_id"]

It attaches ``apps.connections.open`` to the FakeSlack it is given (the client finds it at
its ``base_url``) and serves the WebSocket URLs that method hands out from its own port, as
Slack does from a separate host. All frames are JSON text frames.

What follows Slack's documentation:

- ``apps.connections.open`` takes only the app-level token, ``Authorization: Bearer
  xapp-…``, and answers ``{"ok": true, "url": …}``;
- the first frame on a new connection is ``{"type": "hello", "num_connections": n,
  "connection_info": {"app_id": …}, "debug_info": {…}}``;
- an envelope is ``{"envelope_id", "type", "payload", "accepts_response_payload"}``, with
  ``retry_attempt`` and ``retry_reason`` added for ``events_api``; ``type`` is
  ``events_api``, ``interactive`` or ``slash_commands``;
- the client acknowledges with ``{"envelope_id": …}``, plus ``"payload"`` when it answers;
  Slack waits 3 seconds for it, so ``send_envelope`` waits 3 s unless told otherwise;
- ``{"type": "disconnect", "reason": "refresh_requested", "debug_info": {…}}`` asks the
  client to open a new connection (another ``apps.connections.open``) and drop this one.

Where Slack does not document a behaviour, the fake picks one and says so here:

- URLs are ``ws://`` on loopback, not ``wss://``, and carry ``ticket`` and ``app_id``;
- a ticket opens one connection and does not expire; an unknown or used ticket is refused
  with HTTP 401 before the upgrade;
- any token other than the app token gets ``invalid_auth`` (Slack answers a bot token with
  ``not_allowed_token_type``);
- envelopes go to the newest open connection (Slack picks any of the app's connections);
- envelope ids count up (``…-000000000001``) instead of being random UUIDs;
- ``accepts_response_payload`` defaults to true for ``slash_commands`` and for
  ``view_submission`` and ``block_suggestion`` payloads, false otherwise (the caller can
  say otherwise);
- an envelope that is not acknowledged is not sent again (Slack retries ``events_api``
  envelopes); ``send_envelope`` raises ``TimeoutError`` instead;
- after a ``disconnect`` frame the fake leaves the old connection for the client to close;
- frames from the client that are not a JSON object with a string ``envelope_id`` are kept
  in ``stray_frames`` and otherwise ignored; acks for unknown envelope ids are recorded too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import WSMsgType, web

from tests.fakes._loopback import LoopbackFake
from tests.fakes.slack import FakeSlack, Params

ACK_DEADLINE_SECONDS = 3.0
_DEBUG_INFO = {"host": "applink-fake-1", "build_number": 1, "approximate_connection_time": 18060}
_ANSWERABLE_INTERACTIONS = ("view_submission", "block_suggestion")


@dataclass(slots=True)
class Connection:
    """One accepted WebSocket, with the ticket it was opened with."""

    ticket: str
    ws: web.WebSocketResponse
    received: list[str] = field(default_factory=list)  # text frames from the client

    @property
    def open(self) -> bool:
        return not self.ws.closed


class FakeSocketMode(LoopbackFake):
    """Slack's Socket Mode endpoint for one app, attached to a running FakeSlack."""

    def __init__(
        self,
        slack: FakeSlack,
        *,
        app_token: str = "xapp-1-A0APP-1-fake",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not app_token.startswith("xapp-"):
            raise ValueError("an app-level token starts with xapp-")
        super().__init__(host=host, port=port)
        self.slack = slack
        self.app_token = app_token
        self.tickets: list[str] = []  # issued by apps.connections.open, in order
        self.connections: list[Connection] = []  # accepted, oldest first
        self.envelopes: list[Params] = []  # sent to the client, in order
        self.acks: list[Params] = []  # acks from the client, in arrival order
        self.stray_frames: list[str] = []  # client frames that are not acks
        self._envelope_count = 0
        self._changed = asyncio.Condition()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        return app

    def url_for(self, root: str) -> str:
        return root.replace("http://", "ws://", 1) + "/link/"

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.slack.serve_method(
            "apps.connections.open", self._connections_open, token=self.app_token
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for connection in self.connections:
            if connection.open:
                await connection.ws.close()
        await super().__aexit__(exc_type, exc, tb)

    # -- inspection ----------------------------------------------------------------------

    @property
    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections if c.open]

    async def wait_connected(self, count: int = 1, *, within: float = 5.0) -> Connection:
        """Wait until `count` connections were accepted in all and one is open; return the
        newest open one."""

        def ready() -> bool:
            return len(self.connections) >= count and bool(self.open_connections)

        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(ready)
        return self.open_connections[-1]

    async def wait_closed(self, connection: Connection, *, within: float = 5.0) -> None:
        """Wait until the client (or the fake) has closed `connection`."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: not connection.open)

    # -- sending ---------------------------------------------------------------------------

    async def send_envelope(
        self,
        type: str,
        payload: Params,
        *,
        accepts_response_payload: bool | None = None,
        within: float = ACK_DEADLINE_SECONDS,
    ) -> Params:
        """Send an envelope to the newest connection; return the client's ack for it.

        Raises TimeoutError when no ack with the envelope's id arrives `within` seconds.
        """
        envelope = await self.post_envelope(
            type, payload, accepts_response_payload=accepts_response_payload
        )
        return await self.wait_ack(envelope["envelope_id"], within=within)

    async def post_envelope(
        self, type: str, payload: Params, *, accepts_response_payload: bool | None = None
    ) -> Params:
        """Send an envelope to the newest connection without waiting; return the envelope."""
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands" or (
                type == "interactive" and payload.get("type") in _ANSWERABLE_INTERACTIONS
            )
        self._envelope_count += 1
        envelope: Params = {
            "envelope_id": f"00000000-0000-4000-8000-{self._envelope_count:012d}",
            "type": type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if type == "events_api":
            envelope.update(retry_attempt=0, retry_reason="")
        self.envelopes.append(envelope)
        await self.send_frame(envelope)
        return envelope

    async def wait_ack(self, envelope_id: str, *, within: float = ACK_DEADLINE_SECONDS) -> Params:
        """Wait for the client's ack of `envelope_id` (TimeoutError after `within` s)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.ack_of(envelope_id) is not None)
        found = self.ack_of(envelope_id)
        assert found is not None
        return found

    def ack_of(self, envelope_id: str) -> Params | None:
        """The first ack received for `envelope_id`, or None."""
        return next((a for a in self.acks if a["envelope_id"] == envelope_id), None)

    async def send_disconnect(self, reason: str = "refresh_requested") -> Connection:
        """Ask the client to reconnect; return the connection the request went to."""
        connection = self._newest()
        await connection.ws.send_str(
            json.dumps({"type": "disconnect", "reason": reason, "debug_info": _DEBUG_INFO})
        )
        return connection

    async def send_frame(self, frame: Params | str) -> None:
        """Send one text frame (a dict is JSON-encoded) to the newest open connection."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self._newest().ws.send_str(text)

    def _newest(self) -> Connection:
        if not self.open_connections:
            raise RuntimeError("no Socket Mode client is connected")
        return self.open_connections[-1]

    # -- serving ---------------------------------------------------------------------------

    def _connections_open(self, params: Params) -> Params:
        ticket = f"fake-ticket-{len(self.tickets) + 1}"
        self.tickets.append(ticket)
        return {"url": f"{self.url}?ticket={ticket}&app_id={self.slack.app_id}"}

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self.tickets or any(c.ticket == ticket for c in self.connections):
            return web.Response(status=401, text="invalid_ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = Connection(ticket, ws)
        hello = {
            "type": "hello",
            "num_connections": len(self.open_connections) + 1,
            "debug_info": _DEBUG_INFO,
            "connection_info": {"app_id": self.slack.app_id},
        }
        await ws.send_str(json.dumps(hello))
        self.connections.append(connection)
        await self._notify()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    connection.received.append(message.data)
                    self._receive(message.data)
                    await self._notify()
                elif message.type == WSMsgType.BINARY:
                    self.stray_frames.append(repr(message.data))
        finally:
            await self._notify()  # wakes wait_closed
        return ws

    def _receive(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if isinstance(frame, dict) and isinstance(frame.get("envelope_id"), str):
            self.acks.append(frame)
        else:
            self.stray_frames.append(text)

    async def _notify(self) -> None:
        """Wake every waiter, to check again what it waits for."""
        async with self._changed:
            self._changed.notify_all()
