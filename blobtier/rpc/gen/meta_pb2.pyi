from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("record", "grant")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    grant: bytes
    def __init__(self, record: _Optional[bytes] = ..., grant: _Optional[bytes] = ...) -> None: ...

class GetManyRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class GetManyReply(_message.Message):
    __slots__ = ("records", "grants")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    grants: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, records: _Optional[_Iterable[bytes]] = ..., grants: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CommitItem(_message.Message):
    __slots__ = ("key", "expected", "record", "delete", "grant")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    key: str
    expected: int
    record: bytes
    delete: bool
    grant: bytes
    def __init__(self, key: _Optional[str] = ..., expected: _Optional[int] = ..., record: _Optional[bytes] = ..., delete: _Optional[bool] = ..., grant: _Optional[bytes] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("items", "resent")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RESENT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CommitItem]
    resent: bool
    def __init__(self, items: _Optional[_Iterable[_Union[CommitItem, _Mapping]]] = ..., resent: _Optional[bool] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, applied: _Optional[_Iterable[bool]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "expected")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    key: str
    expected: int
    def __init__(self, key: _Optional[str] = ..., expected: _Optional[int] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    def __init__(self, record: _Optional[bytes] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("prefix", "delimiter", "page_token", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    delimiter: str
    page_token: str
    limit: int
    def __init__(self, prefix: _Optional[str] = ..., delimiter: _Optional[str] = ..., page_token: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListEntry(_message.Message):
    __slots__ = ("key", "record", "common_prefix", "grant")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    COMMON_PREFIX_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    key: str
    record: bytes
    common_prefix: bool
    grant: bytes
    def __init__(self, key: _Optional[str] = ..., record: _Optional[bytes] = ..., common_prefix: _Optional[bool] = ..., grant: _Optional[bytes] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ListEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[ListEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RegisterOriginsRequest(_message.Message):
    __slots__ = ("urls",)
    URLS_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, urls: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterOriginsReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOriginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOriginsReply(_message.Message):
    __slots__ = ("urls",)
    URLS_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, urls: _Optional[_Iterable[str]] = ...) -> None: ...

class GrantWriteRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class WriteGrant(_message.Message):
    __slots__ = ("blob_id", "grant")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    blob_id: bytes
    grant: bytes
    def __init__(self, blob_id: _Optional[bytes] = ..., grant: _Optional[bytes] = ...) -> None: ...

class GrantWriteReply(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[WriteGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[WriteGrant, _Mapping]]] = ...) -> None: ...

class ListNamespacesRequest(_message.Message):
    __slots__ = ("names", "usage")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    usage: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., usage: _Optional[bool] = ...) -> None: ...

class NamespaceEntry(_message.Message):
    __slots__ = ("name", "spec", "usage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: bytes
    usage: bytes
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[bytes] = ..., usage: _Optional[bytes] = ...) -> None: ...

class ListNamespacesReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[NamespaceEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[NamespaceEntry, _Mapping]]] = ...) -> None: ...

class PutNamespaceRequest(_message.Message):
    __slots__ = ("name", "changes", "create")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    changes: str
    create: bool
    def __init__(self, name: _Optional[str] = ..., changes: _Optional[str] = ..., create: _Optional[bool] = ...) -> None: ...

class PutNamespaceReply(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: bytes
    def __init__(self, spec: _Optional[bytes] = ...) -> None: ...

class MaintainNamespacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MaintainNamespacesReply(_message.Message):
    __slots__ = ("expired", "reconciled", "busy")
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    expired: int
    reconciled: _containers.RepeatedScalarFieldContainer[str]
    busy: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, expired: _Optional[int] = ..., reconciled: _Optional[_Iterable[str]] = ..., busy: _Optional[_Iterable[str]] = ...) -> None: ...
