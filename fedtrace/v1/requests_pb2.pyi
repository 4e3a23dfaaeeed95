from fedtrace.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FollowUpKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FOLLOW_UP_KIND_UNSPECIFIED: _ClassVar[FollowUpKind]
    FOLLOW_UP_KIND_DISCLOSE: _ClassVar[FollowUpKind]
    FOLLOW_UP_KIND_PRESERVE: _ClassVar[FollowUpKind]
FOLLOW_UP_KIND_UNSPECIFIED: FollowUpKind
FOLLOW_UP_KIND_DISCLOSE: FollowUpKind
FOLLOW_UP_KIND_PRESERVE: FollowUpKind

class SubmitFollowUpRequest(_message.Message):
    __slots__ = ("context", "kind", "dataset", "item", "reason", "fields", "preservation_days")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    PRESERVATION_DAYS_FIELD_NUMBER: _ClassVar[int]
    context: _node_pb2.QueryContext
    kind: FollowUpKind
    dataset: str
    item: str
    reason: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    preservation_days: int
    def __init__(self, context: _Optional[_Union[_node_pb2.QueryContext, _Mapping]] = ..., kind: _Optional[_Union[FollowUpKind, str]] = ..., dataset: _Optional[str] = ..., item: _Optional[str] = ..., reason: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., preservation_days: _Optional[int] = ...) -> None: ...

class FollowUpStatusRequest(_message.Message):
    __slots__ = ("case_ref", "request_id")
    CASE_REF_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    case_ref: str
    request_id: str
    def __init__(self, case_ref: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class FollowUpRecord(_message.Message):
    __slots__ = ("request_id", "state", "record_json", "record_sha256", "signature", "certificate_pem")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: str
    record_json: bytes
    record_sha256: bytes
    signature: bytes
    certificate_pem: bytes
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[str] = ..., record_json: _Optional[bytes] = ..., record_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate_pem: _Optional[bytes] = ...) -> None: ...
