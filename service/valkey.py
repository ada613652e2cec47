"""A lean asyncio Valkey/Redis client for the hold store's hot path: one pipelined connection.

Why not redis-py's asyncio client here: every command takes a connection from a pool, packs
its arguments through layers of encoders and returns the connection: about 72 µs of CPU per
hold script call (measured with 50 calls at a time). Over one connection that writes each
loop iteration's commands at once and matches replies in order, the same call costs about
16 µs. In a 10,000-request burst every request is a hold, so that difference is most of what
a refused hold costs. (Blocking admin code — starting the embedded server, tests — still uses
redis-py's plain client.)

Replies come back in the order commands were sent (RESP2), so a reply belongs to the oldest
command still waiting. A caller that stops waiting (a cancelled task) leaves its place in
that queue, and its reply is dropped when it arrives. A connection whose oldest command has
waited more than ``timeout_s`` since it was written is taken for dead: it is closed, every
waiting command fails with `ValkeyUnavailable`, and the next command connects anew.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

Arg = bytes | str | int
Reply = Any  # None | int | bytes | list[Reply] | ValkeyReplyError (inside arrays)


class ValkeyError(Exception):
    """Anything that kept a command from its answer."""


class ValkeyUnavailable(ValkeyError, ConnectionError):
    """No connection, a dropped one, or no answer within the timeout."""


class ValkeyReplyError(ValkeyError):
    """The server answered with an error (``-ERR …``)."""


class Script:
    """A Lua script, run by its SHA1 and loaded on first use (`Valkey.run`)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    path: str | None  # a Unix socket's, instead of host and port
    tls: bool
    username: str | None
    password: str | None
    db: int

    @classmethod
    def parse(cls, url: str) -> Address:
        """As redis-py reads one: the database from ``?db=``, else from the path of a TCP
        URL (a Unix socket's path is its file); percent-escapes decoded."""
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"not a redis://, rediss:// or unix:// URL: {parts.scheme}://")
        unix = parts.scheme == "unix"
        path = unquote(parts.path)
        db = parse_qs(parts.query).get("db", [""])[0] or ("" if unix else path.strip("/"))
        if not (db or "0").isdigit():
            raise ValueError(f"the database number must be a whole number, not {db!r}")
        return cls(
            host="" if unix else parts.hostname or "localhost",
            port=6379 if unix else parts.port or 6379,  # a port that is no number raises
            path=path if unix else None,
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(db or 0),
        )


def encode(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Reply, int] | None:
    """The RESP2 reply starting at ``pos`` and the position after it; None if incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind == 0x3A:  # ":" integer
        return int(line), pos
    if kind == 0x24:  # "$" bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return None
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == 0x2A:  # "*" array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            parsed = parse(buf, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    if kind == 0x2B:  # "+" simple string
        return line, pos
    if kind == 0x2D:  # "-" error
        return ValkeyReplyError(line.decode(errors="replace")), pos
    raise ValkeyError(f"unexpected reply type {chr(kind)!r}")


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._unsent: list[bytes] = []  # this loop iteration's commands, written by `_flush`
        self._unsent_replies: list[asyncio.Future[Reply]] = []
        # Replies of written commands, oldest first, each with its deadline.
        self._waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    @property
    def usable(self) -> bool:
        # A closing transport (a failed write, an EOF) is as good as closed: `connection_lost`
        # only comes an iteration later.
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    def send(self, commands: bytes, count: int) -> list[asyncio.Future[Reply]]:
        """Queue ``count`` encoded commands for this loop iteration's write; their replies,
        in order."""
        if not self.usable:
            raise ValkeyUnavailable("the Valkey connection is closed")
        if not self._unsent:
            self._loop.call_soon(self._flush)
        self._unsent.append(commands)
        replies = [self._loop.create_future() for _ in range(count)]
        self._unsent_replies.extend(replies)
        return replies

    def _flush(self) -> None:
        """Write what this loop iteration's requests sent, as one write: in a burst, one
        system call (and one read on Valkey's side) for many commands, not one each. Their
        deadlines run from the write, not from the send: a busy loop's delay is not Valkey's."""
        if self.closed or self._transport is None:
            return  # `_fail` has failed the unsent commands
        self._transport.write(b"".join(self._unsent))
        deadline = self._loop.time() + self._timeout_s
        self._waiting.extend((reply, deadline) for reply in self._unsent_replies)
        self._unsent.clear()
        self._unsent_replies.clear()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._check)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        while self._waiting:
            try:
                parsed = parse(self._buf, pos)
            except (ValkeyError, ValueError) as exc:  # garbage: nothing after it can be trusted
                self.abort(f"unreadable reply from Valkey: {exc}")
                return
            if parsed is None:
                break
            value, pos = parsed
            reply, _ = self._waiting.popleft()
            if reply.done():  # its caller stopped waiting
                continue
            if isinstance(value, ValkeyReplyError):
                reply.set_exception(value)
            else:
                reply.set_result(value)
        del self._buf[:pos]

    def eof_received(self) -> bool:
        # Fail at once: until `connection_lost` (an iteration later) new commands would still
        # be given to this connection, and fail instead of connecting anew.
        self._fail("Valkey closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"the Valkey connection was lost: {exc or 'closed'}")

    def abort(self, why: str) -> None:
        self._fail(why)
        if self._transport is not None:
            self._transport.abort()

    def _check(self) -> None:
        """Replies come in order: if the oldest waiting command is past its deadline, the
        connection is stalled, not merely busy with a slow command of someone else's. (A
        reply that came while the loop was too busy to read it is read first: asyncio and
        uvloop both handle a socket's input before a timer that fell due meanwhile.)"""
        self._watchdog = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.abort(f"Valkey did not answer within {self._timeout_s} s")
        else:
            self._watchdog = self._loop.call_at(deadline, self._check)

    def _fail(self, why: str) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        failed = [reply for reply, _ in self._waiting] + self._unsent_replies
        self._waiting.clear()
        self._unsent.clear()
        self._unsent_replies.clear()
        for reply in failed:
            if not reply.done():  # an error each: a shared one would mix their tracebacks
                reply.set_exception(ValkeyUnavailable(why))


class Valkey:
    """One worker's connection to Valkey, shared by all its requests (see the module doc).

    ``timeout_s`` bounds the wait for any answer (a longer wait counts as Valkey being down);
    ``connect_timeout_s`` bounds connecting and authenticating."""

    def __init__(self, address: Address, timeout_s: float = 2.0, connect_timeout_s: float = 2.0):
        self._address = address
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **timeouts: float) -> Valkey:
        return cls(Address.parse(url), **timeouts)

    async def call(self, *args: Arg) -> Reply:
        """Run one command; a ``-ERR`` answer raises `ValkeyReplyError`."""
        (reply,) = (await self._connected()).send(encode(args), 1)
        return await reply

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        """EVALSHA, falling back to EVAL (which loads the script) when the server lacks it
        (a restarted or flushed server)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ValkeyReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; every command after this fails."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.abort("the client was closed")
            self._connection = None

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._closed:
            raise ValkeyUnavailable("the client was closed")
        # One connection attempt at a time, however many commands wait for it. `wait`, not
        # `shield`: a caller cancelled while waiting leaves the attempt to the others, and
        # an attempt cancelled by `aclose` is a ValkeyError to them, not their cancellation.
        attempt = self._connecting
        if attempt is None:
            attempt = self._connecting = asyncio.ensure_future(self._connect())
            attempt.add_done_callback(self._connect_done)
        await asyncio.wait({attempt})
        if attempt.cancelled():
            raise ValkeyUnavailable("the client was closed")
        return attempt.result()

    def _connect_done(self, attempt: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if attempt.cancelled() or attempt.exception() is not None:
            return
        if self._closed:  # closed while this attempt finished
            attempt.result().abort("the client was closed")
        else:
            self._connection = attempt.result()

    async def _connect(self) -> _Connection:
        address, loop = self._address, asyncio.get_running_loop()
        connection: _Connection | None = None
        handshake: list[Sequence[Arg]] = []
        if address.password is not None:
            handshake.append(
                ["AUTH", *([address.username] if address.username else []), address.password]
            )
        if address.db:
            handshake.append(["SELECT", address.db])
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if address.path is not None:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self._timeout_s), address.path
                    )
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self._timeout_s),
                        address.host,
                        address.port,
                        ssl=ssl.create_default_context() if address.tls else None,
                    )
                if handshake:
                    payload = b"".join(encode(c) for c in handshake)
                    await asyncio.gather(*connection.send(payload, len(handshake)))
        except BaseException as exc:
            if connection is not None:
                connection.abort("the handshake failed")
            if isinstance(exc, (OSError, TimeoutError)):
                raise ValkeyUnavailable(f"cannot connect to Valkey: {exc or 'timed out'}") from exc
            raise
        return connection
