"""Start Numba cheaply: without importing SciPy, and without its compiler's registries when
every kernel comes from the cache. The one-time cost of the first kernel load.

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

Loading a kernel from Numba's on-disk cache (``Cache.load_overload``) first calls the target
context's ``refresh()``, which imports and installs every typing and lowering registry of the
compiler (sets, dicts, lists, random generators, polynomials, jitclass, cffi, ...): measured
0.15-0.2 s of CPU, about half of an int8 index's ``warm()`` from a filled cache. A loaded kernel
is machine code and needs none of them, only Numba's runtime (NRT) symbols, which that refresh
also installs. ``lazy_registries()`` makes the cache load initialise the runtime alone; the
registries load when something is compiled (Numba's compiler refreshes the contexts itself).
It changes nothing when the installed Numba's ``load_overload`` is not the one it expects.

``start()`` applies both, the BLAS probe lazily: ``numba.np.arraymath`` is imported with the
probe failing just before the first refresh of a context (the first compile), not at import
(0.28 s of CPU a start from a filled cache no longer pays).
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


def lazy_registries() -> bool:
    """Load cached kernels without loading the compiler's registries (see the module doc);
    False when this Numba's cache load is not the one expected (nothing changed)."""
    from numba.core import caching

    cache = caching.Cache
    if getattr(cache.load_overload, "_vdb_lazy", False):
        return True
    names = cache.load_overload.__code__.co_names
    if set(names) != {"refresh", "_guard_against_spurious_io_errors", "_load_overload"}:
        return False  # another Numba: leave it as it is
    from numba.core.runtime import rtsys

    def load_overload(self, sig, target_context):  # Numba's, minus the refresh
        rtsys.initialize(target_context)  # the runtime's symbols: what loaded code links to
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload._vdb_lazy = True
    load_overload.__doc__ = cache.load_overload.__doc__
    cache.load_overload = load_overload
    return True


def start() -> None:
    """``lazy_registries()`` and the BLAS probe skipped before the first compile (see above);
    without the lazy load, the probe is skipped now."""
    if not lazy_registries():
        skip_blas_probe()
        return
    from numba.core import base

    refresh = base.BaseContext.refresh
    if getattr(refresh, "_vdb_lazy", False):
        return

    def refresh_without_blas_probe(self):
        skip_blas_probe()
        return refresh(self)

    refresh_without_blas_probe._vdb_lazy = True
    base.BaseContext.refresh = refresh_without_blas_probe
