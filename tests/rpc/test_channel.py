"""Channels open lazily and never cross fork."""

from __future__ import annotations

import gc
import multiprocessing
import weakref

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.rpc.channel import LazyChannel
from tests.fork_support import in_child


def test_opens_on_first_use_and_keeps_the_channel():
    lazy = LazyChannel("127.0.0.1:1")
    assert lazy._channel is None
    first = lazy.get()
    assert lazy.get() is first
    lazy.close()
    assert lazy._channel is None


def _read_in_child(store: RemoteChunkStore, digest: bytes, out) -> None:
    # Not an id() comparison: the forgotten channel's memory may hold the new one.
    forgotten = store._channel._channel is None
    out.send((bytes(store.get(digest)), forgotten))


def test_a_forked_child_opens_its_own_channel(tmp_path):
    with ChunkServer(str(tmp_path / "s")) as server:
        store = RemoteChunkStore(server.address, timeout_s=10)
        try:
            store.put_many([(b"k" * 16, b"from the parent", xxh3(b"from the parent"))])
            assert bytes(store.get(b"k" * 16)) == b"from the parent"  # the parent's channel is open
            ctx = multiprocessing.get_context("fork")
            recv, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_read_in_child,
                                args=(store, b"k" * 16, send))
            child.start()
            assert recv.poll(30), "the child hung on the inherited channel"
            data, fresh = recv.recv()
            child.join(30)
            assert child.exitcode == 0
            assert data == b"from the parent" and fresh
            assert bytes(store.get(b"k" * 16)) == b"from the parent"  # the parent's still works
        finally:
            store.close()


def _forgotten_and_kept(lazy: LazyChannel, parents: weakref.ref) -> tuple[bool, bool]:
    forgotten = lazy._channel is None
    gc.collect()
    return forgotten, parents() is not None


def test_a_forked_child_never_collects_the_parents_channel():
    # Collecting it would run gRPC's finalisers on the parent's channel in the child.
    lazy = LazyChannel("127.0.0.1:1")
    try:
        parents = weakref.ref(lazy.get())
        assert in_child(_forgotten_and_kept, lazy, parents) == (True, True)
        assert lazy.get() is parents()  # the parent keeps its own
    finally:
        lazy.close()


def test_a_server_slow_to_answer_its_first_connection_is_waited_for(tmp_path):
    """A server that takes a while to send its HTTP/2 SETTINGS (a loaded host: here, stopped
    for a second) is waited for up to the call's deadline. gRPC takes
    grpc.min_reconnect_backoff_ms as the connect timeout too: at 100 ms every channel failed
    such a call at once with UNAVAILABLE ("connection attempt timed out before receiving
    SETTINGS frame"), and a put then lost a replica."""
    import signal
    import subprocess
    import sys
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "block", "serve", "--root",
                             str(tmp_path / "chunks"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        addr = proc.stdout.readline().rsplit(" on ", 1)[1].split(",")[0].strip()
        proc.send_signal(signal.SIGSTOP)
        resume = threading.Timer(1.0, proc.send_signal, (signal.SIGCONT,))
        resume.start()
        channel = LazyChannel(addr)
        reply = health_pb2_grpc.HealthStub(channel.get()).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        resume.join()
        channel.close()
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(30)
