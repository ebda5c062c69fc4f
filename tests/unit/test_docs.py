"""`/docs` and `/redoc` work offline: every asset they load is served by droptune itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings

ORIGIN = "http://localhost"


@pytest.fixture
def api(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(database_url=sqlite_url))
    with TestClient(app, base_url=ORIGIN) as client:
        yield client


class Assets(HTMLParser):
    """The `src` of each script and the `href` of each link on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append((tag, value))


def assets(page: str) -> list[tuple[str, str]]:
    parser = Assets()
    parser.feed(page)
    return parser.urls


def external(page: str) -> list[str]:
    """Absolute URLs on the page that are not the page's own origin."""
    urls = re.findall(r"""https?://[^\s"'<>)]+""", page)
    return [u for u in urls if not u.startswith(ORIGIN + "/") and u != ORIGIN]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(api: TestClient, page: str) -> None:
    r = api.get(page)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert external(r.text) == [], "the page must work without internet"
    for host in ("cdn.jsdelivr.net", "unpkg.com", "fastapi.tiangolo.com", "googleapis"):
        assert host not in r.text
    found = assets(r.text)
    assert {tag for tag, _ in found} == {"script", "link"}, found
    for tag, url in found:
        parts = urlsplit(url)
        assert not parts.netloc or f"{parts.scheme}://{parts.netloc}" == ORIGIN, url
        got = api.get(url)
        assert got.status_code == 200, (url, got.status_code)
        minimum = 1000 if tag == "script" or url.endswith(".css") else 100  # 100: the favicon
        assert len(got.content) > minimum, (url, len(got.content))
        if tag == "script":
            assert "javascript" in got.headers["content-type"], url
        elif url.endswith(".css"):
            assert got.headers["content-type"].startswith("text/css"), url


def test_swagger_page_uses_the_local_bundle_and_schema(api: TestClient) -> None:
    page = api.get("/docs").text
    srcs = [url for tag, url in assets(page) if tag == "script"]
    assert srcs == ["/docs/static/swagger-ui-bundle.js"]
    assert "url: '/openapi.json'" in page
    assert "/docs/oauth2-redirect" in page
    schema = api.get("/openapi.json")
    assert schema.status_code == 200
    body = schema.json()
    assert "/studies/{study_id}/best" in body["paths"]
    # Swagger UI renders OpenAPI 3.1 (what FastAPI emits) from version 5 on only.
    assert body["openapi"].startswith("3.1")
    bundle = api.get("/docs/static/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version and int(version.group(1)) >= 5


def test_oauth2_redirect_and_missing_asset(api: TestClient) -> None:
    r = api.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "swaggerUIRedirectOauth2" in r.text
    missing = api.get("/docs/static/no-such-file.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_docs_assets_are_not_the_dashboards(api: TestClient) -> None:
    """The dashboard keeps `/static`; the docs' assets live under `/docs/static`."""
    assert api.get("/docs/static/swagger-ui.css").status_code == 200
    assert api.get("/static/swagger-ui.css").status_code != 200
    assert api.head("/docs/static/swagger-ui-bundle.js").status_code == 200
