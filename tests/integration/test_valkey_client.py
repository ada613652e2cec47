"""The hold store's Valkey client against the real server: replies matched to their commands
while thousands share one connection, scripts reloaded after a flush, and every way of losing
the server (paused, connection killed, nothing listening, wrong password) ending in a prompt
`ValkeyError` (the hold store's "degrade") and a working client once the server is back."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import uvloop
from redis import Redis as SyncRedis

from service.valkey import (
    Address,
    Script,
    Valkey,
    ValkeyReplyError,
    ValkeyUnavailable,
)
from tests.integration.conftest import Infra


def with_client(url: str, scenario: Callable[[Valkey], Awaitable[Any]], **timeouts: float) -> Any:
    async def run() -> Any:
        client = Valkey.from_url(url, **timeouts)
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_each_kind_of_reply(infra: Infra) -> None:
    key = "vk:" + secrets.token_hex(4)

    async def scenario(v: Valkey) -> None:
        assert await v.call("SET", key, b"a\r\nb\x00") == b"OK"
        assert await v.call("GET", key) == b"a\r\nb\x00"
        assert await v.call("GET", key + ":missing") is None
        assert await v.call("INCRBY", key + ":n", -5) == -5
        assert await v.call("RPUSH", key + ":l", "x", 7) == 2
        assert await v.call("LRANGE", key + ":l", 0, -1) == [b"x", b"7"]
        assert await v.call("MGET", key, key + ":missing") == [b"a\r\nb\x00", None]
        with pytest.raises(ValkeyReplyError, match="WRONGTYPE"):
            await v.call("INCR", key + ":l")
        assert await v.call("PING") == b"PONG"  # the connection is fine after an error reply

    with_client(infra.redis_url, scenario)


def test_thousands_of_commands_on_one_connection_each_get_their_own_reply(infra: Infra) -> None:
    """Some callers give up (cancelled) while their commands are in flight: their replies are
    dropped, and no later caller is handed a reply meant for another."""
    prefix = "vk:" + secrets.token_hex(4) + ":"
    count = 3000

    async def scenario(v: Valkey) -> None:
        await asyncio.gather(*(v.call("SET", f"{prefix}{i}", i) for i in range(count)))
        tasks = [asyncio.ensure_future(v.call("GET", f"{prefix}{i}")) for i in range(count)]
        await asyncio.sleep(0)  # every command is sent; no reply has been read
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3 == 0:
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert result == str(i).encode()
        assert await v.call("GET", f"{prefix}{count - 1}") == str(count - 1).encode()
        await v.call("DEL", *(f"{prefix}{i}" for i in range(count)))

    with_client(infra.redis_url, scenario)


def test_a_script_is_loaded_again_after_the_server_forgets_it(infra: Infra) -> None:
    script = Script("return {KEYS[1], ARGV[1], " + secrets.token_hex(4).join("''") + "}")

    async def scenario(v: Valkey) -> None:
        first = await v.run(script, ["k"], [1])
        # Loaded under the SHA1 we run it by (a wrong one would resend the source each time).
        assert await v.call("SCRIPT", "EXISTS", script.sha) == [1]
        await v.call("SCRIPT", "FLUSH")
        assert await v.run(script, ["k"], [1]) == first == [b"k", b"1", first[2]]
        with pytest.raises(ValkeyReplyError):
            await v.run(Script("return redis.call('NOSUCH')"), [], [])

    with_client(infra.redis_url, scenario)


def test_a_paused_server_times_out_the_waiting_commands_then_the_client_recovers(
    infra: Infra,
) -> None:
    pause_ms = 1500

    async def scenario(v: Valkey) -> float:
        assert await v.call("PING") == b"PONG"
        with SyncRedis.from_url(infra.redis_url) as admin:
            admin.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(v.call("PING") for _ in range(50)), return_exceptions=True
        )
        waited = time.monotonic() - started
        assert all(isinstance(o, ValkeyUnavailable) for o in outcomes), outcomes
        await asyncio.sleep(pause_ms / 1000)
        assert await v.call("PING") == b"PONG"  # a new connection, once the pause is over
        return waited

    waited = with_client(infra.redis_url, scenario, timeout_s=0.3)
    assert 0.3 <= waited < 1.0


def test_a_killed_connection_fails_what_it_carried_and_the_next_command_reconnects(
    infra: Infra,
) -> None:
    name = "vk-" + secrets.token_hex(4)

    async def scenario(v: Valkey) -> None:
        await v.call("CLIENT", "SETNAME", name)
        blocked = asyncio.ensure_future(v.call("BLPOP", "vk:never:" + name, 5))
        await asyncio.sleep(0.1)
        with SyncRedis.from_url(infra.redis_url) as admin:
            admin.execute_command("CLIENT", "KILL", "ID", _client_id(admin, name))
        with pytest.raises(ValkeyUnavailable, match=r"closed the connection|lost"):
            await blocked
        assert await v.call("PING") == b"PONG"

    with_client(infra.redis_url, scenario)


def test_no_server_or_wrong_password_fails_promptly(infra: Infra) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    address = Address.parse(infra.redis_url)

    async def refused(v: Valkey) -> None:
        with pytest.raises(ValkeyUnavailable, match="cannot connect"):
            await v.call("PING")

    started = time.monotonic()
    with_client(f"redis://127.0.0.1:{free_port}/0", refused)
    assert time.monotonic() - started < 1.0

    async def wrong_password(v: Valkey) -> None:
        with pytest.raises(ValkeyReplyError, match="WRONGPASS"):
            await v.call("PING")
        with pytest.raises(ValkeyReplyError, match="WRONGPASS"):  # each command tries again
            await v.call("PING")

    started = time.monotonic()
    client = Valkey(replace(address, password="wrong-" + secrets.token_hex(4)))
    asyncio.run(_closing(client, wrong_password))
    assert time.monotonic() - started < 1.0


async def _closing(client: Valkey, scenario: Callable[[Valkey], Awaitable[None]]) -> None:
    try:
        await scenario(client)
    finally:
        await client.aclose()


def _client_id(admin: SyncRedis, name: str) -> str:
    for line in admin.execute_command("CLIENT", "LIST").decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name") == name:
            return fields["id"]
    raise AssertionError(f"no client named {name}")


@pytest.mark.parametrize("written", [False, True], ids=["before-the-write", "after-the-write"])
@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_loop_too_busy_to_read_the_reply_is_not_taken_for_a_dead_server(
    infra: Infra, runner: Callable[[Awaitable[Any]], Any], written: bool
) -> None:
    """The loop is blocked for longer than the timeout between a command's send and its write,
    or right after the write (the reply then waits unread in the socket). Neither is Valkey's
    delay: the watchdog must not fail the connection and every command on it."""

    async def scenario() -> Any:
        v = Valkey.from_url(infra.redis_url, timeout_s=0.3)
        try:
            await v.call("PING")
            ping = asyncio.ensure_future(v.call("PING"))
            if written:
                await asyncio.sleep(0)  # sent; written at the start of the next iteration
            # Queued behind the PING's send; before its write, unless that came first.
            asyncio.get_running_loop().call_soon(time.sleep, 0.6)
            return await ping
        finally:
            await v.aclose()

    assert runner(scenario()) == b"PONG"


def test_a_connection_the_server_closed_is_replaced_at_once(infra: Infra) -> None:
    """Between the server's EOF and `connection_lost` (an iteration later), a command must
    not be handed to the dying connection: it connects anew."""
    name = "vk-" + secrets.token_hex(4)

    async def scenario(v: Valkey) -> None:
        await v.call("CLIENT", "SETNAME", name)
        connection = v._connection  # the internals, to stop inside that one iteration
        assert connection is not None
        with SyncRedis.from_url(infra.redis_url) as admin:
            admin.execute_command("CLIENT", "KILL", "ID", _client_id(admin, name))
        while not (connection.closed or connection._transport.is_closing()):  # type: ignore[union-attr]
            await asyncio.sleep(0)
        assert await v.call("PING") == b"PONG"

    with_client(infra.redis_url, scenario)


def test_a_closed_client_fails_every_command_and_stays_closed(infra: Infra) -> None:
    async def scenario() -> None:
        v = Valkey.from_url(infra.redis_url)
        connecting = asyncio.ensure_future(v.call("PING"))
        await asyncio.sleep(0)  # its connection attempt is under way
        await v.aclose()
        with pytest.raises(ValkeyUnavailable):  # not the attempt's cancellation
            await connecting
        with pytest.raises(ValkeyUnavailable, match="closed"):
            await v.call("PING")
        assert v._connection is None and v._connecting is None  # nothing reopened

    asyncio.run(scenario())
