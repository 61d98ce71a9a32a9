"""A small Server-Sent Events client on a raw socket, for tests and benchmarks/events.py.

Raw, not httpx: a thousand of them must be cheap to hold open, and a test needs to set the
socket's receive buffer (a slow reader) and stop reading at will. HTTP/1.1, chunked or not.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SSEEvent:
    id: int | None
    event: str
    data: Any


class HTTPRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


@dataclass
class SSEClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    chunked: bool
    pings: int = 0
    _buf: bytes = b""
    _chunk_left: int = 0
    _eof: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, base_url: str, path: str, *, token: str | None = None, last_event_id: int | None = None,
                   rcvbuf: int | None = None, timeout: float = 10) -> SSEClient:
        """Connects and reads the answer's head; raises HTTPRefused (with the body) unless it is 200."""
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(port))), timeout)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        head = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if last_event_id is not None:
            head.append(f"Last-Event-ID: {last_event_id}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        client = cls(reader, writer, chunked, headers=headers)
        if status != 200:
            length = headers.get("content-length")
            body = await asyncio.wait_for(
                reader.readexactly(int(length)) if length is not None else client._read_all(), timeout)
            client.close()
            raise HTTPRefused(status, body)
        return client

    async def _read_all(self) -> bytes:
        out = b""
        while (data := await self._read_some()) is not None:
            out += data
        return out

    async def _read_some(self) -> bytes | None:
        """The next piece of the body; None at its end (or when the server closed the connection)."""
        if self._eof:
            return None
        if not self.chunked:
            data = await self.reader.read(65536)
            if not data:
                self._eof = True
                return None
            return data
        if self._chunk_left == 0:
            try:
                size_line = await self.reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self._eof = True
                return None
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._eof = True
                return None
            self._chunk_left = size
        data = await self.reader.read(self._chunk_left)
        if not data:
            self._eof = True
            return None
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            try:
                await self.reader.readexactly(2)  # the chunk's CRLF
            except (asyncio.IncompleteReadError, ConnectionError):
                self._eof = True
        return data

    async def next_event(self, timeout: float | None = None) -> SSEEvent | None:
        """The next event (comments are counted in `pings`); None when the stream ended."""
        return await asyncio.wait_for(self._next_event(), timeout)

    async def _next_event(self) -> SSEEvent | None:
        while True:
            while b"\n\n" in self._buf:
                block, self._buf = self._buf.split(b"\n\n", 1)
                ev = self._parse(block.decode())
                if ev is not None:
                    return ev
            data = await self._read_some()
            if data is None:
                return None
            self._buf += data

    def _parse(self, block: str) -> SSEEvent | None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.pings += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" not in fields:
            return None
        return SSEEvent(int(fields["id"]) if "id" in fields else None, fields.get("event", "message"),
                        json.loads(fields["data"]))

    async def wait_ping(self, timeout: float = 10) -> None:
        """Until the first comment (the server sends one at once): the stream is open."""
        async def first() -> None:
            while self.pings == 0:
                data = await self._read_some()
                if data is None:
                    raise ConnectionError("the stream ended before its first comment")
                self._buf += data
                while b"\n\n" in self._buf and self._buf.startswith(b":"):
                    block, self._buf = self._buf.split(b"\n\n", 1)
                    self._parse(block.decode())
        await asyncio.wait_for(first(), timeout)

    def close(self) -> None:
        self.writer.close()
