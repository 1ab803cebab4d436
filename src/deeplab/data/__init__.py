"""Data sets behind design.md I4: LightningDataModules over one shared VOC-layout reader."""

from deeplab.data.datamodule import (
    CityscapesDataModule,
    ContextDataModule,
    PersonPartDataModule,
    SegmentationDataModule,
    SyntheticDataModule,
    VOCDataModule,
)

__all__ = [
    "CityscapesDataModule",
    "ContextDataModule",
    "PersonPartDataModule",
    "SegmentationDataModule",
    "SyntheticDataModule",
    "VOCDataModule",
]
