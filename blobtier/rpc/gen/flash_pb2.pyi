from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    HIT: _ClassVar[Outcome]
    FILLED: _ClassVar[Outcome]
    MISS: _ClassVar[Outcome]
    FAILED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
HIT: Outcome
FILLED: Outcome
MISS: Outcome
FAILED: Outcome

class ChunkId(_message.Message):
    __slots__ = ("blob_id", "version", "index")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    blob_id: bytes
    version: int
    index: int
    def __init__(self, blob_id: _Optional[bytes] = ..., version: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class GetItem(_message.Message):
    __slots__ = ("key", "record", "offset", "length")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    key: ChunkId
    record: int
    offset: int
    length: int
    def __init__(self, key: _Optional[_Union[ChunkId, _Mapping]] = ..., record: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("items", "records", "touch", "grants", "keys")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GetItem]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    touch: bool
    grants: _containers.RepeatedScalarFieldContainer[bytes]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[GetItem, _Mapping]]] = ..., records: _Optional[_Iterable[bytes]] = ..., touch: _Optional[bool] = ..., grants: _Optional[_Iterable[bytes]] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("item", "outcome", "length", "data", "detail")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    item: int
    outcome: Outcome
    length: int
    data: bytes
    detail: str
    def __init__(self, item: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., length: _Optional[int] = ..., data: _Optional[bytes] = ..., detail: _Optional[str] = ...) -> None: ...

class GetReplies(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[GetReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[GetReply, _Mapping]]] = ...) -> None: ...

class PutHeader(_message.Message):
    __slots__ = ("key", "length", "xxh3", "touch", "grant")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    key: ChunkId
    length: int
    xxh3: int
    touch: bool
    grant: bytes
    def __init__(self, key: _Optional[_Union[ChunkId, _Mapping]] = ..., length: _Optional[int] = ..., xxh3: _Optional[int] = ..., touch: _Optional[bool] = ..., grant: _Optional[bytes] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PutHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PutHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutReply(_message.Message):
    __slots__ = ("admitted", "rejected")
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    admitted: int
    rejected: int
    def __init__(self, admitted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class PrefetchItem(_message.Message):
    __slots__ = ("record", "index")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    record: int
    index: int
    def __init__(self, record: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class PrefetchRequest(_message.Message):
    __slots__ = ("items", "records", "grants", "keys")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PrefetchItem]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    grants: _containers.RepeatedScalarFieldContainer[bytes]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[PrefetchItem, _Mapping]]] = ..., records: _Optional[_Iterable[bytes]] = ..., grants: _Optional[_Iterable[bytes]] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class PrefetchReply(_message.Message):
    __slots__ = ("cached", "fetched", "rejected", "failed")
    CACHED_FIELD_NUMBER: _ClassVar[int]
    FETCHED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    cached: int
    fetched: int
    rejected: int
    failed: int
    def __init__(self, cached: _Optional[int] = ..., fetched: _Optional[int] = ..., rejected: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("keys", "touch", "grants")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ChunkId]
    touch: bool
    grants: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[_Union[ChunkId, _Mapping]]] = ..., touch: _Optional[bool] = ..., grants: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ("found", "slot", "offset", "length", "seq")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    found: bool
    slot: int
    offset: int
    length: int
    seq: int
    def __init__(self, found: _Optional[bool] = ..., slot: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class LocateReply(_message.Message):
    __slots__ = ("host", "dir", "locations")
    HOST_FIELD_NUMBER: _ClassVar[int]
    DIR_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    host: str
    dir: str
    locations: _containers.RepeatedCompositeFieldContainer[Location]
    def __init__(self, host: _Optional[str] = ..., dir: _Optional[str] = ..., locations: _Optional[_Iterable[_Union[Location, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("node_id", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    counters: _containers.ScalarMap[str, float]
    def __init__(self, node_id: _Optional[int] = ..., counters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DropRequest(_message.Message):
    __slots__ = ("keys", "all")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ChunkId]
    all: bool
    def __init__(self, keys: _Optional[_Iterable[_Union[ChunkId, _Mapping]]] = ..., all: _Optional[bool] = ...) -> None: ...

class DropReply(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    def __init__(self, dropped: _Optional[int] = ...) -> None: ...

class ResizeRequest(_message.Message):
    __slots__ = ("capacity_bytes",)
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    capacity_bytes: int
    def __init__(self, capacity_bytes: _Optional[int] = ...) -> None: ...
