"""A forked child never uses its parent's per-process state (issue 19, item 1).

The child of a client that owns its L1 arena starts eight threads at once, each reading
and writing blobs of its own. Whatever they do, the parent's L1 keeps the parent's bytes:
the child reaches the arena only through the owner's socket, never through a forked copy
of the owner (which would hand out slots the parent's owner also hands out).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import blobtier

CHUNK = 16 << 10  # a 4 MiB arena holds 256 chunks: every blob of a round fits
PARENT_BLOBS = 64
THREADS = 8
PER_THREAD = 16
ROUNDS = 4
CHILD_DEADLINE_S = 60.0  # a hung child (a lock copied while held) fails the round


def _blob(tag: str, i: int) -> bytes:
    return (f"{tag}:{i}:".encode() * (CHUNK // 8))[:CHUNK]


def _child(client: blobtier.Client, rnd: int) -> int:
    """The forked child: 8 threads at once, reading and writing blobs of their own."""
    errors: list[str] = []
    start = threading.Barrier(THREADS)  # all at once, as a DataLoader worker's threads

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(PER_THREAD):
                key = f"ns/{rnd}/child/{t}/{i}"
                if bytes(client.get(key)) != _blob(key, 0):
                    errors.append(f"wrong bytes for {key}")
            key = f"ns/{rnd}/child/{t}/new"
            client.put(key, _blob(key, 1))
            if bytes(client.get(key)) != _blob(key, 1):
                errors.append(f"wrong bytes for {key}")
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1 if errors else 0


def _wait(pid: int) -> int:
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -signal.SIGKILL


def test_a_forked_child_never_writes_into_the_parents_l1(region):
    with blobtier.connect(region, cache={"l1_bytes": 0, "daemon": "off"},
                          client={"chunk_size": CHUNK}) as writer:
        for rnd in range(ROUNDS):
            writer.put_many([(f"ns/{rnd}/parent/{i}", _blob(f"ns/{rnd}/parent/{i}", 0))
                             for i in range(PARENT_BLOBS)])
            writer.put_many([(f"ns/{rnd}/child/{t}/{i}", _blob(f"ns/{rnd}/child/{t}/{i}", 0))
                             for t in range(THREADS) for i in range(PER_THREAD)])
    failures = []
    for rnd in range(ROUNDS):
        parent = blobtier.connect(region, cache={"l1_bytes": "4MiB", "daemon": "off"},
                                  client={"chunk_size": CHUNK})
        go_r, go_w = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.read(go_r, 1)
                    code = _child(parent, rnd)
                finally:
                    os._exit(code)
            # After the fork, the parent fills slots of its arena with its own blobs; only
            # then do the child's threads start.
            keys = [f"ns/{rnd}/parent/{i}" for i in range(PARENT_BLOBS)]
            parent.get_many(keys)
            os.write(go_w, b"g")
            child_exit = _wait(pid)
            # Every blob of the round fits in the parent's L1, whoever read it first.
            keys += [f"ns/{rnd}/child/{t}/{i}" for t in range(THREADS) for i in range(PER_THREAD)]
            before = parent.stats()["l1"]["hits"]
            wrong = [k for k in keys if bytes(parent.get(k)) != _blob(k, 0)]
            hits = parent.stats()["l1"]["hits"] - before
            problems = parent._arena.owner.check()
            if wrong or child_exit or problems:
                failures.append(f"round {rnd}: child exit {child_exit}, {len(wrong)} blobs read "
                                f"with wrong bytes ({hits} L1 hits), {problems}")
        finally:
            os.close(go_r)
            os.close(go_w)
            parent.close()
    assert not failures, failures
