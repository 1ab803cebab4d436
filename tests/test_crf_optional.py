"""pydensecrf is optional: `import deeplab.crf` and the torch backend work where it is not
installed, and asking for the pydensecrf backend there gives one message with the install
command. The module is hidden in a fresh interpreter (a None entry in sys.modules makes its
import fail as if it were absent)."""

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["pydensecrf"] = None
sys.modules["pydensecrf.densecrf"] = None
sys.modules["pydensecrf.utils"] = None
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


def test_torch_backend_runs_and_pydensecrf_is_refused_by_name_without_the_package():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "REFUSED: crf.backend=pydensecrf needs the pydensecrf package" in run.stdout
    assert "pip install pydensecrf2" in run.stdout
