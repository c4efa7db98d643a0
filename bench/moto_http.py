"""moto's server application behind an HTTP/1.1 front that keeps connections open, as AWS endpoints do.

``resender.local.aws.MotoServer`` serves moto with werkzeug's development server, which closes the
connection after every response (and then drains the socket, so keep-alive cannot be switched back on). In
the benchmark that would make every AWS request of either function open a new TCP connection, and count that
work as the function's CPU, although in Lambda the SDK's pool keeps connections to DynamoDB and Secrets
Manager open. This front speaks HTTP/1.1 with ``Content-Length`` framing to moto's own WSGI application; what
moto answers is unchanged.
"""

from __future__ import annotations

import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote_to_bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Idle keep-alive connections hold a thread each; they are daemons, so shutdown never waits for them.
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: Any) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The body follows the headers in a second write; without this it waits for a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # request lines on stderr would bury the benchmark's output

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            # The SDKs send a length; without one the next request on this connection cannot be found.
            self.close_connection = True
            self._reply("411 Length Required", [], b"")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        server = cast(_Server, self.server)
        host, port = server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            # WSGI carries the decoded path as latin-1 text, the way werkzeug builds it.
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": self.path,
            "REQUEST_URI": self.path,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(length),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": _BodyReader(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_LENGTH":
                continue
            if key != "CONTENT_TYPE":
                key = f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"], answer["headers"] = status, headers
            return lambda data: answer.setdefault("written", []).append(data)

        result = server.app(environ, start_response)
        try:
            payload = b"".join([*answer.get("written", []), *result])
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        self._reply(answer["status"], answer["headers"], payload)

    def _reply(self, status: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve


class _BodyReader:
    """A WSGI input stream over a body already read from the socket."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._position = 0

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._body) if size is None or size < 0 else self._position + size
        chunk = self._body[self._position : end]
        self._position += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        newline = self._body.find(b"\n", self._position)
        end = len(self._body) if newline < 0 else newline + 1
        if size is not None and size >= 0:
            end = min(end, self._position + size)
        chunk = self._body[self._position : end]
        self._position += len(chunk)
        return chunk

    def __iter__(self) -> Any:
        return iter(self._body[self._position :].splitlines(keepends=True))


class KeepAliveMotoServer:
    """moto's server application on a free loopback port, with atomic DynamoDB writes like ``MotoServer``."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        from resender.local.aws import make_dynamodb_writes_atomic

        make_dynamodb_writes_atomic()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = _Server(("127.0.0.1", 0), DomainDispatcherApplication(create_backend_app))
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-http", daemon=True)
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host!s}:{port}"

    def __enter__(self) -> KeepAliveMotoServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
