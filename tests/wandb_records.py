"""Read W&B's offline run files: the records of a `run-<id>.wandb` file, as W&B's own protobuf
messages (`wandb.proto.wandb_internal_pb2.Record`).

wandb >= 0.19 writes them from its Go core and no longer ships a Python reader, nor a summary or
config file for an offline run, so this decodes the file's framing: a 7-byte header (`:W&B`, magic
0xBEE1, version), then LevelDB's log format: 32 KiB blocks of chunks, each a 7-byte header
(CRC-32 of type byte and data, little-endian length, type: 1 full, 2 first, 3 middle, 4 last)
and its data; a block's tail shorter than a header is zero padding.
"""

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # padding at a block's end
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # a zero-filled rest of the block
            pos += left
            continue
        body = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad chunk at {pos}"
        pos += HEADER + length
        chunks.append(body)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def _value(items, into: dict) -> None:
    """Summary / config / history items into a dict: `key`, or `nested_key` joined with '.'."""
    for item in items:
        key = item.key or ".".join(item.nested_key)
        into[key] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """What an offline run directory (`.../wandb/offline-run-<time>-<id>/`) holds."""

    path: Path
    run: pb.RunRecord
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: Path) -> "OfflineRun":
        (log,) = Path(run_dir).glob("run-*.wandb")
        out = None
        for record in records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out = cls(Path(run_dir), record.run)
                _value(record.run.config.update, out.config)
            elif kind == "summary":
                _value(record.summary.update, out.summary)
            elif kind == "config":
                _value(record.config.update, out.config)
            elif kind == "history":
                row = {}
                _value(record.history.item, row)
                out.history.append(row)
        assert out is not None, f"{log} holds no run record"
        return out

    def table(self, key: str) -> dict:
        """A logged wandb.Table ({"columns": [...], "data": [[...], ...]}) from the run's files."""
        path = self.summary.get(f"{key}.path")
        assert path, f"no table {key!r} in the summary of {self.path}: {sorted(self.summary)}"
        return json.loads((self.path / "files" / path).read_text())


def offline_runs(folder: Path) -> list[OfflineRun]:
    """Every offline run under `folder` (e.g. a whole multirun), oldest first."""
    return [OfflineRun.read(p) for p in sorted(Path(folder).rglob("offline-run-*")) if p.is_dir()]
