"""describe.py: the paper's Table 1 columns for any network, and its command line."""

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from deeplab.models import assemble_deeplab
from deeplab.models.table1_columns import format_table, table1_columns

REPO = Path(__file__).resolve().parents[1]


def meta_deeplab(**kwargs) -> nn.Module:
    with torch.device("meta"):
        return assemble_deeplab(21, {"name": "vgg16"}, **kwargs)


def test_table1_row_4_largefov():
    row = table1_columns(meta_deeplab())
    columns = ("kernel", "rate", "FOV", "params", "logits")
    assert [row[c] for c in columns] == ["3x3", "12", "224", "20.51M", "41x41"]
    assert float(row["GFLOPs"]) > 0


def test_fov_formula_for_4x4_and_aspp_and_msc_costs_more():
    assert table1_columns(meta_deeplab(kernel_size=4, rates=(4,), head_width=4096))["FOV"] == "128"
    aspp = table1_columns(meta_deeplab(rates=(6, 12, 18, 24)))
    assert aspp["rate"] == "6/12/18/24" and aspp["FOV"] == "128/224/320/416"
    msc = table1_columns(meta_deeplab(msc=True))
    assert msc["logits"] == "41x41"
    assert float(msc["GFLOPs"]) > 1.5 * float(table1_columns(meta_deeplab())["GFLOPs"])


def test_non_deeplab_network_shows_dashes():
    row = table1_columns(nn.Sequential(nn.Conv2d(3, 21, 3, stride=8, padding=1)), input_size=64)
    assert (row["kernel"], row["rate"], row["FOV"], row["logits"]) == ("-", "-", "-", "8x8")
    assert "| - | - | - |" in format_table([row])


def test_command_line_prints_the_row():
    out = subprocess.run(
        [sys.executable, "src/describe.py", "model=fov_7x7_r4", "backbone=vgg16"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| fov_7x7_r4 | vgg16 | 7x7 | 4 | 224 | 134.35M | 41x41 |" in out
