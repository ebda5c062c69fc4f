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
   a browser, may instead use the session cookie the login page (or `?token=`) sets for a
   token: a random session id, never the token (service/middleware/sessions.py), looked up on
   every request too. The cookie only ever authenticates GET and HEAD, so it cannot be used to
   change anything. An admin's dashboard shows every owner's studies, anyone else's their own
   (service/routes/dashboard.py); /metrics is for admins (403 for other owners).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from droptune.core.errors import StorageError
from droptune.service.answers import polled
from droptune.service.deps import OPEN, Caller
from droptune.service.errors import problem, problems
from droptune.service.middleware import sessions as signin
from droptune.service.middleware.sessions import LOGIN, LOGOUT
from droptune.service.routes.dashboard import DASHBOARD_PREFIXES
from droptune.service.settings import ServiceSettings
from droptune.storage.access import sessions, tokens

PUBLIC = frozenset({"/healthz", LOGIN, LOGOUT})
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# Pages a browser opens, where the login cookie stands in for the header (GET and HEAD only).
BROWSER_PREFIXES = (*DASHBOARD_PREFIXES, "/docs", "/redoc", "/openapi.json")
ADMIN_PREFIXES = ("/metrics",)
# Who a poll's bearer token speaks for until its read says (service/middleware/polls.py): no
# one's studies, never an admin, if anything but that read were to see it.
UNCHECKED = Caller("", admin=False)
NOT_VALID = "the token is not valid (revoked, or mistyped)"
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
    # names as DNS and container runtimes use them (Compose/Kubernetes service names may hold
    # `_`); an empty port after `:` is allowed by RFC 3986
    r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::(?P<port>[0-9]{0,5}))?"
)


def _host_name(value: str) -> str | None:
    """`example.org:8000` -> `example.org`; `[::1]:8000` -> `::1`; None when malformed."""
    found = HOST_FORM.fullmatch(value.strip().lower())
    if found is None:
        return None
    port = found["port"]
    if port and not 1 <= int(port) <= 65535:
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
                page = signin.page(scope, self.tokens_seen)
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
            return unauthorized("no token exists yet on this server: " + HOW_TO)
        if path in PUBLIC:
            return Caller("", admin=False)
        token = _bearer(headers)
        if (
            token is None
            and scope["method"] in ("GET", "HEAD")
            and path.startswith(BROWSER_PREFIXES)
        ):
            return await self._browser_caller(scope, headers)
        if token is None:
            return unauthorized("this route needs a token: " + HOW_TO)
        if token and polled(scope) is not None:
            # A poll: checked by its read, in the same statement (service/middleware/polls.py)
            scope.setdefault("state", {})["bearer"] = token
            return UNCHECKED
        return await bearer_caller(self.engine, path, token)

    async def _browser_caller(self, scope: Scope, headers: Headers) -> Caller | Response:
        """A browser page without a bearer token: `?token=` (a sign-in, see
        service/middleware/sessions.py)
        or the session cookie."""
        path: str = scope["path"]
        token = _query_token(scope)
        if token is not None and headers.get("sec-fetch-site") not in (None, "none", "same-origin"):
            # A link on another site would sign the browser in as the link's token (login CSRF:
            # the victim then sees the attacker's dashboard): only a typed or pasted address.
            return problem(
                403,
                "Forbidden",
                "a ?token= sign-in works only from an address typed or pasted into the browser, "
                "not from another site's link; or sign in at /login",
            )
        if token is not None:
            scope.setdefault("state", {})["query_token"] = token  # made a session by the page
            return await bearer_caller(self.engine, path, token)
        session = signin.session_id(scope, headers)
        who = None
        if session is not None:
            who = await run_in_threadpool(sessions.identify, self.engine, session)
        if who is None:
            if path.startswith(DASHBOARD_PREFIXES) and "text/html" in headers.get("accept", ""):
                return RedirectResponse(LOGIN, status_code=303)  # a browser: to the sign-in page
            if session is None:
                return unauthorized("this route needs a token: " + HOW_TO)
            return unauthorized(
                "the dashboard session has ended (expired, signed out, or its token revoked): "
                f"sign in again at {LOGIN}"
            )
        return _admin_only(path, Caller(who.owner, who.admin, session=session))


async def bearer_caller(engine: Engine, path: str, token: str) -> Caller | Response:
    """The caller a bearer token speaks for, looked up now; a 401 when it is not live."""
    who = await run_in_threadpool(tokens.identify, engine, token)
    if who is None:
        return unauthorized(NOT_VALID)
    return _admin_only(path, Caller(who.owner, who.admin, token))


def _admin_only(path: str, caller: Caller) -> Caller | Response:
    """/metrics is for admins (it counts every owner's studies)."""
    if path.startswith(ADMIN_PREFIXES) and not caller.admin:
        return problem(403, "Forbidden", f"{path} is for admins; {caller.name!r} is not one")
    return caller


def _bearer(headers: Headers) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def _query_token(scope: Scope) -> str | None:
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
    return next((v for k, v in pairs if k == "token" and v), None)


def unauthorized(detail: str) -> Response:
    return problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


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
