"""Read a `.caffemodel` into named layers holding numpy blobs, in either layer format."""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.weights.caffe.caffe_pb import V1_TYPES, NetParameter

_V1_NAMES = {number: name for name, number in V1_TYPES.items()}
# V1 enum names -> the new format's type strings, so that later steps see one vocabulary.
_V1_AS_NEW = {"CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct"}


@dataclass
class Layer:
    name: str
    type: str  # "Convolution", "BatchNorm", "Scale", "InnerProduct", ... (new-format spelling)
    blobs: list[np.ndarray]


def blob_array(blob, where: str) -> np.ndarray:
    """A BlobProto as an array of its shape: `shape.dim`, else the legacy num/channels/h/w."""
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = blob.double_data if len(blob.double_data) else blob.data
    data = np.asarray(values, dtype=np.float64 if len(blob.double_data) else np.float32)
    # math.prod: exact Python integers (np.prod wraps around on a forged shape and could match)
    if any(d < 0 for d in shape) or data.size != math.prod(shape):
        raise UserError(
            f"{where}: blob of shape {shape} holds {data.size} values: the file is corrupt or "
            "not a Caffe model"
        )
    return data.reshape(shape)


def _v1_type(number: int) -> str:
    name = _V1_NAMES.get(number, str(number))
    return _V1_AS_NEW.get(name, name)


def _looks_like_prototxt(data: bytes) -> bool:
    """Protobuf text format, as Caffe's .prototxt / solver files are written."""
    head = data[:4096].decode("utf-8", errors="replace")
    return "\ufffd" not in head and any(
        word in head for word in ("layer {", "layers {", "name:", "input:", "base_lr:")
    )


def read_caffemodel(path: str | Path) -> list[Layer]:
    """The layers of `path` in file order (those without weights too: their names tell MSC).

    Raises UserError for a file that does not parse (truncated, not a caffemodel) or holds no
    layer with weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; give the path of a .caffemodel")
    net, data = NetParameter(), path.read_bytes()
    try:
        net.ParseFromString(data)
    except DecodeError as err:
        if _looks_like_prototxt(data):
            raise UserError(
                f"{path} is a text network definition (.prototxt), which holds no weights: give "
                "the binary .caffemodel that was released beside it"
            ) from err
        raise UserError(
            f"{path} is not a readable .caffemodel ({err}): the file is truncated or not a Caffe "
            "NetParameter; download it again"
        ) from err
    layers = [Layer(lay.name, lay.type, list(lay.blobs)) for lay in net.layer]
    layers += [Layer(lay.name, _v1_type(lay.type), list(lay.blobs)) for lay in net.layers]
    if not any(lay.blobs for lay in layers):
        raise UserError(
            f"{path} holds no layer with weights: it is not a trained .caffemodel (a .prototxt, "
            "solverstate or another file?)"
        )
    for lay in layers:
        lay.blobs = [blob_array(b, f"{path}: layer {lay.name}") for b in lay.blobs]
    return layers
