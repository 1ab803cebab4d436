"""The few Caffe protobuf messages a `.caffemodel` needs, built at import time without Caffe.

Field numbers follow Caffe's `caffe.proto` (BVLC master; DeepLab's fork keeps them). Only the
fields that carry names, connectivity and weights are declared: protobuf skips every other field
(layer parameters, DeepLab's own additions) while parsing, so one set of messages reads the
releases of DeepLab v1 (V1 `layers`) and v2 (`layer`) alike. The V1 layer `type` is declared as a
plain int32 rather than Caffe's closed enum, so types added by forks (DeepLab's Interp, ...) keep
their number instead of collapsing to NONE.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "deeplab_caffe"
_F = descriptor_pb2.FieldDescriptorProto

# V1LayerParameter.LayerType values (caffe.proto) that the released nets use.
V1_TYPES = {
    "ACCURACY": 1,
    "CONCAT": 3,
    "CONVOLUTION": 4,
    "DATA": 5,
    "DROPOUT": 6,
    "IMAGE_DATA": 12,
    "INNER_PRODUCT": 14,
    "POOLING": 17,
    "RELU": 18,
    "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21,
    "SPLIT": 22,
    "ELTWISE": 25,
    "MEMORY_DATA": 29,
    "ARGMAX": 30,
    "SILENCE": 36,
}


def _field(name: str, number: int, kind: int, label: int, type_name: str = "", packed=False):
    field = _F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    if packed:
        field.options.packed = True
    return field


def _message(name: str, *fields: _F) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    message.field.extend(fields)
    return message


_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_STR, _I64, _I32 = _F.TYPE_STRING, _F.TYPE_INT64, _F.TYPE_INT32
_FLT, _DBL, _MSG = _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_MESSAGE

_FILE = descriptor_pb2.FileDescriptorProto(
    name="deeplab_caffe.proto", package=_PACKAGE, syntax="proto2"
)
_FILE.message_type.extend(
    [
        _message("BlobShape", _field("dim", 1, _I64, _REP, packed=True)),
        _message(
            "BlobProto",
            _field("num", 1, _I64, _OPT),
            _field("channels", 2, _I64, _OPT),
            _field("height", 3, _I64, _OPT),
            _field("width", 4, _I64, _OPT),
            _field("data", 5, _FLT, _REP, packed=True),
            _field("diff", 6, _FLT, _REP, packed=True),
            _field("shape", 7, _MSG, _OPT, "BlobShape"),
            _field("double_data", 8, _DBL, _REP, packed=True),
            _field("double_diff", 9, _DBL, _REP, packed=True),
        ),
        _message(
            "LayerParameter",
            _field("name", 1, _STR, _OPT),
            _field("type", 2, _STR, _OPT),
            _field("bottom", 3, _STR, _REP),
            _field("top", 4, _STR, _REP),
            _field("blobs", 7, _MSG, _REP, "BlobProto"),
        ),
        _message(
            "V1LayerParameter",
            _field("bottom", 2, _STR, _REP),
            _field("top", 3, _STR, _REP),
            _field("name", 4, _STR, _OPT),
            _field("type", 5, _I32, _OPT),
            _field("blobs", 6, _MSG, _REP, "BlobProto"),
        ),
        _message(
            "NetParameter",
            _field("name", 1, _STR, _OPT),
            _field("layers", 2, _MSG, _REP, "V1LayerParameter"),
            _field("layer", 100, _MSG, _REP, "LayerParameter"),
        ),
    ]
)

# A private pool keeps these names out of the default pool, where a real caffe_pb2 may live.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_FILE)


def _cls(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


BlobShape = _cls("BlobShape")
BlobProto = _cls("BlobProto")
LayerParameter = _cls("LayerParameter")
V1LayerParameter = _cls("V1LayerParameter")
NetParameter = _cls("NetParameter")
