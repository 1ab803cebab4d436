"""Data sets behind DESIGN I4: LightningDataModules over one shared VOC-layout reader."""

from deeplab.data.datamodule import (
    CityscapesDataModule,
    ContextDataModule,
    PersonPartDataModule,
    SegmentationDataModule,
    SyntheticDataModule,
    VOCDataModule,
)
from deeplab.data.folder import FolderDataModule  # also registers data.num_classes' resolver

__all__ = [
    "CityscapesDataModule",
    "ContextDataModule",
    "FolderDataModule",
    "PersonPartDataModule",
    "SegmentationDataModule",
    "SyntheticDataModule",
    "VOCDataModule",
]
