"""Placeholder for the image's serving mode: a health endpoint only, no inference.

    python serve_health.py [--model DIR] [--host 0.0.0.0] [--port 8000]

Until forgather's inference server lands (forgather/serve/), `docker run IMAGE serve` runs this: it
checks that the model directory holds a `config.json`, then answers

    GET /health   200 {"status": "ok", "model": DIR}              while DIR/config.json exists
                  503 {"status": "unavailable", "model": DIR, "error": ...}   otherwise
    anything else 404, or 501 for /v1/... (no inference here)

and records its port in /tmp/forgather-serve.json for the image's HEALTHCHECK (images/healthcheck.sh).
Defaults come from FORGATHER_SERVE_MODEL (else /models/model), FORGATHER_SERVE_HOST and
FORGATHER_SERVE_PORT (else 8000). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE_FILE = Path("/tmp/forgather-serve.json")


def model_problem(model: Path) -> str | None:
    """Why `model` cannot be served, or None when it has a config.json."""
    try:
        if not model.is_dir():
            return f"model directory {model} does not exist (mount it, e.g. -v /path/to/model:{model}:ro)"
        if not (model / "config.json").is_file():
            return f"{model} has no config.json (expected a Hugging Face model directory)"
    except OSError as err:
        return f"cannot read {model}: {err.strerror} (check the mount's permissions)"
    return None


def make_handler(model: Path) -> type[BaseHTTPRequestHandler]:
    """A request handler answering /health for `model`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "forgather-serve-placeholder"

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/health":
                problem = model_problem(model)
                if problem is None:
                    self.reply(200, {"status": "ok", "model": str(model)})
                else:
                    self.reply(
                        503, {"status": "unavailable", "model": str(model), "error": problem}
                    )
            elif path.startswith("/v1/"):
                self.reply(
                    501,
                    {
                        "error": "no inference in this image yet: serve mode is a health-check placeholder"
                    },
                )
            else:
                self.reply(404, {"error": f"not found: {path}", "endpoints": ["/health"]})

        do_HEAD = do_GET
        do_POST = do_GET

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if self.path != "/health" or str(getattr(code, "value", code)) != "200":
                super().log_request(code, size)  # the healthcheck's polls stay out of the log

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            sys.stderr.write(f"serve: {self.address_string()} {format % args}\n")

    return Handler


def stop(signum: int, frame: object) -> None:
    """SIGTERM: leave serve_forever like Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="forgather serve mode (health-check placeholder)")
    parser.add_argument("--model", default=os.environ.get("FORGATHER_SERVE_MODEL", "/models/model"))
    parser.add_argument("--host", default=os.environ.get("FORGATHER_SERVE_HOST", "0.0.0.0"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("FORGATHER_SERVE_PORT", "8000"))
    )
    args = parser.parse_args(argv)

    model = Path(args.model)
    if problem := model_problem(model):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model))
    try:
        STATE_FILE.write_text(
            json.dumps({"port": args.port, "model": str(model)}), encoding="utf-8"
        )
    except OSError as err:
        print(f"serve: cannot write {STATE_FILE} for the healthcheck: {err}", file=sys.stderr)
    signal.signal(signal.SIGTERM, stop)
    print(
        f"serve: placeholder health endpoint on http://{args.host}:{args.port}/health for {model} "
        "(no inference until forgather's inference server lands)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        STATE_FILE.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
