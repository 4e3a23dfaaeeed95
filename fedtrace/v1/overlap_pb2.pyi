from fedtrace.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CensusJoinRequest(_message.Message):
    __slots__ = ("context", "dataset", "census_id")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CENSUS_ID_FIELD_NUMBER: _ClassVar[int]
    context: _node_pb2.QueryContext
    dataset: str
    census_id: str
    def __init__(self, context: _Optional[_Union[_node_pb2.QueryContext, _Mapping]] = ..., dataset: _Optional[str] = ..., census_id: _Optional[str] = ...) -> None: ...

class CensusJoinResponse(_message.Message):
    __slots__ = ("jurisdiction", "set_size", "reveal_to_owner", "min_cohort", "policy_version", "identifier_kind", "certificate_pem", "max_relay_points")
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    REVEAL_TO_OWNER_FIELD_NUMBER: _ClassVar[int]
    MIN_COHORT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_KIND_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    MAX_RELAY_POINTS_FIELD_NUMBER: _ClassVar[int]
    jurisdiction: str
    set_size: int
    reveal_to_owner: bool
    min_cohort: int
    policy_version: str
    identifier_kind: str
    certificate_pem: bytes
    max_relay_points: int
    def __init__(self, jurisdiction: _Optional[str] = ..., set_size: _Optional[int] = ..., reveal_to_owner: _Optional[bool] = ..., min_cohort: _Optional[int] = ..., policy_version: _Optional[str] = ..., identifier_kind: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., max_relay_points: _Optional[int] = ...) -> None: ...

class CensusOrigin(_message.Message):
    __slots__ = ("origin", "size")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    origin: str
    size: int
    def __init__(self, origin: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CensusOpenRequest(_message.Message):
    __slots__ = ("census_id", "roster", "reveal", "sizes")
    CENSUS_ID_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    REVEAL_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    census_id: str
    roster: _containers.RepeatedScalarFieldContainer[str]
    reveal: bool
    sizes: _containers.RepeatedCompositeFieldContainer[CensusOrigin]
    def __init__(self, census_id: _Optional[str] = ..., roster: _Optional[_Iterable[str]] = ..., reveal: _Optional[bool] = ..., sizes: _Optional[_Iterable[_Union[CensusOrigin, _Mapping]]] = ...) -> None: ...

class CensusOpenResponse(_message.Message):
    __slots__ = ("set_size",)
    SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    set_size: int
    def __init__(self, set_size: _Optional[int] = ...) -> None: ...

class CensusRef(_message.Message):
    __slots__ = ("census_id",)
    CENSUS_ID_FIELD_NUMBER: _ClassVar[int]
    census_id: str
    def __init__(self, census_id: _Optional[str] = ...) -> None: ...

class CensusRelayHeader(_message.Message):
    __slots__ = ("census_id", "origin", "hop", "expected_points")
    CENSUS_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    HOP_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_POINTS_FIELD_NUMBER: _ClassVar[int]
    census_id: str
    origin: str
    hop: int
    expected_points: int
    def __init__(self, census_id: _Optional[str] = ..., origin: _Optional[str] = ..., hop: _Optional[int] = ..., expected_points: _Optional[int] = ...) -> None: ...

class CensusRelayRequest(_message.Message):
    __slots__ = ("header", "points")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    header: CensusRelayHeader
    points: _node_pb2.PointBatch
    def __init__(self, header: _Optional[_Union[CensusRelayHeader, _Mapping]] = ..., points: _Optional[_Union[_node_pb2.PointBatch, _Mapping]] = ...) -> None: ...

class CensusSharedRequest(_message.Message):
    __slots__ = ("header", "notices")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    header: CensusRef
    notices: bytes
    def __init__(self, header: _Optional[_Union[CensusRef, _Mapping]] = ..., notices: _Optional[bytes] = ...) -> None: ...

class CensusSharedResponse(_message.Message):
    __slots__ = ("shared_records",)
    SHARED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    shared_records: int
    def __init__(self, shared_records: _Optional[int] = ...) -> None: ...

class CensusCloseResponse(_message.Message):
    __slots__ = ("transcript_sha256", "signature")
    TRANSCRIPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    transcript_sha256: bytes
    signature: bytes
    def __init__(self, transcript_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
