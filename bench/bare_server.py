"""The baseline of bench.webhook_ingest: an aiohttp server that reads the body and answers 200.

It runs with the same server options and access-log setting as ``reauthbot serve``, so the
difference between the two is the work the service does per delivery (signature, parsing,
the database write), not aiohttp itself.

    .venv/bin/python -m bench.bare_server --port 8081
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from bot.app import MAX_BODY_BYTES, SERVER_OPTIONS


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(status=200)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve POST /nylas/webhook (read the body, answer 200) until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/nylas/webhook", receive)
    app.router.add_get("/healthz", healthz)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        **SERVER_OPTIONS,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
