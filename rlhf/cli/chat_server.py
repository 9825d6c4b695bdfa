"""``rlhf chat-server``: a chat model behind an OpenAI-compatible chat completions API on loopback.

What it is for: a judge for ``eval.judges=[..., pairwise]`` with ``eval.pairwise.url`` when no vLLM, TGI or
llama.cpp server is at hand (and the real HTTP endpoint the pairwise judge's tests talk to). It serves one
model, greedily (``temperature`` is accepted and ignored: a judge should be deterministic), one request at a
time, on 127.0.0.1 only; with ``RLHF_CHAT_SERVER_KEY`` set in its environment every request must carry
``Authorization: Bearer <that key>``.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``model``, ``messages``, ``max_tokens``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = Callable[[list[list[dict]], int], list[str]]  # (conversations, max_new_tokens) -> replies
KEY_ENV = "RLHF_CHAT_SERVER_KEY"
ROLES = {"system", "user", "assistant"}


class ChatServer:
    """The server: ``start()`` binds ``127.0.0.1:port`` (0 = a free port, then read ``port``) and serves in a
    thread; ``stop()`` closes the socket. Also a context manager."""

    def __init__(self, reply: Reply, model_name: str, port: int = 0, api_key: str | None = None,
                 max_tokens_cap: int = 512):
        self.reply, self.model_name, self.api_key, self.max_tokens_cap = reply, model_name, api_key, max_tokens_cap
        self.lock = threading.Lock()  # one generation at a time: the model is not thread-safe
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.port = self.httpd.server_address[1]
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ChatServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="chat-server", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread:
            self.thread.join(timeout=10)

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def complete(self, request: dict) -> dict:
        """The chat completion for a parsed request body (``ValueError`` names what is wrong in it)."""
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            raise ValueError("'messages' must be a non-empty list of {role: system|user|assistant, content: string}")
        max_tokens = request.get("max_tokens", request.get("max_completion_tokens", 16))
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= self.max_tokens_cap:
            raise ValueError(f"'max_tokens' must be an integer in 1..{self.max_tokens_cap}")
        with self.lock:
            text = self.reply([messages], max_tokens)[0]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: a judge makes hundreds of requests
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str) -> None:
                self._send(code, {"error": {"message": message, "code": code}})

            def _authorised(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._error(401, "missing or wrong API key (Authorization: Bearer <key>)")
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                else:
                    self._error(404, f"no such endpoint {self.path}; try /v1/models or POST /v1/chat/completions")

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no such endpoint {self.path}; POST /v1/chat/completions")
                    return
                try:
                    request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                    if not isinstance(request, dict):
                        raise ValueError("the body must be a JSON object")
                    self._send(200, server.complete(request))
                except ValueError as err:  # JSONDecodeError is one
                    self._error(400, str(err))

        return Handler
