"""Security and faults (docs/faults.md 'Threat model'): files a user was handed cannot run code,
data cannot write outside its run, stops leave no workers, locks or half files behind."""

import os
import pickle

import numpy as np
import pytest
import torch

from deeplab.crf.probs_io import load_probabilities
from deeplab.runtime.errors import UserError
from deeplab.weights import conventions
from deeplab.weights.checkpoint import check_readable, read_checkpoint
from deeplab.weights.pretrained import read_weights

# --- handed files: read as data, never as code ---------------------------------------------------


class Payload:
    """What an attacker pickles: unpickling it calls os.system, which creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def payload_files(tmp_path):
    """The payload as torch saves a checkpoint (zip) and as a bare pickle (torch's old format)."""
    marker = tmp_path / "code-ran"
    zipped, bare = tmp_path / "evil.ckpt", tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}, zipped)
    bare.write_bytes(pickle.dumps({"w": Payload(marker)}, protocol=2))
    return marker, [zipped, bare]


READERS = [
    ("ckpt_path", read_checkpoint),
    ("resume", check_readable),
    ("pretrained", read_weights),
    ("convention", conventions.of_file),
]


@pytest.mark.parametrize("reader", [r for _, r in READERS], ids=[n for n, _ in READERS])
def test_a_pickle_payload_is_refused_without_running(tmp_path, reader):
    marker, files = payload_files(tmp_path)
    for path in files:
        if reader is check_readable and path.suffix == ".pth":
            continue  # not a zip: refused before unpickling, as truncated
        with pytest.raises(UserError) as refused:
            reader(path)
        message = str(refused.value)
        assert str(path) in message and "refused" in message and "posix.system" in message
        assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_saved_probabilities_with_objects_are_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "x.npz"
    np.savez(path, image=np.array([Payload(marker)], dtype=object), probs=0, mask=0)
    with pytest.raises(UserError, match=f"{path}.*cannot be read.*allow_pickle"):
        load_probabilities(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content", [b"", b"not weights at all\n", b"PK\x03\x04" + b"\0" * 40], ids=str
)
def test_a_pretrained_file_that_is_not_weights_gets_one_message(tmp_path, content):
    """conventions.check_run reads it first (train.py), then the network's builder."""
    path = tmp_path / "vgg16.pth"
    path.write_bytes(content)
    for reader in (conventions.of_file, read_weights):
        with pytest.raises(UserError) as refused:
            reader(path)
        message = str(refused.value)
        assert message.startswith(f"model.backbone.pretrained weights file {path}"), message
        assert "model.backbone.pretrained=null" in message


def test_a_truncated_converted_file_gets_one_message(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"overrides": {}, "state_dict": {"w": torch.zeros(1000)}}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-300])
    with pytest.raises(UserError, match=f"{cut} cannot be read"):
        read_weights(cut)
