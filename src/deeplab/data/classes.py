"""Class names per data set and the VOC colour palette that every mask PNG and figure uses."""

from functools import cache

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

# PASCAL-Context's 59 most frequent classes, in the order of their ids in the official 459-class
# labels.txt (alphabetical), after background. `prepare context` maps them to 1..59.
CONTEXT_CLASSES = [
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water",
    "window", "wood",
]  # fmt: skip

PERSON_PART_CLASSES = [
    "background", "head", "torso", "upper_arms", "lower_arms", "upper_legs", "lower_legs",
]  # fmt: skip


@cache
def cityscapes_classes() -> list[str]:
    """The 19 evaluated Cityscapes classes in trainId order, from the official label table
    (cityscapesscripts, imported only where Cityscapes is used)."""
    from cityscapesscripts.helpers.labels import labels

    evaluated = [lab for lab in labels if lab.trainId not in (-1, IGNORE_INDEX)]
    return [lab.name for lab in sorted(evaluated, key=lambda lab: lab.trainId)]


SYNTHETIC_CLASSES = ["background", "circle", "square", "triangle", "cross", "ring", "diamond"]


def voc_palette() -> np.ndarray:
    """The (256, 3) uint8 PASCAL VOC colour map (bit-interleaved label index; 255 is cream)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (label & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[index] = (r, g, b)
    return palette
