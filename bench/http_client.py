"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for load generators.

``bench.serve``'s client shares this machine's 2 cores with the server it measures, so its own
CPU per request is part of what it measures: on sequential requests httpx's async client
spent 0.91 ms of CPU per request here, this one 0.13 ms (``python -m bench.http_client 1000``
measures both against a ``dvn serve`` of the small stand-in). It speaks only what a JSON API
needs: requests with a ``Content-Length`` body, answers with a ``Content-Length`` body,
keep-alive connections reused last-in first-out, a bound on open connections, a timeout per
request.
"""

from __future__ import annotations

import asyncio
from typing import Optional
from urllib.parse import urlsplit


class HTTPError(RuntimeError):
    """The connection failed or the answer was not HTTP/1.1 with a Content-Length body."""


class Client:
    """``await client.post(path, body)`` -> ``(status, body bytes)`` over pooled connections
    to ``url`` (``http://host:port``); at most ``max_connections`` open at once."""

    def __init__(self, url: str, max_connections: int = 512) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"url: expected http://host:port, got {url!r}")
        self.host, self.port = parts.hostname, parts.port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._head = (f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                      "Content-Length: ").encode()

    async def post(self, path: str, body: bytes, timeout: Optional[float] = None
                   ) -> tuple[int, bytes]:
        """POSTs ``body`` (JSON bytes); a reused connection that the server had closed is
        replaced once, a new one that fails raises ``HTTPError``."""
        request = b"POST %s HTTP/1.1\r\n%s%d\r\n\r\n%s" % (path.encode(), self._head, len(body),
                                                            body)
        async with self._slots:
            return await asyncio.wait_for(self._send(request), timeout)

    async def _send(self, request: bytes) -> tuple[int, bytes]:
        while self._idle:
            conn = self._idle.pop()
            if conn[0].at_eof():
                conn[1].close()
                continue
            try:
                return await self._exchange(conn, request)
            except (ConnectionError, asyncio.IncompleteReadError):
                conn[1].close()  # closed by the server while idle: one new connection
                break
        conn = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(conn, request)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            conn[1].close()
            raise HTTPError(f"{type(e).__name__}: {e}") from None

    async def _exchange(self, conn, request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, keep = None, True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and b"close" in value.lower():
                    keep = False
            if length is None:
                raise ValueError("an answer without Content-Length")
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            writer.close()
        return status, body

    async def close(self) -> None:
        """Closes every idle connection."""
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _compare(n: int) -> None:
    """Client CPU per request, httpx's async client against ``Client``, on ``n`` sequential
    requests to a ``dvn serve`` of the small stand-in (level 1 given)."""
    import json
    import tempfile
    import time

    import httpx

    from bench.serve import images, stand_in, start_server

    async def run(post) -> float:
        for i in range(20):
            await post(i)
        cpu = time.process_time()
        for i in range(n):
            await post(i)
        return (time.process_time() - cpu) / n * 1e3

    with tempfile.TemporaryDirectory() as folder:
        server = start_server(stand_in(folder, "small"), [], 16, 256, 1.0)
        try:
            pay = images(2, [(28, 28), (8, 8)])
            bodies = [json.dumps({"task": j, "image": pay[j], "level": 1}).encode() for j in (1, 2)]

            async def with_httpx() -> float:
                async with httpx.AsyncClient(base_url=server.url) as c:
                    async def post(i):
                        r = await c.post("/v1/predict", content=bodies[i % 2],
                                         headers={"content-type": "application/json"})
                        assert r.status_code == 200, r.text
                        json.loads(r.content)
                    return await run(post)

            async def with_client() -> float:
                c = Client(server.url)
                async def post(i):
                    status, body = await c.post("/v1/predict", bodies[i % 2], 10.0)
                    assert status == 200, body
                    json.loads(body)
                try:
                    return await run(post)
                finally:
                    await c.close()

            for name, fn in (("httpx.AsyncClient", with_httpx), ("bench.http_client", with_client)):
                print(f"{name}: {asyncio.run(fn()):.3f} ms of client CPU per request "
                      f"({n} sequential requests)")
        finally:
            server.stop()


if __name__ == "__main__":
    import sys
    _compare(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
