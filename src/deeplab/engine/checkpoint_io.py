"""Checkpoints written beside their final name, then renamed over it.

Lightning's `TorchCheckpointIO` stages the bytes through fsspec's transaction, which writes a
temporary file in `$TMPDIR` and moves it to the run directory. When the two are on different file
systems the move is a copy over the old file: a job killed during it leaves a truncated or 0-byte
`last.ckpt` (the state to resume from is lost) and the whole file in `/tmp`. Writing the temporary
file in the checkpoint's own folder makes the final step a rename, which the file system does
whole or not at all.
"""

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from deeplab.runtime.atomic import written_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints: a hidden temporary file in the target folder, renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as tmp:
            torch.save(checkpoint, tmp)
