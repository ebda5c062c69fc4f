"""core/escape.py's masked_url: a database URL's password never reaches a log line, whatever
characters it holds (an outside attack found `/`, `#`, `?` and `password=` printed in clear)."""

from __future__ import annotations

import pytest

from droptune.core.escape import masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://postgres:S3cret/Slash@db:5432/x",
            "postgresql+psycopg://postgres:***@db:5432/x",
        ),
        ("postgresql://u:p#a?s@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h:5/db", "postgresql://u:***@h:5/db"),
        (
            "postgresql://u@h/db?password=S3cret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_the_password_is_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_an_unsupported_url_is_refused_without_its_password() -> None:
    from droptune.core.errors import Invalid
    from droptune.storage.sql.db import normalise_url

    with pytest.raises(Invalid) as err:
        normalise_url("mysql://root:S3cretMy@db/x")
    assert "S3cretMy" not in str(err.value) and "root:***@db" in str(err.value)
