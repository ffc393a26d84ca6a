"""Real ``redis-server`` processes for tests: one node, or a Redis Cluster of 3 masters
(optionally with a replica each), on free loopback ports in a temp dir, always stopped
(``blobtier.region.redis`` starts and joins them, as ``blobtier up`` does a region's).

A test that needs Redis skips when ``redis-server`` (or the ``redis`` client) is missing,
except under CI (``CI`` set): there it fails, so a broken install never passes as green.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Sequence

import pytest

from blobtier.region import redis as region_redis
from blobtier.region.redis import START_TIMEOUT_S, free_ports

__all__ = ["LocalCluster", "RedisNode", "free_ports", "require_redis", "redis_cluster", "redis_node"]


def require_redis() -> str:
    """The path of ``redis-server``; skip the test without it (fail it under CI)."""
    server = shutil.which("redis-server")
    missing = []
    if server is None or shutil.which("redis-cli") is None:
        missing.append("redis-server/redis-cli (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis client (pip install -e '.[test]')")
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Redis tests: {why}", pytrace=False)
        pytest.skip(why)
    return server


class RedisNode(region_redis.RedisNode):
    """``blobtier.region.redis.RedisNode``, skipped (failed under CI) without redis-server."""

    def __init__(self, root: str, *, cluster: bool = False, aof: bool = False,
                 extra: Sequence[str] = ()) -> None:
        require_redis()
        super().__init__(root, cluster=cluster, aof=aof, extra=extra)


class LocalCluster(region_redis.LocalCluster):
    """``blobtier.region.redis.LocalCluster``, with a master to kill for the fault tests."""

    def __init__(self, root: str, masters: int = 3, replicas: int = 0, *, aof: bool = False) -> None:
        require_redis()
        super().__init__(root, masters, replicas, aof=aof)

    def kill_master(self) -> tuple[RedisNode, RedisNode]:
        """SIGKILL a master that has a replica; return (the dead master, its replica) once
        the replica has taken over and the cluster serves every slot again."""
        master = next(m for m in self.masters() if self.replicas_of(m))
        replica = self.replicas_of(master)[0]
        master.kill()
        deadline = time.monotonic() + START_TIMEOUT_S
        while replica.client().info("replication")["role"] != "master":
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover of {master.address} to {replica.address}")
            time.sleep(0.05)
        self.wait_healthy(self.n_masters)
        return master, replica


@pytest.fixture(scope="session")
def redis_node(tmp_path_factory) -> Iterator[RedisNode]:
    """One node shared by a session (stores isolate by key prefix); a test that changes
    the server's settings or kills it starts its own ``RedisNode``."""
    node = RedisNode(str(tmp_path_factory.mktemp("redis")))
    yield node
    node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """3 masters, no replicas: shared by a session (stores isolate by key prefix)."""
    require_redis()
    with LocalCluster(str(tmp_path_factory.mktemp("redis-cluster"))) as c:
        yield c
