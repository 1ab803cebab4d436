"""Caffe blobs -> this project's state-dict tensors (BatchNorm, Scale, BGR flip, FC as conv)."""

import numpy as np
import torch
from torch import Tensor

from deeplab.weights.caffe.caffemodel import Layer
from deeplab.weights.caffe.recognise import Recognised

FIRST_CONVS = ("conv1", "conv1_1")  # the layers that read the BGR image


def batchnorm(layer: Layer) -> dict[str, Tensor]:
    """Caffe BatchNorm blobs (mean * f, var * f, f) as running statistics.

    Caffe scales by 1 / f, or by 0 when f == 0 (batch_norm_layer.cpp); eps is 1e-5 on both sides.
    """
    mean, var, factor = layer.blobs
    f = float(factor.reshape(-1)[0])
    scale = 0.0 if f == 0 else 1.0 / f
    return {
        "running_mean": torch.from_numpy(mean.reshape(-1).astype(np.float64) * scale),
        "running_var": torch.from_numpy(var.reshape(-1).astype(np.float64) * scale),
        "num_batches_tracked": torch.tensor(0),
    }


def scale(layer: Layer) -> dict[str, Tensor]:
    """Caffe Scale (gamma[, beta]) as the BatchNorm's affine weight and bias."""
    out = {"weight": torch.from_numpy(layer.blobs[0].reshape(-1))}
    if len(layer.blobs) > 1:
        out["bias"] = torch.from_numpy(layer.blobs[1].reshape(-1))
    return out


def conv(layer: Layer) -> dict[str, Tensor]:
    """Convolution / InnerProduct weights as a conv kernel (a FC is a 1x1 conv), bias flat."""
    weight = layer.blobs[0]
    if layer.type == "InnerProduct" or weight.ndim != 4:
        weight = weight.reshape(-1, weight.shape[-1])[:, :, None, None]
    if layer.name in FIRST_CONVS:
        weight = weight[:, ::-1]  # Caffe's first conv reads BGR; ours read RGB
    out = {"weight": torch.from_numpy(np.ascontiguousarray(weight))}
    if len(layer.blobs) > 1:
        out["bias"] = torch.from_numpy(layer.blobs[1].reshape(-1))
    return out


def to_state_dict(layers: list[Layer], rec: Recognised) -> dict[str, Tensor]:
    """Our state dict from the layers `rec` placed, in float32, keys with `rec.prefix`."""
    state = {}
    for layer in layers:
        place = rec.places.get(layer.name)
        if place is None:
            continue
        if layer.type == "BatchNorm":  # by type: names vary between releases
            tensors = batchnorm(layer)
        elif layer.type == "Scale":
            tensors = scale(layer)
        else:
            tensors = conv(layer)
        for key, value in tensors.items():
            value = value.float() if value.is_floating_point() else value
            state[f"{rec.prefix}{place}.{key}"] = value
    return state
