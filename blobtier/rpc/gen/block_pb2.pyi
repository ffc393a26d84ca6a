from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutHeader(_message.Message):
    __slots__ = ("digest", "length", "xxh3", "grant", "version", "index")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    length: int
    xxh3: int
    grant: bytes
    version: int
    index: int
    def __init__(self, digest: _Optional[bytes] = ..., length: _Optional[int] = ..., xxh3: _Optional[int] = ..., grant: _Optional[bytes] = ..., version: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PutHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PutHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutReply(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    def __init__(self, stored: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("digest", "offset", "length", "grant", "version", "index")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    offset: int
    length: int
    grant: bytes
    version: int
    index: int
    def __init__(self, digest: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., grant: _Optional[bytes] = ..., version: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("data", "length", "chunk_length", "xxh3")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LENGTH_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    length: int
    chunk_length: int
    xxh3: int
    def __init__(self, data: _Optional[bytes] = ..., length: _Optional[int] = ..., chunk_length: _Optional[int] = ..., xxh3: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("digests", "grants", "versions", "indexes")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    grants: _containers.RepeatedScalarFieldContainer[bytes]
    versions: _containers.RepeatedScalarFieldContainer[int]
    indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ..., grants: _Optional[_Iterable[bytes]] = ..., versions: _Optional[_Iterable[int]] = ..., indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("digest", "grant", "version", "index")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    grant: bytes
    version: int
    index: int
    def __init__(self, digest: _Optional[bytes] = ..., grant: _Optional[bytes] = ..., version: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class StatReply(_message.Message):
    __slots__ = ("exists", "length", "xxh3", "written")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    length: int
    xxh3: int
    written: int
    def __init__(self, exists: _Optional[bool] = ..., length: _Optional[int] = ..., xxh3: _Optional[int] = ..., written: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChunkEntry(_message.Message):
    __slots__ = ("digest", "written")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    written: int
    def __init__(self, digest: _Optional[bytes] = ..., written: _Optional[int] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ChunkEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[ChunkEntry, _Mapping]]] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("min_dead_ratio",)
    MIN_DEAD_RATIO_FIELD_NUMBER: _ClassVar[int]
    min_dead_ratio: float
    def __init__(self, min_dead_ratio: _Optional[float] = ...) -> None: ...

class CompactReply(_message.Message):
    __slots__ = ("volumes", "bytes_before", "bytes_after", "moved_bytes", "skipped", "dropped_corrupt")
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    BYTES_AFTER_FIELD_NUMBER: _ClassVar[int]
    MOVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CORRUPT_FIELD_NUMBER: _ClassVar[int]
    volumes: int
    bytes_before: int
    bytes_after: int
    moved_bytes: int
    skipped: int
    dropped_corrupt: int
    def __init__(self, volumes: _Optional[int] = ..., bytes_before: _Optional[int] = ..., bytes_after: _Optional[int] = ..., moved_bytes: _Optional[int] = ..., skipped: _Optional[int] = ..., dropped_corrupt: _Optional[int] = ...) -> None: ...

class FaultProfile(_message.Message):
    __slots__ = ("latency_ms", "tail_p", "tail_factor", "bandwidth_bytes_per_s", "error_rate", "corrupt_rate", "down")
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_P_FIELD_NUMBER: _ClassVar[int]
    TAIL_FACTOR_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_RATE_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    latency_ms: float
    tail_p: float
    tail_factor: float
    bandwidth_bytes_per_s: float
    error_rate: float
    corrupt_rate: float
    down: bool
    def __init__(self, latency_ms: _Optional[float] = ..., tail_p: _Optional[float] = ..., tail_factor: _Optional[float] = ..., bandwidth_bytes_per_s: _Optional[float] = ..., error_rate: _Optional[float] = ..., corrupt_rate: _Optional[float] = ..., down: _Optional[bool] = ...) -> None: ...

class FaultUpdate(_message.Message):
    __slots__ = ("set", "reset")
    SET_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    set: FaultProfile
    reset: bool
    def __init__(self, set: _Optional[_Union[FaultProfile, _Mapping]] = ..., reset: _Optional[bool] = ...) -> None: ...

class GetFaultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FaultCounters(_message.Message):
    __slots__ = ("requests", "refused", "errors", "delayed", "stragglers", "throttled", "corrupted", "cancelled", "bytes_sent", "bytes_received")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DELAYED_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    requests: int
    refused: int
    errors: int
    delayed: int
    stragglers: int
    throttled: int
    corrupted: int
    cancelled: int
    bytes_sent: int
    bytes_received: int
    def __init__(self, requests: _Optional[int] = ..., refused: _Optional[int] = ..., errors: _Optional[int] = ..., delayed: _Optional[int] = ..., stragglers: _Optional[int] = ..., throttled: _Optional[int] = ..., corrupted: _Optional[int] = ..., cancelled: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class FaultState(_message.Message):
    __slots__ = ("server_id", "profile", "counters")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    server_id: int
    profile: FaultProfile
    counters: FaultCounters
    def __init__(self, server_id: _Optional[int] = ..., profile: _Optional[_Union[FaultProfile, _Mapping]] = ..., counters: _Optional[_Union[FaultCounters, _Mapping]] = ...) -> None: ...
