"""The baseline of bench.webhook_ingest: an aiohttp server that reads the body and answers 200.

It is served by ``bot.app.run``, as ``reauthbot serve`` is (the same event loop, server
options and access-log setting), and keeps what exists at startup out of the garbage collector
as the service does, so the difference between the two is the work the service does per
delivery (signature, parsing, the database write), not how aiohttp is run.

    .venv/bin/python -m bench.bare_server --port 8081
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence

from aiohttp import web

from bot.app import MAX_BODY_BYTES, run


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def freeze(app: web.Application) -> None:
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve POST /nylas/webhook (read the body, answer 200) until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/nylas/webhook", receive)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(freeze)
    run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
