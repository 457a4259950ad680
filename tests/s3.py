"""A real S3 API for tests: moto's S3 server on 127.0.0.1, and `FaultProxy`, an HTTP reverse
proxy in front of it that answers a seeded fraction of requests with ``503 SlowDown`` or drops
the connection. No client is mocked: pyarrow's and boto3's S3 clients speak HTTP to them.

    with S3Server() as s3, FaultProxy(s3.endpoint, p=0.3) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint     # clients now go through the proxy
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: What the fixtures put in os.environ while the server runs.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}

SLOWDOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId>"
    b"</Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fix_moto_complete_multipart() -> None:
    """moto 5.2.x names CompleteMultipartUpload's result element ``...Response`` instead of
    ``CompleteMultipartUploadResult`` (getmoto/moto#10055); the AWS C++ SDK in pyarrow then
    reports every multipart upload (files above ~10 MB) as failed. Rename it in the reply."""
    from moto.core.serialize import S3Serializer

    original = S3Serializer._serialized_result_to_response
    if getattr(original, "_segray_fixed", False):
        return

    def fixed(self: Any, resp: Any, *args: Any, **kwargs: Any) -> Any:
        resp = original(self, resp, *args, **kwargs)
        body = resp.get("body")
        if self.operation_model.name == "CompleteMultipartUpload" and isinstance(body, str):
            resp["body"] = body.replace(
                "CompleteMultipartUploadResponse", "CompleteMultipartUploadResult"
            )
        return resp

    fixed._segray_fixed = True  # type: ignore[attr-defined]
    S3Serializer._serialized_result_to_response = fixed  # type: ignore[method-assign]


class S3Server:
    """moto's threaded S3 server on a free port of 127.0.0.1 (state kept in this process)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        _fix_moto_complete_multipart()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def __enter__(self) -> S3Server:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_ENV["AWS_REGION"],
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 chars: lower case, digits, '-') and return ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    Each request is read whole, then, drawn from ``random.Random(seed)``: with probability
    ``p`` it is answered ``503`` with an S3 ``SlowDown`` body, with probability ``p_drop`` the
    connection is closed without an answer, otherwise it is forwarded unchanged (method, path,
    headers and raw body bytes, chunked framing included) and the upstream answer returned.
    With ``puts`` set, only the first ``puts`` PUT requests are forwarded and every later one
    is answered ``503`` (a writer cut off midway; reads still work).
    Counters: ``requests``, ``failed_503``, ``dropped``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        p: float = 0.0,
        p_drop: float = 0.0,
        seed: int = 0,
        puts: int | None = None,
    ):
        self.upstream = urlsplit(upstream).netloc
        self.p, self.p_drop, self.puts = p, p_drop, puts
        self.requests = self.failed_503 = self.dropped = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _fate(self, method: str = "GET") -> str:
        with self._lock:
            self.requests += 1
            if method == "PUT" and self.puts is not None:
                if self.puts <= 0:
                    self.failed_503 += 1
                    return "503"
                self.puts -= 1
            draw = self._rng.random()
            if draw < self.p:
                self.failed_503 += 1
                return "503"
            if draw < self.p + self.p_drop:
                self.dropped += 1
                return "drop"
            return "forward"


def _read_chunked(rfile: Any) -> bytes:
    """The raw bytes of a chunked body, framing and trailers included (forwarded as is)."""
    raw = bytearray()
    while True:
        line = rfile.readline()
        raw += line
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = rfile.readline()
                raw += trailer
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(raw)
        raw += rfile.read(size + 2)  # data + CRLF


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _proxy(self) -> None:
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if chunked:
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fate = proxy._fate(self.command)
            if fate == "drop":
                self.close_connection = True  # close without a byte of answer
                return
            if fate == "503":
                self.send_response(503, "Service Unavailable")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN_XML)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOWDOWN_XML)
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP or (
                        chunked and name.lower() == "transfer-encoding"
                    ):
                        upstream.putheader(name, value)
                upstream.endheaders(body)
                answer = upstream.getresponse()
                data = answer.read()  # de-chunked by http.client
            finally:
                upstream.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

    return Handler


def s3_environ(endpoint: str) -> dict[str, str]:
    """The AWS variables that point clients at ``endpoint`` with the test credentials."""
    return {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}


def set_environ(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, remove) variables in os.environ; returns the old values to restore."""
    old = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return old
