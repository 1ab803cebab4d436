"""Fully connected CRF post-processing (paper.md §5, design.md I5): pydensecrf and its torch
port."""

from deeplab.crf.crf_rnn import CRFRNN
from deeplab.crf.dense_crf import DenseCRF
from deeplab.crf.parallel import refine_many
from deeplab.crf.probs_io import load_probabilities, probability_files, save_probabilities

__all__ = [
    "CRFRNN",
    "DenseCRF",
    "load_probabilities",
    "probability_files",
    "refine_many",
    "save_probabilities",
]
