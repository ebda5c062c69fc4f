"""Who may do what: the Host check, cross-site refusal, bearer tokens and the dashboard cookie.

One pure-ASGI middleware (event streams pass through untouched), in this order:

1. **Host** (DNS rebinding): the `Host` header must name this server: the loopback names, the
   bind address, this machine's names when bound to a wildcard, or DROPTUNE_ALLOWED_HOSTS. A
   malformed one (anything but `name[:port]` or `[IPv6][:port]`) is refused whatever the names.
2. **Cross-site writes**: a request that changes state (any method but GET/HEAD/OPTIONS) and
   comes from a browser page (browsers send `Origin` on every such request, and
   `Sec-Fetch-Site`) must come from this server's own pages (the login form, /docs) or a
   configured CORS origin. A page on another site can send a form or a body-less `fetch`
   without a CORS preflight (a cross-site cancel worked that way), but not with its own origin:
   that is what is checked, not the body's type. Requests without either header (curl, the
   client, scripts) are not from a browser page and are not affected.
3. **The caller**: in *open mode* (no token was ever created, and the server is bound to
   loopback or started with --insecure) every request is the admin `local`, as before tokens
   existed. Once a token exists, every route but /healthz and the login page needs one:
   `Authorization: Bearer <token>` (401 with `WWW-Authenticate: Bearer` without it), looked up
   on every request so a revoked token is refused at once. The dashboard and the docs, opened in
   a browser, may instead use the HttpOnly, SameSite=Strict cookie the login page sets from an
   admin token; the cookie only ever authenticates GET and HEAD, so it cannot be used to
   change anything. The dashboard and /metrics are admin routes (403 for other owners).
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import re
import socket
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from droptune.service.dashboard import DASHBOARD_PREFIXES
from droptune.service.deps import OPEN, Caller
from droptune.service.errors import problem, problems
from droptune.service.settings import ServiceSettings
from droptune.storage import tokens
from droptune.storage.errors import StorageError

COOKIE = "droptune_token"
LOGIN, LOGOUT = "/login", "/logout"
PUBLIC = frozenset({"/healthz", LOGIN, LOGOUT})
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# Pages a browser opens, where the login cookie stands in for the header (GET and HEAD only).
BROWSER_PREFIXES = (*DASHBOARD_PREFIXES, "/docs", "/redoc", "/openapi.json")
ADMIN_PREFIXES = (*DASHBOARD_PREFIXES, "/metrics")
OPEN_RECHECK_S = 1.0  # open mode looks for a newly created token at most this often
HOW_TO = (
    "send `Authorization: Bearer <token>` (the droptune CLI and client send DROPTUNE_TOKEN); "
    "an operator creates tokens with `droptune token create --name NAME`"
)


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def allowed_hosts(settings: ServiceSettings) -> frozenset[str] | None:
    """The names the Host header may carry (None: any, for `*`)."""
    extra = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
    if "*" in extra:
        return None
    names = set(LOOPBACK) | extra
    bind = settings.host.lower()
    if bind in WILDCARDS:  # reachable by this machine's own names and addresses
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            with contextlib.suppress(OSError):
                names.update(str(a[4][0]) for a in socket.getaddrinfo(name, None))
    else:
        names.add(bind)
    return frozenset(names)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# `name[:port]` or `[IPv6][:port]` (RFC 9110's Host, less what no client of this server sends:
# userinfo never belongs there, and `host:8000@evil.example` once passed the name check).
HOST_FORM = re.compile(
    r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?"
)


def _host_name(value: str) -> str | None:
    """`example.org:8000` -> `example.org`; `[::1]:8000` -> `::1`; None when malformed."""
    found = HOST_FORM.fullmatch(value.strip().lower())
    if found is None:
        return None
    port = found["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        return None
    v6 = found["v6"]
    if v6 is None:
        return str(found["name"])
    try:
        return str(ipaddress.IPv6Address(v6))
    except ValueError:
        return None


def cors_origins(settings: ServiceSettings) -> list[str]:
    return [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]


class Access:
    """The middleware (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        self.hosts = allowed_hosts(settings)
        self.origins = frozenset(cors_origins(settings))
        self.bound_open = is_loopback(settings.host) or settings.insecure
        self.tokens_seen = False  # once True, never False again (tokens are never deleted)
        self.looked_at = -OPEN_RECHECK_S  # when open mode last asked whether a token exists

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._check_host(headers) or self._check_cross_site(scope, headers)
        if refusal is None:
            try:
                caller_or_refusal = await self._caller(scope, headers)
            except StorageError as exc:
                caller_or_refusal = problem(503, exc.title, exc.detail)
            if isinstance(caller_or_refusal, Caller):
                scope.setdefault("state", {})["caller"] = caller_or_refusal
                page = _page(scope, caller_or_refusal, self.tokens_seen)
                await (page or self.app)(scope, receive, send)
                return
            refusal = caller_or_refusal
        await refusal(scope, receive, send)

    def _check_host(self, headers: Headers) -> Response | None:
        given = headers.getlist("host")
        if self.hosts is None and not given:
            return None  # any name, and HTTP/1.0 need not send one
        host = _host_name(given[0]) if len(given) == 1 else None
        if host is None:
            shown = ", ".join(repr(g[:200]) for g in given) or "none"
            detail = f"malformed Host header ({shown}): expected name[:port] or [IPv6][:port]"
            return problem(400, "Bad request", detail)
        if self.hosts is None or host in self.hosts or _is_ip(host):
            # An address, not a name, cannot be rebound: a page that reached this server by its
            # address has that address as its own origin.
            return None
        detail = (
            f"this server does not answer to the host name {host!r}: add it to "
            "DROPTUNE_ALLOWED_HOSTS (comma-separated) if it is this server's"
        )
        return problem(400, "Bad request", detail)

    def _check_cross_site(self, scope: Scope, headers: Headers) -> Response | None:
        if scope["method"] in SAFE:
            return None
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site")
        if origin is None and fetch_site is None:
            return None  # not a browser page: curl, the client, a script
        if origin is not None:
            # This server's own pages (the login form, /docs) and configured CORS origins; the
            # scheme is not compared, as a TLS proxy in front makes it https for the browser.
            netloc = urlsplit(origin).netloc.lower() if "://" in origin else ""
            if netloc and netloc == headers.get("host", "").lower():
                return None
            if origin.rstrip("/") in self.origins:
                return None
            return problem(403, "Forbidden", f"cross-site request from {origin!r} refused")
        if fetch_site in ("same-origin", "none"):
            return None
        return problem(403, "Forbidden", "cross-site request refused")

    async def _caller(self, scope: Scope, headers: Headers) -> Caller | Response:
        path: str = scope["path"]
        now = time.monotonic()
        if not self.tokens_seen and now - self.looked_at >= OPEN_RECHECK_S:
            self.tokens_seen = await run_in_threadpool(tokens.any_exist, self.engine)
            self.looked_at = now
        if not self.tokens_seen and self.bound_open:
            return OPEN
        if not self.tokens_seen:  # bound to a public address, which `serve` refuses
            return _unauthorized("no token exists yet on this server: " + HOW_TO)
        if path in PUBLIC:
            return Caller("", admin=False)
        token = _bearer(headers)
        from_cookie = False
        if (
            token is None
            and scope["method"] in ("GET", "HEAD")
            and path.startswith(BROWSER_PREFIXES)
        ):
            from_query = _query_token(scope)
            token = from_query or _cookie(headers)
            from_cookie = token is not None
            if from_query is not None:  # turned into the cookie by _page, once checked
                scope.setdefault("state", {})["query_token"] = from_query
        if token is None:
            if path.startswith(DASHBOARD_PREFIXES) and "text/html" in headers.get("accept", ""):
                return RedirectResponse(LOGIN, status_code=303)  # a browser: to the sign-in page
            return _unauthorized("this route needs a token: " + HOW_TO)
        who = await run_in_threadpool(tokens.identify, self.engine, token)
        if who is None:
            return _unauthorized("the token is not valid (revoked, or mistyped)")
        caller = Caller(who.owner, who.admin, token)
        if (from_cookie or path.startswith(ADMIN_PREFIXES)) and not caller.admin:
            what = "the dashboard" if path.startswith(DASHBOARD_PREFIXES) else path
            return problem(403, "Forbidden", f"{what} is for admins; {who.owner!r} is not one")
        return caller


def _bearer(headers: Headers) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def _cookie(headers: Headers) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is no cookie
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def _query_token(scope: Scope) -> str | None:
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
    return next((v for k, v in pairs if k == "token" and v), None)


def _unauthorized(detail: str) -> Response:
    return problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def _page(scope: Scope, caller: Caller, tokens_seen: bool) -> ASGIApp | None:
    """The login and logout pages, and the redirect that turns `?token=` into the cookie."""
    path = scope["path"]
    if path == LOGIN and not tokens_seen:  # open mode: nothing to sign in to
        return RedirectResponse("/dashboard", status_code=303)
    if path == LOGIN:
        return _login
    if path == LOGOUT:
        return _logout
    token = scope.get("state", {}).get("query_token")
    if tokens_seen and scope["method"] == "GET" and token is not None:
        # An admin's `?token=` on a browser page (checked by Access._caller): the cookie, and
        # the same page without the token in its address.
        rest = [
            (k, v) for k, v in parse_qsl(scope["query_string"].decode("latin-1")) if k != "token"
        ]
        target = path + (f"?{urlencode(rest)}" if rest else "")
        return _with_cookie(RedirectResponse(target, status_code=303), token)
    return None


def _with_cookie(response: Response, token: str) -> Response:
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", path="/", max_age=7 * 24 * 3600
    )
    return response


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>droptune: sign in</title>
<style>body{{font:16px system-ui,sans-serif;max-width:28em;margin:4em auto;padding:0 1em}}
input{{font:inherit;width:100%;padding:.4em;margin:.4em 0;box-sizing:border-box}}
button{{font:inherit;padding:.4em 1.2em}}.err{{color:#b00020}}</style></head><body>
<h1>droptune</h1><p>The dashboard is for admins. Paste an admin token
(<code>droptune token create --name NAME --admin</code>).</p>{error}
<form method="post" action="/login"><input type="password" name="token" autocomplete="off"
placeholder="dt_..." required autofocus><button type="submit">Sign in</button></form>
</body></html>"""


async def _login(scope: Scope, receive: Receive, send: Send) -> None:
    from starlette.requests import Request

    request = Request(scope, receive)
    if request.method != "POST":
        await HTMLResponse(LOGIN_PAGE.format(error=""))(scope, receive, send)
        return
    form = await request.form(max_fields=4, max_files=0)
    token = str(form.get("token") or "").strip()
    engine = request.app.state.engine
    who = await run_in_threadpool(tokens.identify, engine, token) if token else None
    if who is None or not who.admin:
        why = "That token is not valid." if who is None else f"{who.owner} is not an admin."
        page = LOGIN_PAGE.format(error=f'<p class="err">{html.escape(why)}</p>')
        await HTMLResponse(page, status_code=403 if who else 401)(scope, receive, send)
        return
    await _with_cookie(RedirectResponse("/dashboard", status_code=303), token)(scope, receive, send)


async def _logout(scope: Scope, receive: Receive, send: Send) -> None:
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    await response(scope, receive, send)


def document(openapi: dict[str, Any]) -> None:
    """Declare the bearer token in the OpenAPI document (optional: open mode needs none), and
    the answers this middleware gives on any route: 400 (Host), 401 and 403 (but /healthz),
    413 (a body over the cap) on the routes that take one."""
    components = openapi.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "a token from `droptune token create`; not needed in open mode",
    }
    openapi["security"] = [{"bearer": []}, {}]
    for path, operations in openapi.get("paths", {}).items():
        for method, operation in operations.items():
            codes = [400] if path in PUBLIC else [400, 401, 403]
            if method.upper() not in SAFE:
                codes.append(413)
            responses = operation.setdefault("responses", {})
            for code, described in problems(*codes).items():
                responses.setdefault(str(code), described)
