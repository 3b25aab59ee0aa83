"""A bad clinic link as a userland TCP proxy (this kernel has no ``tc netem``).

Clients connect to ``LinkProxy.port`` and reach the target through a link that adds latency each way, caps the
bandwidth of each direction (one token bucket a direction, shared by every connection, as a real link's), and
goes down for ``drop_for_s`` every ``drop_every_s`` or whenever ``cut`` is called: open connections are reset
and new ones are accepted and reset at once (counted as refused) until the link is up again.

One asyncio loop in a background thread serves every connection; the counters are written by that thread only
and may be read from any thread.

    python -m devtools.field.link --target 127.0.0.1:61613 --latency 0.5 --kbit 256 --drop-every 30 --drop-for 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field

from devtools.field.shaping import DelayLine, Outages, TokenBucket

#: read size without a bandwidth cap
_CHUNK = 65536
#: chunks in flight a direction of a connection (bounds the memory a slow receiver can make us hold)
_IN_FLIGHT = 64


@dataclass(frozen=True)
class LinkStats:
    """The counters at one moment."""

    bytes_up: int
    bytes_down: int
    connections_accepted: int
    connections_dropped: int
    connections_refused: int
    upstream_failures: int
    outages: int
    active: int


@dataclass(eq=False)
class _Connection:
    """A client and its upstream, and the task that serves them (cancelled when the link drops them)."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    task: asyncio.Task[None] | None = field(default=None)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), as a dead link or a refusing far end looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LinkProxy:
    """A TCP proxy to ``target_host:target_port`` that behaves like a slow, intermittent link.

    ``latency_s`` is added in each direction (a round trip costs twice that), ``jitter_s`` adds up to that
    much more per chunk (drawn from ``seed``; order is kept), ``bandwidth_bytes_per_s`` caps each direction,
    ``drop_every_s``/``drop_for_s`` make the link go down for ``drop_for_s`` every ``drop_every_s`` seconds.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 latency_s: float = 0.0, bandwidth_bytes_per_s: float | None = None,
                 drop_every_s: float | None = None, drop_for_s: float = 0.0, jitter_s: float = 0.0,
                 seed: int | None = None, connect_timeout_s: float = 10.0) -> None:
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.connect_timeout_s = connect_timeout_s
        self._rng = random.Random(seed)
        DelayLine(latency_s, jitter_s)  # validates them now rather than on the first connection
        Outages(0.0, drop_every_s, drop_for_s)
        self._drop_every_s = drop_every_s
        self._drop_for_s = drop_for_s
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections_accepted = 0
        self.connections_dropped = 0
        self.connections_refused = 0
        self.upstream_failures = 0
        self.outages = 0
        self._port = 0
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._outages: Outages | None = None
        self._buckets: dict[str, TokenBucket | None] = {}

    # -- control, from any thread ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port clients connect to (known once started)."""
        if not self._port:
            raise RuntimeError("the link proxy is not started")
        return self._port

    @property
    def active(self) -> int:
        return len(self._connections)

    def stats(self) -> LinkStats:
        return LinkStats(self.bytes_up, self.bytes_down, self.connections_accepted, self.connections_dropped,
                         self.connections_refused, self.upstream_failures, self.outages, self.active)

    def is_down(self) -> bool:
        """The link is in an outage now (a cut or a flap): new connections are refused."""
        loop, outages = self._loop, self._outages
        return loop is not None and outages is not None and outages.down_until(loop.time()) is not None

    def start(self) -> LinkProxy:
        if self._thread is not None:
            raise RuntimeError("the link proxy is already started")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failed), daemon=True,
                                        name=f"link-proxy-{self.target[0]}:{self.target[1]}")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the link proxy did not start within 10 s")
        if failed:
            self._thread.join(5)
            self._thread = None
            raise failed[0]
        return self

    def stop(self) -> None:
        """Reset every connection, stop listening, end the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def cut(self, seconds: float) -> None:
        """The link goes down now for ``seconds``: every open connection is reset (done when this returns), new
        ones are refused until it is up again."""
        loop = self._loop
        if loop is None or self._thread is None:
            raise RuntimeError("the link proxy is not started")
        asyncio.run_coroutine_threadsafe(self._cut(seconds), loop).result(10)

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the loop thread -------------------------------------------------------------------------------------
    def _run(self, ready: threading.Event, failed: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(self._open())
        except Exception as exc:  # noqa: BLE001 - handed to start(), which raises it in the caller's thread
            failed.append(exc)
            loop.close()
            ready.set()
            return
        flap = loop.create_task(self._flap())
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            flap.cancel()
            self._drop_all(count=False)
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.close()

    async def _open(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._outages = Outages(now, self._drop_every_s, self._drop_for_s)
        rate = self.bandwidth_bytes_per_s
        self._buckets = {d: TokenBucket(rate, now=now) if rate else None for d in ("up", "down")}
        server = await asyncio.start_server(self._serve, *self.listen, reuse_address=True, backlog=512)
        self._port = server.sockets[0].getsockname()[1]
        return server

    async def _flap(self) -> None:
        outages = self._outages
        assert outages is not None
        loop = asyncio.get_running_loop()
        while (start := outages.next_flap(loop.time())) is not None:
            await asyncio.sleep(max(0.0, start - loop.time()))
            if outages.down_until(loop.time()) is not None:  # asyncio may wake a hair early: then sleep again
                self.outages += 1
                self._drop_all(count=True)

    async def _cut(self, seconds: float) -> None:
        assert self._outages is not None
        self._outages.cut(asyncio.get_running_loop().time(), seconds)
        self.outages += 1
        self._drop_all(count=True)

    def _drop_all(self, *, count: bool) -> None:
        for connection in list(self._connections):
            self._connections.discard(connection)
            if count:
                self.connections_dropped += 1
            _reset(connection.client)
            _reset(connection.upstream)
            if connection.task is not None:
                connection.task.cancel()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        assert self._outages is not None
        if self._outages.down_until(loop.time()) is not None:
            self.connections_refused += 1
            _reset(client)
            return
        try:
            upstream_reader, upstream = await asyncio.wait_for(asyncio.open_connection(*self.target),
                                                               self.connect_timeout_s)
        except (OSError, TimeoutError):
            self.upstream_failures += 1
            _reset(client)
            return
        if self._outages.down_until(loop.time()) is not None:  # the link went down while we connected
            self.connections_refused += 1
            _reset(client)
            _reset(upstream)
            return
        self.connections_accepted += 1
        connection = _Connection(client, upstream, asyncio.current_task())
        self._connections.add(connection)
        clean = False
        try:
            clean = await self._relay(client_reader, client, upstream_reader, upstream)
        except asyncio.CancelledError:
            pass  # dropped by an outage or the proxy stopping; ends quietly (3.11's streams log a cancelled handler)
        finally:
            if connection in self._connections:  # not dropped by an outage (that reset both already)
                self._connections.discard(connection)
                for writer in (client, upstream):
                    if clean:
                        writer.close()
                    else:
                        _reset(writer)

    async def _relay(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                     upstream_reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> bool:
        """Both directions until both end; True when both sides closed cleanly, False when one went away."""
        clean = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._direction(client_reader, upstream, "up"))
                group.create_task(self._direction(upstream_reader, client, "down"))
            clean = True
        except* (OSError, EOFError):
            pass
        return clean

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        """One direction of one connection: read (at the capped rate), then deliver each chunk when it is due."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_IN_FLIGHT)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read(reader, queue, self._buckets[name]))
            group.create_task(self._deliver(writer, queue, name))

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None],
                    bucket: TokenBucket | None) -> None:
        loop = asyncio.get_running_loop()
        line = DelayLine(self.latency_s, self.jitter_s, self._rng)
        size = bucket.chunk() if bucket else _CHUNK
        while chunk := await reader.read(size):
            if bucket is not None and (wait := bucket.reserve(len(chunk), loop.time())) > 0:
                await asyncio.sleep(wait)
            await queue.put((line.due(loop.time()), chunk))
        await queue.put(None)

    async def _deliver(self, writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes] | None],
                       name: str) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, chunk = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
            if name == "up":
                self.bytes_up += len(chunk)
            else:
                self.bytes_down += len(chunk)
        if writer.can_write_eof():  # pass the half-close on; the other direction may still be talking
            writer.write_eof()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, not {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """Run a link by hand until SIGINT/SIGTERM; print the port first and the counters last."""
    parser = argparse.ArgumentParser(prog="python -m devtools.field.link", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any free)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added each way")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many seconds more per chunk")
    parser.add_argument("--kbit", type=float, default=None, help="bandwidth cap each way, kbit/s (1000 bit)")
    parser.add_argument("--drop-every", type=float, default=None, help="the link goes down every this many s")
    parser.add_argument("--drop-for", type=float, default=0.0, help="... for this many s")
    parser.add_argument("--seed", type=int, default=None, help="seed of the jitter")
    args = parser.parse_args(argv)
    # blocked before the proxy's thread starts, so that only sigwait below sees them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    proxy = LinkProxy(args.target[0], args.target[1], listen_host=args.listen[0], listen_port=args.listen[1],
                      latency_s=args.latency, jitter_s=args.jitter, seed=args.seed,
                      bandwidth_bytes_per_s=args.kbit * 1000 / 8 if args.kbit else None,
                      drop_every_s=args.drop_every, drop_for_s=args.drop_for)
    proxy.start()
    print(f"listening on {args.listen[0]}:{proxy.port} -> {args.target[0]}:{args.target[1]}", flush=True)
    print(f"port {proxy.port}", flush=True)
    received = signal.sigwait({signal.SIGINT, signal.SIGTERM})
    proxy.stop()
    stats = proxy.stats()
    print(f"stopped by {signal.Signals(received).name}: " + " ".join(
        f"{name}={getattr(stats, name)}" for name in stats.__dataclass_fields__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
