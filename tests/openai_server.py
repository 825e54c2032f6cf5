"""A small OpenAI-compatible chat-completions server on 127.0.0.1 that fails a chosen share of its calls.

Tests point LiteLLM models at it (``openai/<name>`` with ``api_base``) to check retries, failure accounting and that
credentials are never written anywhere. Faults are drawn per call from a seeded generator:

- ``"429"``: rate limited (with ``Retry-After: 0``, as providers send);
- ``"500"``: a server error, no hint (the client backs off);
- ``"timeout"``: the answer comes after ``slow_s`` seconds, past the client's timeout;
- ``"malformed"``: status 200 with a body that is not JSON.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "timeout", "malformed")


class FaultyOpenAI:
    """Serves ``POST /v1/chat/completions``; ``answer(messages)`` writes each reply.

    Args:
        answer: The assistant's text for a list of chat messages.
        faults: ``{fault: share of calls}`` (shares sum to at most 1).
        seed: Seeds the fault draws.
        slow_s: How long a ``"timeout"`` call takes.

    Attributes:
        outcomes: Calls per outcome (``"ok"`` or a fault).
        authorizations: The ``Authorization`` headers received.
    """

    def __init__(
        self,
        answer: Callable[[list[dict[str, Any]]], str],
        faults: dict[str, float] | None = None,
        *,
        seed: int = 0,
        slow_s: float = 1.5,
    ):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {list(FAULTS)}")
        self.answer = answer
        self.faults = dict(faults or {})
        self.slow_s = slow_s
        self.outcomes: Counter[str] = Counter()
        self.authorizations: set[str] = set()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FaultyOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self) -> str:
        with self._lock:
            roll, edge = self._random.random(), 0.0
            for fault, share in self.faults.items():
                edge += share
                if roll < edge:
                    self.outcomes[fault] += 1
                    return fault
            self.outcomes["ok"] += 1
            return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.authorizations.add(self.headers.get("Authorization", ""))
                fault = server._draw()
                if fault == "429":
                    error = {"error": {"message": "rate limited", "type": "rate_limit_error"}}
                    return self._send(429, json.dumps(error).encode(), {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, json.dumps({"error": {"message": "internal error"}}).encode())
                if fault == "malformed":
                    return self._send(200, b'{"id": "cmpl-1", "choices": [')
                if fault == "timeout":
                    time.sleep(server.slow_s)
                text = server.answer(request["messages"])
                body = {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 20},
                }
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    self._send(200, json.dumps(body).encode())

        return Handler
