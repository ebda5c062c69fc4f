"""The dashboard's sign-in: the login and logout pages, and the session cookie.

Signing in (the login form, or `?token=` on a browser page) with a token opens a
server-side session (storage/access/sessions.py) and sets a cookie holding its random id, never the
token: a cookie is sent to every port of the host, so another service there must not receive a
credential for the API, and a session can be ended on its own (/logout) where a token cannot.
The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page makes the
browser send it), Path=/, and over TLS (`scope["scheme"] == "https"`, which uvicorn takes from
X-Forwarded-Proto when the proxy is trusted) Secure with the `__Host-` prefix, which the
browser only accepts from a secure origin, for the whole host and no domain. Each name is read
only over its own scheme. The cookie authenticates GET and HEAD on browser pages only
(service/middleware/auth.py), and the cookie older servers set (`droptune_token`, the token itself)
is
never read, and deleted at each sign-in and sign-out.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qsl, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from droptune.core.errors import StorageError
from droptune.service.errors import problem
from droptune.storage.access import sessions, tokens

COOKIE = "droptune_session"
TLS_COOKIE = "__Host-" + COOKIE
LEGACY_COOKIE = "droptune_token"
LOGIN, LOGOUT = "/login", "/logout"


def _over_tls(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def cookie_name(scope: Scope) -> str:
    return TLS_COOKIE if _over_tls(scope) else COOKIE


def session_id(scope: Scope, headers: Headers) -> str | None:
    """The session id the browser sent under this scheme's cookie name, if any."""
    value = cookie_parser(headers.get("cookie", "")).get(cookie_name(scope), "")
    return value or None


def _set_cookie(response: Response, scope: Scope, session: str, hours: float) -> Response:
    response.set_cookie(
        cookie_name(scope),
        session,
        max_age=int(hours * 3600),
        path="/",
        secure=_over_tls(scope),
        httponly=True,
        samesite="strict",
    )
    return _drop_legacy(response)


def _drop_legacy(response: Response) -> Response:
    # The cookie older servers set held the admin's token itself: out of the browser with it.
    response.delete_cookie(LEGACY_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def _sign_in(scope: Scope, receive: Receive, send: Send, token: str, target: str) -> bool:
    """Open a session for a token and redirect to `target` with its cookie; False (and nothing
    sent) when the token is not live."""
    state = scope["app"].state
    hours = state.settings.session_hours
    session = await run_in_threadpool(sessions.start, state.engine, token, hours)
    if session is None:
        return False
    response = RedirectResponse(target, status_code=303)
    await _set_cookie(response, scope, session, hours)(scope, receive, send)
    return True


def page(scope: Scope, tokens_seen: bool) -> ASGIApp | None:
    """The login and logout pages, and the sign-in that turns `?token=` into a session cookie;
    None for every other request."""
    path = scope["path"]
    if path == LOGIN and not tokens_seen:  # open mode: nothing to sign in to
        return RedirectResponse("/dashboard", status_code=303)
    if path == LOGIN:
        return _storage_errors(_login)
    if path == LOGOUT:
        return _storage_errors(_logout)
    token = scope.get("state", {}).get("query_token")
    if tokens_seen and scope["method"] == "GET" and token is not None:
        # A `?token=` on a browser page (checked by Access._caller): a session, and
        # the same page without the token in its address.
        pairs = parse_qsl(scope["query_string"].decode("latin-1"))
        rest = [(k, v) for k, v in pairs if k != "token"]
        target = path + (f"?{urlencode(rest)}" if rest else "")
        return _storage_errors(_query_sign_in(token, target))
    return None


def _query_sign_in(token: str, target: str) -> ASGIApp:
    async def sign_in(scope: Scope, receive: Receive, send: Send) -> None:
        if not await _sign_in(scope, receive, send, token, target):  # revoked meanwhile
            refused = problem(401, "Unauthorized", "the token is not a live token")
            await refused(scope, receive, send)

    return sign_in


def _storage_errors(app: ASGIApp) -> ASGIApp:
    """A database outage answers 503 (a sign-out must not look done when it was not)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except StorageError as exc:
            await problem(503, exc.title, exc.detail)(scope, receive, send)

    return guarded


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>droptune: sign in</title>
<style>body{{font:16px system-ui,sans-serif;max-width:28em;margin:4em auto;padding:0 1em}}
input{{font:inherit;width:100%;padding:.4em;margin:.4em 0;box-sizing:border-box}}
button{{font:inherit;padding:.4em 1.2em}}.err{{color:#b00020}}</style></head><body>
<h1>droptune</h1><p>Paste your droptune token (the one your scripts use as DROPTUNE_TOKEN).
The dashboard shows your studies; an admin's shows everyone's.</p>{error}
<form method="post" action="/login"><input type="password" name="token" autocomplete="off"
placeholder="dt_..." required autofocus><button type="submit">Sign in</button></form>
</body></html>"""


async def _login(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    if request.method != "POST":
        await HTMLResponse(LOGIN_PAGE.format(error=""))(scope, receive, send)
        return
    form = await request.form(max_fields=4, max_files=0)
    token = str(form.get("token") or "").strip()
    engine = request.app.state.engine
    who = await run_in_threadpool(tokens.identify, engine, token) if token else None
    if who is not None and await _sign_in(scope, receive, send, token, "/dashboard"):
        return
    why = "That token is not valid."  # or revoked between the two looks
    page_ = LOGIN_PAGE.format(error=f'<p class="err">{html.escape(why)}</p>')
    await HTMLResponse(page_, status_code=401)(scope, receive, send)


async def _logout(scope: Scope, receive: Receive, send: Send) -> None:
    """End the session server-side, so the cookie is refused even if replayed, then delete it."""
    session = session_id(scope, Headers(scope=scope))
    if session is not None:
        await run_in_threadpool(sessions.end, scope["app"].state.engine, session)
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(
        cookie_name(scope), path="/", secure=_over_tls(scope), httponly=True, samesite="strict"
    )
    await _drop_legacy(response)(scope, receive, send)
