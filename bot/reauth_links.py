"""``GET /r/{token}``: the tracked re-authentication link an end user opens.

A valid link of an open case records the open and answers 302 to a Nylas hosted-auth URL
built now. Otherwise a small page says what to do: the mailbox is connected again (the case is
resolved), or ask for a new link (unknown: 404; expired: 410). The pages hold no account data,
the answers carry no cookies and are never cached, and the log names the case, never the
token or the email: anyone may open any URL here.
"""

from __future__ import annotations

import html
import logging

from aiohttp import web

from bot.services import SERVICES
from workflows import links
from workflows.links import Opening

log = logging.getLogger("reauthbot.links")

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}

PAGES: dict[Opening, tuple[int, str, str]] = {
    Opening.CONNECTED: (
        200,
        "Your mailbox is connected",
        "Your mailbox is connected again. There is nothing more to do; you can close this page.",
    ),
    Opening.UNKNOWN: (
        404,
        "Link not found",
        "This link is not valid. Please ask the team that sent it to you for a new one.",
    ),
    Opening.EXPIRED: (
        410,
        "Link expired",
        "This link has expired. Please ask the team that sent it to you for a new one.",
    ),
    Opening.UNAVAILABLE: (
        503,
        "Try again later",
        "Reconnecting your mailbox is not available right now. Please try again in a few "
        "minutes, or ask the team that sent you this link for help.",
    ),
}


def page(outcome: Opening) -> web.Response:
    status, title, text = PAGES[outcome]
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5;color:#222}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    headers = dict(HEADERS)
    if outcome is Opening.UNAVAILABLE:
        headers["Retry-After"] = "300"
    return web.Response(status=status, text=body, content_type="text/html", headers=headers)


async def open_link(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    token = request.match_info["token"]
    async with services.sessions() as session, session.begin():
        opened = await links.open_link(
            session, token, now=services.clock(), hosted=services.links.hosted
        )
    extra = {"case": opened.case_id, "outcome": opened.outcome.value}
    if opened.outcome is not Opening.REDIRECT:
        log.info("re-auth link not followed", extra=extra)
        return page(opened.outcome)
    assert opened.url is not None
    services.metrics.links_opened.inc()
    log.info("re-auth link opened", extra={**extra, "first": opened.first})
    return web.Response(status=302, headers={**HEADERS, "Location": opened.url})


def register(app: web.Application) -> None:
    app.router.add_get("/r/{token}", open_link)
