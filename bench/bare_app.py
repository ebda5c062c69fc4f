"""The anchor of bench/api_hey.py: a bare FastAPI app on uvicorn that answers the same JSON
bytes from memory at the same path, so that what droptune adds over the HTTP stack is measured.

    .venv/bin/python bench/bare_app.py BODY_FILE PATH PORT [WORKERS]

Same uvicorn options as `droptune serve` (log level info, access log on, the same graceful
shutdown); with WORKERS > 1, uvicorn's own processes (an import string, `factory=True`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Response


def create() -> FastAPI:
    body = Path(os.environ["BARE_BODY"]).read_bytes()
    app = FastAPI()

    @app.get(os.environ["BARE_PATH"])
    async def answer() -> Response:
        return Response(body, media_type="application/json")

    return app


def main() -> None:
    body, path, port = sys.argv[1:4]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    os.environ |= {"BARE_BODY": body, "BARE_PATH": path}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    uvicorn.run(
        "bare_app:create",
        factory=True,
        host="127.0.0.1",
        port=int(port),
        workers=workers,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
