"""What the judge tests share: a real HTTP server on 127.0.0.1 for symnoise to talk to, and an environment in
which no proxy, key or judge setting of the machine running the tests leaks into them."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JUDGE_SETTINGS = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "SYMNOISE_JUDGE_BASE_URL",
    "SYMNOISE_JUDGE_MODEL",
    "SYMNOISE_JUDGE_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
)


def clean_judge_environment(monkeypatch) -> None:
    """No proxy and no judge setting from outside; offline hub (references come from the data folder)."""
    for name in JUDGE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


class LocalServer:
    """A threaded HTTP server on a free port of 127.0.0.1, used as a context manager; each POST request goes to
    ``handle(request)``, which subclasses define. ``base_url`` is the OpenAI-style ``.../v1`` address."""

    def __init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @staticmethod
    def send(request: BaseHTTPRequestHandler, status: int, payload, headers: dict | None = None) -> None:
        """Answer with a JSON body (or raw bytes, for malformed answers) and the given extra headers."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)
