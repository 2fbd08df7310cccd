"""Start Numba without importing SciPy: the one-time cost of the first kernel load.

The first compile or cache load in a process makes Numba load its implementation registries;
one of them (``numba.np.arraymath``) probes for a BLAS at import by importing
``scipy.linalg.cython_blas``, which imports all of ``scipy.linalg`` (and NumPy's f2py
through SciPy's array-API layer): measured 0.4-0.5 s of CPU, about half of a warm start
(cache filled, first query of a new process). vdb's kernels use no BLAS.

``skip_blas_probe()`` imports ``numba.np.arraymath`` early with that one module marked
missing, so the probe fails at once. Its only effect is the probe's answer: Numba's
``np.correlate``/``np.convolve`` then use their own loop rather than BLAS (same results);
``np.dot`` and ``np.linalg`` still import SciPy when a kernel that uses them is compiled. When
``scipy.linalg`` is already imported the probe is free and nothing is changed.
"""

from __future__ import annotations

import sys

_PROBE = "scipy.linalg.cython_blas"


def skip_blas_probe() -> None:
    """Import ``numba.np.arraymath`` with its BLAS probe failing fast (see the module doc)."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    sys.modules[_PROBE] = None  # ``import`` of a name mapped to None fails without loading
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if _PROBE in sys.modules and sys.modules[_PROBE] is None:
            del sys.modules[_PROBE]
