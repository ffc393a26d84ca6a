"""Limits and message conversions shared by the chunk server and its client."""

from __future__ import annotations

from blobtier.blockstore_sim.faults import COUNTERS, FIELDS, FaultProfile, FaultState
from blobtier.errors import InvalidRequest
from blobtier.rpc.gen import block_pb2 as pb
from blobtier.rpc.put_stream import MAX_CHUNK_BYTES, MAX_PUT_BYTES  # noqa: F401  (re-exported)
from blobtier.rpc.server import MAX_PIECE_BYTES  # noqa: F401  (re-exported: both sides use it)

DIGEST_BYTES = 16
LIST_BATCH = 4096  # chunk entries per List reply (~100 KiB)
MAX_DELETE = 65536  # digests per Delete request (~1.1 MiB)


def check_digest(digest: bytes) -> bytes:
    if len(digest) != DIGEST_BYTES:
        raise InvalidRequest(f"a chunk digest is {DIGEST_BYTES} bytes, got {len(digest)}")
    return digest


def profile_to_pb(changes: dict[str, float | bool]) -> pb.FaultProfile:
    return pb.FaultProfile(**changes)


def changes_from_pb(msg: pb.FaultProfile) -> dict[str, float | bool]:
    """The fields an update names (proto3 optional fields that are set)."""
    return {name: getattr(msg, name) for name in FIELDS if msg.HasField(name)}


def state_to_pb(server_id: int, profile: FaultProfile, counters: dict[str, int]) -> pb.FaultState:
    return pb.FaultState(server_id=server_id, profile=pb.FaultProfile(**profile.as_dict()),
                         counters=pb.FaultCounters(**counters))


def state_from_pb(msg: pb.FaultState) -> FaultState:
    return FaultState(msg.server_id, FaultProfile(**changes_from_pb(msg.profile)),
                      {name: getattr(msg.counters, name) for name in COUNTERS})
