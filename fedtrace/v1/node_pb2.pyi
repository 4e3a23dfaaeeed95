from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Disclosure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCLOSURE_UNSPECIFIED: _ClassVar[Disclosure]
    CARDINALITY: _ClassVar[Disclosure]
    AGGREGATE: _ClassVar[Disclosure]
    MEMBERSHIP: _ClassVar[Disclosure]
    DISCLOSURE_REQUEST: _ClassVar[Disclosure]
    OVERLAP: _ClassVar[Disclosure]
DISCLOSURE_UNSPECIFIED: Disclosure
CARDINALITY: Disclosure
AGGREGATE: Disclosure
MEMBERSHIP: Disclosure
DISCLOSURE_REQUEST: Disclosure
OVERLAP: Disclosure

class QueryContext(_message.Message):
    __slots__ = ("case_ref", "legal_basis", "nonce", "timestamp_unix_ms")
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    case_ref: str
    legal_basis: str
    nonce: bytes
    timestamp_unix_ms: int
    def __init__(self, case_ref: _Optional[str] = ..., legal_basis: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "identifier_kind", "epoch_id", "size", "aggregate_columns", "disclosable_columns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_KIND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DISCLOSABLE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    identifier_kind: str
    epoch_id: str
    size: int
    aggregate_columns: _containers.RepeatedScalarFieldContainer[str]
    disclosable_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., identifier_kind: _Optional[str] = ..., epoch_id: _Optional[str] = ..., size: _Optional[int] = ..., aggregate_columns: _Optional[_Iterable[str]] = ..., disclosable_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("jurisdiction", "policy_version", "datasets", "software_version", "certificate_pem")
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    jurisdiction: str
    policy_version: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    software_version: str
    certificate_pem: bytes
    def __init__(self, jurisdiction: _Optional[str] = ..., policy_version: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., software_version: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ...) -> None: ...

class GetFilterRequest(_message.Message):
    __slots__ = ("dataset", "epoch_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    epoch_id: str
    def __init__(self, dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ...) -> None: ...

class FilterHeader(_message.Message):
    __slots__ = ("dataset", "epoch_id", "filter_kind", "item_count", "remainder_bits", "total_bytes", "sha256")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_KIND_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    REMAINDER_BITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    epoch_id: str
    filter_kind: str
    item_count: int
    remainder_bits: int
    total_bytes: int
    sha256: bytes
    def __init__(self, dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ..., filter_kind: _Optional[str] = ..., item_count: _Optional[int] = ..., remainder_bits: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class FilterChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: FilterHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[FilterHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PointBatch(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    def __init__(self, points: _Optional[bytes] = ...) -> None: ...

class EvaluateHeader(_message.Message):
    __slots__ = ("context", "dataset", "epoch_id", "disclosure", "item_count")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    DISCLOSURE_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    context: QueryContext
    dataset: str
    epoch_id: str
    disclosure: Disclosure
    item_count: int
    def __init__(self, context: _Optional[_Union[QueryContext, _Mapping]] = ..., dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ..., disclosure: _Optional[_Union[Disclosure, str]] = ..., item_count: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("header", "points")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    header: EvaluateHeader
    points: PointBatch
    def __init__(self, header: _Optional[_Union[EvaluateHeader, _Mapping]] = ..., points: _Optional[_Union[PointBatch, _Mapping]] = ...) -> None: ...

class EvaluateSummary(_message.Message):
    __slots__ = ("dataset", "epoch_id", "disclosure", "shuffled", "item_count", "policy_version", "jurisdiction")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    DISCLOSURE_FIELD_NUMBER: _ClassVar[int]
    SHUFFLED_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    epoch_id: str
    disclosure: Disclosure
    shuffled: bool
    item_count: int
    policy_version: str
    jurisdiction: str
    def __init__(self, dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ..., disclosure: _Optional[_Union[Disclosure, str]] = ..., shuffled: _Optional[bool] = ..., item_count: _Optional[int] = ..., policy_version: _Optional[str] = ..., jurisdiction: _Optional[str] = ...) -> None: ...

class EvaluateTrailer(_message.Message):
    __slots__ = ("transcript_sha256", "signature")
    TRANSCRIPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    transcript_sha256: bytes
    signature: bytes
    def __init__(self, transcript_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("summary", "points", "trailer")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    summary: EvaluateSummary
    points: PointBatch
    trailer: EvaluateTrailer
    def __init__(self, summary: _Optional[_Union[EvaluateSummary, _Mapping]] = ..., points: _Optional[_Union[PointBatch, _Mapping]] = ..., trailer: _Optional[_Union[EvaluateTrailer, _Mapping]] = ...) -> None: ...
