from fedtrace.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPositionTagsRequest(_message.Message):
    __slots__ = ("dataset", "epoch_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    epoch_id: str
    def __init__(self, dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ...) -> None: ...

class PositionTagsHeader(_message.Message):
    __slots__ = ("dataset", "epoch_id", "tag_kind", "row_count", "total_bytes", "sha256")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_KIND_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    epoch_id: str
    tag_kind: str
    row_count: int
    total_bytes: int
    sha256: bytes
    def __init__(self, dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ..., tag_kind: _Optional[str] = ..., row_count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class PositionTagsChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PositionTagsHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PositionTagsHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AggregateHeader(_message.Message):
    __slots__ = ("context", "dataset", "epoch_id", "item_count", "columns", "total_only", "epsilon")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    context: _node_pb2.QueryContext
    dataset: str
    epoch_id: str
    item_count: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    total_only: bool
    epsilon: float
    def __init__(self, context: _Optional[_Union[_node_pb2.QueryContext, _Mapping]] = ..., dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ..., item_count: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., total_only: _Optional[bool] = ..., epsilon: _Optional[float] = ...) -> None: ...

class AggregateEvaluateRequest(_message.Message):
    __slots__ = ("header", "points")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    header: AggregateHeader
    points: _node_pb2.PointBatch
    def __init__(self, header: _Optional[_Union[AggregateHeader, _Mapping]] = ..., points: _Optional[_Union[_node_pb2.PointBatch, _Mapping]] = ...) -> None: ...

class FigureNoise(_message.Message):
    __slots__ = ("figure", "scale", "half_width_95", "decimals")
    FIGURE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    HALF_WIDTH_95_FIELD_NUMBER: _ClassVar[int]
    DECIMALS_FIELD_NUMBER: _ClassVar[int]
    figure: str
    scale: float
    half_width_95: int
    decimals: int
    def __init__(self, figure: _Optional[str] = ..., scale: _Optional[float] = ..., half_width_95: _Optional[int] = ..., decimals: _Optional[int] = ...) -> None: ...

class AggregateSummary(_message.Message):
    __slots__ = ("query_id", "dataset", "epoch_id", "item_count", "row_count", "policy_version", "jurisdiction", "min_cohort", "epsilon", "noise", "total_only", "expires_in_seconds")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    MIN_COHORT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    query_id: bytes
    dataset: str
    epoch_id: str
    item_count: int
    row_count: int
    policy_version: str
    jurisdiction: str
    min_cohort: int
    epsilon: float
    noise: _containers.RepeatedCompositeFieldContainer[FigureNoise]
    total_only: bool
    expires_in_seconds: int
    def __init__(self, query_id: _Optional[bytes] = ..., dataset: _Optional[str] = ..., epoch_id: _Optional[str] = ..., item_count: _Optional[int] = ..., row_count: _Optional[int] = ..., policy_version: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., min_cohort: _Optional[int] = ..., epsilon: _Optional[float] = ..., noise: _Optional[_Iterable[_Union[FigureNoise, _Mapping]]] = ..., total_only: _Optional[bool] = ..., expires_in_seconds: _Optional[int] = ...) -> None: ...

class AggregateEvaluateResponse(_message.Message):
    __slots__ = ("summary", "points")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    summary: AggregateSummary
    points: _node_pb2.PointBatch
    def __init__(self, summary: _Optional[_Union[AggregateSummary, _Mapping]] = ..., points: _Optional[_Union[_node_pb2.PointBatch, _Mapping]] = ...) -> None: ...

class PeerCertificate(_message.Message):
    __slots__ = ("jurisdiction", "certificate_pem")
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    jurisdiction: str
    certificate_pem: bytes
    def __init__(self, jurisdiction: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ...) -> None: ...

class IndicatorHeader(_message.Message):
    __slots__ = ("query_id", "public_context_sha256", "public_context_follows", "indicator_count", "peers", "total_nonce")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    INDICATOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NONCE_FIELD_NUMBER: _ClassVar[int]
    query_id: bytes
    public_context_sha256: bytes
    public_context_follows: bool
    indicator_count: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerCertificate]
    total_nonce: bytes
    def __init__(self, query_id: _Optional[bytes] = ..., public_context_sha256: _Optional[bytes] = ..., public_context_follows: _Optional[bool] = ..., indicator_count: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerCertificate, _Mapping]]] = ..., total_nonce: _Optional[bytes] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("header", "public_context", "indicator")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    INDICATOR_FIELD_NUMBER: _ClassVar[int]
    header: IndicatorHeader
    public_context: bytes
    indicator: bytes
    def __init__(self, header: _Optional[_Union[IndicatorHeader, _Mapping]] = ..., public_context: _Optional[bytes] = ..., indicator: _Optional[bytes] = ...) -> None: ...

class ColumnAnswer(_message.Message):
    __slots__ = ("figure", "ciphertext")
    FIGURE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    figure: str
    ciphertext: bytes
    def __init__(self, figure: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class AggregateTrailer(_message.Message):
    __slots__ = ("transcript_sha256", "signature")
    TRANSCRIPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    transcript_sha256: bytes
    signature: bytes
    def __init__(self, transcript_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AggregateResponse(_message.Message):
    __slots__ = ("answer", "trailer")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    answer: ColumnAnswer
    trailer: AggregateTrailer
    def __init__(self, answer: _Optional[_Union[ColumnAnswer, _Mapping]] = ..., trailer: _Optional[_Union[AggregateTrailer, _Mapping]] = ...) -> None: ...
