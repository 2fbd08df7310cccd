"""The kernels' start-up contract: warm() loads only the kernel groups an index uses, Numba
starts without SciPy, and the one-query lean path answers exactly as the batch path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO
from vdb.index import HNSW

_PROBE = r"""
import json, sys
import numpy as np
from vdb.index import HNSW, kernels, qkernels
h = HNSW(16, "cosine", seed=0, quantization=None if sys.argv[1] == "none" else sys.argv[1])
h.warm(writes=True, background=False)
loaded = {
    name: bool(getattr(mod, name).signatures)
    for mod, names in (
        (kernels, ["search_batch", "build_select", "hand_over", "unlink"]),
        (qkernels, ["search_batch_q", "build_select_q"]),
    )
    for name in names
}
scipy_loaded = "scipy.linalg" in sys.modules
import scipy.linalg  # the probe's marker is gone: SciPy still imports
print(json.dumps({"loaded": loaded, "scipy_at_warm": scipy_loaded}))
"""


def _probe(quantization: str, script: str = _PROBE) -> dict:
    """Run ``script`` in a new process (its kernels start unloaded); its last line is JSON."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", script, quantization],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_loads_only_the_float_kernels_of_a_float_index():
    got = _probe("none")
    assert got["loaded"] == {
        "search_batch": True,
        "build_select": True,
        "hand_over": False,  # relink group: loaded on first replace
        "unlink": False,
        "search_batch_q": False,
        "build_select_q": False,
    }
    assert got["scipy_at_warm"] is False


def test_warm_loads_only_the_int8_walk_of_an_int8_index():
    got = _probe("int8")
    loaded = got["loaded"]
    assert loaded["search_batch_q"] and loaded["build_select_q"]
    assert not loaded["search_batch"] and not loaded["build_select"]
    assert not loaded["hand_over"]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_single_query_lean_path_matches_batch(metric):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 24)).astype(np.float32)
    h = HNSW(24, metric, seed=1, ef=24)
    h.add(x)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    slots, scores = h.search(q, 7)
    for i in range(q.shape[0]):
        s1, d1 = h.search(q[i : i + 1], 7)  # [1, dim] float32: the lean path
        assert s1.shape == (1, 7) and s1.dtype == np.int32 and d1.dtype == np.float32
        np.testing.assert_array_equal(s1[0], slots[i])
        np.testing.assert_allclose(d1[0], scores[i], rtol=1e-6)
    h.delete(slots[0, :3].tolist())
    s1, _ = h.search(q[:1], 7)
    assert not set(s1[0].tolist()) & set(slots[0, :3].tolist())


def test_single_query_lean_path_rejects_bad_values():
    h = HNSW(4, "cosine", seed=0)
    h.add(np.eye(4, dtype=np.float32) + 0.1)
    for bad in (np.nan, np.inf):
        q = np.array([[1.0, bad, 0.0, 0.0]], np.float32)
        with pytest.raises(ValueError, match="NaN or inf"):
            h.search(q, 2)
    with pytest.raises(ValueError, match="zero vector"):
        h.search(np.zeros((1, 4), np.float32), 2)
    with pytest.raises(ValueError, match="ef must be >= 1"):
        h.search(np.ones((1, 4), np.float32), 2, ef=0)


_BACKGROUND = r"""
import json, sys
import numpy as np
from vdb.index import HNSW, hnsw
h = HNSW(16, "l2", seed=0, quantization=None if sys.argv[1] == "none" else sys.argv[1])
h.warm()  # search kernels now, the build group in a daemon thread
searchable = h.search(np.ones((1, 16), np.float32), 3)[0].tolist()
x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
slots = h.add(x)  # at once: waits for the background load, or loads itself
found = h.search(x[:20], 1)[0][:, 0]
print(json.dumps({"empty": searchable, "found_self": int((found == slots[:20]).sum()),
                  "build_done": hnsw._warm_done[h._build_group()]}))
"""


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_add_right_after_a_background_warm(quantization):
    got = _probe(quantization, _BACKGROUND)
    assert got["empty"] == [[-1, -1, -1]]
    assert got["found_self"] == 20
    assert got["build_done"] is True


_SIGNATURES = r"""
import json
import numba
from vdb.index import flat, hnsw, kernels, qkernels
hnsw.warm_all()
flat.warm()
many = {
    f"{mod.__name__}.{name}": [str(s) for s in obj.signatures]
    for mod in (kernels, qkernels, flat)
    for name, obj in vars(mod).items()
    if isinstance(obj, numba.core.registry.CPUDispatcher) and len(obj.signatures) > 1
}
print(json.dumps({"many": many, "compiled": sum(
    bool(obj.signatures) for mod in (kernels, qkernels)
    for obj in vars(mod).values() if isinstance(obj, numba.core.registry.CPUDispatcher))}))
"""


def test_every_kernel_has_one_signature():
    """One compiled copy per kernel: a second specialisation costs compile time, and two
    processes writing two signatures of one function to Numba's cache at once (the cold start
    compiles the build group in a child process) could mix up their data files."""
    got = _probe("none", _SIGNATURES)
    assert got["many"] == {}
    assert got["compiled"] >= 10


def test_a_cached_start_starts_no_compile_process():
    """With the cache filled (the test session fills it), warm() loads in this process: the
    child compile is for a cold cache only."""
    got = _probe("int8", _CHILDREN)
    assert got == {"children": 0, "cached": True}


_CHILDREN = r"""
import json
from vdb.index import HNSW, hnsw
h = HNSW(16, "cosine", seed=0, quantization="int8")
h.warm(writes=True, background=False)
print(json.dumps({"children": hnsw._children_started[0], "cached": hnsw._cached("qbuild")}))
"""
