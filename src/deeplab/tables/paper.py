"""The paper's Tables 1-4 as data: rows, descriptive columns and reported numbers.

Numbers come from docs/paper.md (source tags in the comments); the row choices are the config
options that run each row (conf/model, conf/table2_row, conf/table4_row).
"""

from deeplab.models.receptive_field import paper_fov
from deeplab.tables.spec import Measure, Row, TableSpec

MIOU = Measure("mIoU", "val/mIoU", plot=True)
MIOU_CRF = Measure("mIoU+CRF", "val_crf/mIoU", plot=True)
PARAMS = Measure("Params (M)", "params", digits=1, scale=1e-6)
SPEED = Measure("Speed (img/s)", "train_img_per_s")


def _table1_row(choice: str, kernel: int, rate: int, params: float, speed: float, miou, crf):
    return Row(
        choice,
        {"Kernel": f"{kernel}x{kernel}", "Rate": str(rate), "FOV": str(paper_fov(kernel, rate))},
        {PARAMS.name: params, SPEED.name: speed, MIOU.name: miou, MIOU_CRF.name: crf},
    )


# paper.md §1 Table 1 [P]: fc6 kernel and rate on VGG-16, VOC12 val, before / after CRF.
TABLE1 = TableSpec(
    name="table1",
    title="Table 1: effect of the fc6 kernel and atrous rate (VGG-16, VOC 2012 val)",
    source="paper.md §1 Table 1 [P]",
    row_group="model",
    columns=("Kernel", "Rate", "FOV"),
    measures=(PARAMS, SPEED, MIOU, MIOU_CRF),
    rows=(
        _table1_row("fov_7x7_r4", 7, 4, 134.3, 1.44, 64.38, 67.64),
        _table1_row("fov_4x4_r4", 4, 4, 65.1, 2.90, 59.80, 63.74),
        _table1_row("fov_4x4_r8", 4, 8, 65.1, 2.90, 63.41, 67.14),
        _table1_row("largefov", 3, 12, 20.5, 4.84, 62.25, 67.64),
    ),
)


def _table2_row(choice: str, policy: str, batch: int, iters: str, miou: float) -> Row:
    return Row(choice, {"Policy": policy, "Batch": str(batch), "Iterations": iters}, {"mIoU": miou})


# paper.md §2 Table 2 [P]: DeepLab-LargeFOV learning-rate policy, batch and iterations, before CRF.
TABLE2 = TableSpec(
    name="table2",
    title="Table 2: learning-rate policy, batch size and iterations (LargeFOV, VOC 2012 val)",
    source="paper.md §2 Table 2 [P]",
    row_group="table2_row",
    columns=("Policy", "Batch", "Iterations"),
    measures=(MIOU,),
    rows=(
        _table2_row("step_b30_6k", "step", 30, "6K", 62.25),
        _table2_row("poly_b30_6k", "poly", 30, "6K", 63.42),
        _table2_row("poly_b30_10k", "poly", 30, "10K", 64.90),
        _table2_row("poly_b10_10k", "poly", 10, "10K", 64.71),
        _table2_row("poly_b10_20k", "poly", 10, "20K", 65.88),
    ),
)

# paper.md §3 Table 3 [P]: ASPP on VGG-16, VOC12 val, before / after CRF.
TABLE3 = TableSpec(
    name="table3",
    title="Table 3: atrous spatial pyramid pooling on VGG-16 (VOC 2012 val)",
    source="paper.md §3 Table 3 [P]",
    row_group="model",
    columns=("Model",),
    measures=(MIOU, MIOU_CRF),
    rows=(
        Row("largefov", {"Model": "LargeFOV"}, {"mIoU": 65.76, "mIoU+CRF": 69.84}),
        Row("aspp_s", {"Model": "ASPP-S"}, {"mIoU": 66.98, "mIoU+CRF": 69.73}),
        Row("aspp_l", {"Model": "ASPP-L"}, {"mIoU": 68.96, "mIoU+CRF": 71.57}),
    ),
)

_TABLE4_FLAGS = ("MSC", "COCO", "Aug", "LargeFOV", "ASPP", "CRF")


def _table4_row(choice: str, flags: str, miou: float, crf: bool = False) -> Row:
    """`flags` names the checked columns, space-separated (e.g. "MSC COCO")."""
    marks = {name: ("✓" if name in flags.split() else "") for name in _TABLE4_FLAGS}
    return Row(choice, marks, {"mIoU": miou}, {"mIoU": "val_crf/mIoU"} if crf else {})


# paper.md §4 Table 4 [P]: ResNet-101 ablation, VOC12 val. The CRF row is the ASPP job's CRF result.
TABLE4 = TableSpec(
    name="table4",
    title="Table 4: DeepLab ResNet-101 ablation (VOC 2012 val)",
    source="paper.md §4 Table 4 [P]",
    row_group="table4_row",
    columns=_TABLE4_FLAGS,
    measures=(MIOU,),
    rows=(
        _table4_row("base", "", 68.72),
        _table4_row("msc", "MSC", 71.27),
        _table4_row("msc_coco", "MSC COCO", 73.28),
        _table4_row("msc_coco_aug", "MSC COCO Aug", 74.87),
        _table4_row("msc_coco_aug_largefov", "MSC COCO Aug LargeFOV", 75.54),
        _table4_row("msc_coco_aug_aspp", "MSC COCO Aug ASPP", 76.35),
        _table4_row("msc_coco_aug_aspp", "MSC COCO Aug ASPP CRF", 77.69, crf=True),
    ),
)


def _compare_row(choice: str, model: str, backbone: str, split: str, paper: dict) -> Row:
    return Row(choice, {"Model": model, "Backbone": backbone, "Paper's split": split}, paper)


# conf/experiment/compare.yaml: DeepLab against FCN-8s and RefineNet on one data set and schedule.
# The papers' numbers come from different splits and recipes: a reference, not a target.
COMPARE = TableSpec(
    name="compare",
    title="DeepLab v2 against FCN-8s and RefineNet (same data, schedule and optimizer)",
    source="paper.md §1, §3 [P]; §9 [FCN-P] Table 2; §10 [RN-PT] single-scale val",
    row_group="model",
    columns=("Model", "Backbone", "Paper's split"),
    measures=(PARAMS, SPEED, MIOU, MIOU_CRF),
    rows=(
        _compare_row(
            "largefov",
            "DeepLab-LargeFOV",
            "VGG-16",
            "VOC12 val",
            {PARAMS.name: 20.5, MIOU.name: 65.76, MIOU_CRF.name: 69.84},
        ),
        _compare_row(
            "aspp_l",
            "DeepLab-ASPP-L",
            "VGG-16",
            "VOC12 val",
            {MIOU.name: 68.96, MIOU_CRF.name: 71.57},
        ),
        _compare_row("fcn8s", "FCN-8s", "VGG-16", "VOC11 seg11valid", {MIOU.name: 62.7}),
        _compare_row("refinenet", "RefineNet", "ResNet-101", "VOC12 val", {MIOU.name: 80.5}),
    ),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in (TABLE1, TABLE2, TABLE3, TABLE4, COMPARE)
}
