"""The notebooks run top to bottom on small data, and are stored without outputs.

Each notebook has one code cell tagged `parameters`; `run_notebook` inserts a cell right after
it that overrides those names (as papermill does), then executes everything with nbclient in the
`python3` kernel that `make install` registers inside `.venv`, one torch thread per kernel.
"""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "python3"


def run_notebook(path: Path, timeout: int = 240, **params) -> nbformat.NotebookNode:
    """Execute `path` with `params` injected after its `parameters` cell; return the result."""
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    injected = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, cell)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    # One thread per kernel: the suite runs notebooks side by side on a small shared CPU.
    return client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})


def image_count(nb: nbformat.NotebookNode) -> int:
    """Inline pictures shown (0 when something switched matplotlib to a file-only backend)."""
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def outputs_text(nb: nbformat.NotebookNode) -> str:
    """All text outputs of an executed notebook (stdout and text/plain, text/markdown)."""
    parts = []
    for c in nb.cells:
        for out in c.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(parts)


def test_committed_notebooks_have_no_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert paths, "no notebooks in notebooks/"
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                ran = c.outputs or c.execution_count is not None or "execution" in c.metadata
                assert not ran, f"{path.name} cell {i} has outputs: clear them before committing"


def test_docs_figures_exist():
    page = (REPO / "docs" / "notebooks.md").read_text()
    figures = re.findall(r"\(\.\./notebooks/figures/([\w.-]+\.png)\)", page)
    assert figures, "docs/notebooks.md shows no figure"
    for name in figures:
        assert (NOTEBOOKS / "figures" / name).stat().st_size > 1000, name


def test_kernel_is_the_venv_python():
    """nbclient must run the notebooks with this interpreter, not some other Jupyter's python."""
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except Exception as err:  # NoSuchKernel
        raise AssertionError(f"no '{KERNEL}' kernel: run `make install` ({err})") from err
    # Compare the bin folders without resolving symlinks: a venv's python links to its base.
    here = Path(os.path.abspath(sys.executable)).parent
    assert Path(os.path.abspath(spec.argv[0])).parent == here, (
        f"kernel '{KERNEL}' runs {spec.argv[0]}, not {sys.executable}: run `make install`"
    )


@pytest.mark.slow
def test_atrous_fov(tmp_path):
    nb = run_notebook(NOTEBOOKS / "01_atrous_fov.ipynb", FIGURES=str(tmp_path))
    text = outputs_text(nb)
    assert "receptive field of pool5 alone: 227 px at stride 8" in text
    for name, fov, field in (("fov_7x7_r4", 224, 419), ("fov_4x4_r4", 128, 323)):
        assert f"| {name} | {fov} | {field} | {field} | 195 |" in text
    for figure in ("atrous_sampling.png", "receptive_fields.png"):
        assert (tmp_path / figure).stat().st_size > 1000
    assert image_count(nb) == 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Where `data=synthetic` builds itself once for the notebooks of this module."""
    return tmp_path_factory.mktemp("data")


QUICK_CRF = dict(NUM_IMAGES=2, STEPS=(0, 1, 5, 10), XY_STDS=(10.0, 49.0), RGB_STDS=(3.0, 13.0))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["VOC", "synthetic"])
def test_dense_crf(source, data_dir, tmp_path, request):
    if source == "VOC":  # the real images beside the checkout; skipped where they are absent
        where = {"VOC_ROOT": str(request.getfixturevalue("voc_sample_root"))}
    else:
        where = {"DATA_DIR": str(data_dir)}
    nb = run_notebook(NOTEBOOKS / "03_dense_crf.ipynb", FIGURES=str(tmp_path), **where, **QUICK_CRF)
    text = outputs_text(nb)
    assert f"data: {source}" in text
    assert "iterations 10: pixel accuracy" in text  # (the notebook asserts the CRF helps)
    for figure in ("crf_steps.png", "crf_grid.png"):
        assert (tmp_path / figure).stat().st_size > 1000
    assert image_count(nb) == 5


@pytest.mark.slow
def test_aspp_multiscale(data_dir, tmp_path):
    nb = run_notebook(
        NOTEBOOKS / "02_aspp_multiscale.ipynb",
        DATA_DIR=str(data_dir),
        RUN_DIR=str(tmp_path / "runs"),
        FIGURES=str(tmp_path),
        QUICK_STEPS=10,
    )
    for model in ("largefov", "aspp_s", "aspp_l"):
        metrics = json.loads((tmp_path / "runs" / model / "metrics.json").read_text())
        assert 0 <= metrics["val/mIoU"] <= 100
    assert "objects in 50 val images" in outputs_text(nb)
    assert (tmp_path / "aspp_object_sizes.png").stat().st_size > 1000
    assert image_count(nb) == 2


@pytest.mark.slow
def test_sweep_table(data_dir, tmp_path):
    nb = run_notebook(
        NOTEBOOKS / "04_sweep_table.ipynb",
        DATA_DIR=str(data_dir),
        OUT_DIR=str(tmp_path),
        FIGURES=str(tmp_path),
    )
    text = outputs_text(nb)
    for row in ("LargeFOV", "ASPP-S", "ASPP-L"):
        line = next(x for x in text.splitlines() if x.startswith(f"| {row} |"))
        assert line.endswith("| ok |") and "not run" not in line
    (tables,) = (tmp_path / "tables").iterdir()
    assert {p.name for p in tables.iterdir()} == {"table3.md", "table3.csv", "table3.png"}
    assert (tmp_path / "table3_per_class.png").stat().st_size > 1000
    assert image_count(nb) == 3


def test_notebook_parameters_are_injected(tmp_path):
    """The injection mechanism itself: an injected value replaces the tagged default."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("import json; print(json.dumps(X))"),
        ]
    )
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    out = run_notebook(path, X={"a": [1, 2]})
    assert json.loads(out.cells[-1].outputs[0]["text"]) == {"a": [1, 2]}
