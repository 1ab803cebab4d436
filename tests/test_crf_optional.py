"""pydensecrf is optional: `import deeplab.crf` and the torch backend work where it is not
installed, and asking for the pydensecrf backend there gives one message with the install
command. The module is hidden in a fresh interpreter (a None entry in sys.modules makes its
import fail as if it were absent)."""

import json
import subprocess
import sys
from pathlib import Path

from test_crf_search import probs_dir  # noqa: F401  (fixture: three small saved probability maps)

REPO = Path(__file__).resolve().parents[1]
HIDE_PYDENSECRF = """
import sys
sys.modules["pydensecrf"] = None
sys.modules["pydensecrf.densecrf"] = None
sys.modules["pydensecrf.utils"] = None
"""
SCRIPT = (
    HIDE_PYDENSECRF
    + """
import numpy as np
import deeplab.crf
from deeplab.crf import DenseCRF
from deeplab.crf.dense_crf import default_backend
from deeplab.runtime.errors import UserError

image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
probs = np.full((3, 12, 10), 1 / 3, dtype=np.float32)
out = DenseCRF(iterations=2, backend="torch")(image, probs)
assert out.shape == probs.shape and np.allclose(out.sum(0), 1, atol=1e-5)
assert default_backend() == "torch"
try:
    DenseCRF(backend="pydensecrf")
except UserError as err:
    print("REFUSED:", err)
"""
)


def test_torch_backend_runs_and_pydensecrf_is_refused_by_name_without_the_package():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "REFUSED: crf.backend=pydensecrf needs the pydensecrf package" in run.stdout
    assert "pip install pydensecrf2" in run.stdout


def test_a_shipped_crf_config_runs_without_pydensecrf(probs_dir, tmp_path):  # noqa: F811
    """`crf_eval.py crf=deeplab_vgg16` (backend: auto, as every shipped CRF) goes through the CRF
    on the torch backend, and says so, where pydensecrf cannot be imported."""
    run_app = (
        HIDE_PYDENSECRF
        + "import runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    command = [sys.executable, "-c", run_app, "src/crf_eval.py", f"probs_dir={probs_dir}",
               "crf=deeplab_vgg16", "crf.iterations=2", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["crf"]["backend"] == "torch" and metrics["num_images"] == 3
    said = "crf.backend=auto runs the torch backend: pydensecrf is not installed"
    assert (run.stdout + run.stderr).count(said) == 1
