"""Data sets behind design.md I4: LightningDataModules (`datamodule`) over one shared VOC-layout
reader (`dataset`), the augmentation (`transforms`) and the normalization pair (`normalization`).
Only the class-list reader is imported here (it registers the resolver that gives
`data=folder` its class count): inference code needs no augmentation library."""

import deeplab.data.class_list  # noqa: F401
