"""numba kernels compile and give the same results when no usual cache place is writable (issue 24, 4)."""

import json
import subprocess
import sys

# Run in a fresh interpreter: the package folder's __pycache__ is made unusable the way a read-only
# install is (root ignores file modes, so numba's in-tree locator is told the folder cannot be
# written), and HOME / XDG_CACHE_HOME point below a regular file, where no folder can be created.
SCRIPT = r"""
import json, sys
from numba.core import caching

def read_only(self):
    raise PermissionError(13, "Permission denied", self.get_cache_path())

if sys.argv[1] == "read-only":
    caching.InTreeCacheLocator.ensure_cache_path = read_only
import torch
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import forward_project
from xraysyn.projector.cpu_numba import NumbaBackend  # noqa: F401  (the backend under test)
import numba

volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 1, 4, 5, 6)
geometry = ConeBeamGeometry(sdd=1200, sid=1000, detector_shape=(3, 4), pixel_spacing=4.0)
image = forward_project(volume, torch.eye(4)[None] * 3 + torch.diag(torch.tensor([0, 0, 0, -2.0]))[None],
                        geometry.poses([0.0, 20.0]), geometry, backend="numba")
print(json.dumps({"image": image.flatten().tolist(), "cache_dir": numba.config.CACHE_DIR}))
"""


def _run(tmp_path, mode):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(blocker / "home"), "XDG_CACHE_HOME": str(blocker / "cache"),
           "NUMBA_CACHE_DIR": ""}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_projection_without_a_writable_cache_place_matches(tmp_path):
    fallback = _run(tmp_path, "read-only")
    normal = _run(tmp_path, "writable")
    assert "xraysyn-numba-cache-" in fallback["cache_dir"] and normal["cache_dir"] == ""
    assert fallback["image"] == normal["image"] and max(normal["image"]) > 0
