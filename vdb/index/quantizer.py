"""Scalar int8 quantization of float32 vectors for the graph walk (rescored with the floats).

A vector ``x`` is coded as ``c = clip(round((x - offset) / scale), -127, 127)`` (int8), with one
``offset`` per dimension (the middle of that dimension's central ``quantile`` range) and one
``scale`` for all dimensions (the ``quantile`` of ``|x - offset|`` over every value, divided by
127). ``quantile=None`` (the default) is 0.999. Measured with the dequantized vectors
(brute-force recall@10 against float32; a 48-d Gaussian mixture and the MiniLM fixture):
quantile 0.99 loses 0.02-0.09, 0.999 and the whole range 0.005-0.03; one scale per dimension
instead of one for all changed recall by less than 0.005. The whole range is not the default
because one far point in the fit sample widens it for every other point: vectors farther from
the per-dimension median than ``OUTLIER_FACTOR`` times the median such distance are left out of
the fit for the same reason (their codes saturate; the floats rank them). A single scale is what lets the walk use integer dot products: every
distance then has the form

    d(x, y) ~ const + t[x] + t[y] - s * sum(c_x * c_y)          (an int32 sum)

* l2:     const = 0,               t[x] = scale**2 * |c_x|**2,     s = 2 * scale**2
* ip/cos: const = 1 - |offset|**2, t[x] = -scale * offset . c_x,   s = scale**2

(the per-dimension offsets cancel for l2 and become the per-vector term ``t`` for ip), so the
kernels need the codes, one float ``t`` per vector and two constants. Values outside the learned
range saturate at +-127; the candidates of a search are rescored with the float vectors, so a
saturated code costs recall only through the walk, never the final order.

Fitting: the index fits the quantizer on the first points it is given (a sample of at most
``FIT_SAMPLE`` rows) and keeps it while it grows. It refits (and re-codes every point, which
takes milliseconds per 100k points) only when ``needs_refit`` says so: the points added since the
fit outnumber the fit sample ``GROWTH_REFIT`` times over while that sample was smaller than
``FIT_SAMPLE``, or more than ``CLIP_REFIT`` of the values added since the fit were clipped (the
data moved away from the learned range). Both rules fire a bounded number of times on stationary
data, so codes stay stable as the index grows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("int8",)
FIT_SAMPLE = 16384  # rows the quantiles are computed from
GROWTH_REFIT = 4  # refit once n_added > GROWTH_REFIT * n_fit (while n_fit < FIT_SAMPLE)
CLIP_REFIT = 0.05  # refit once this share of the values added since the fit were clipped
CLIP_MIN_VALUES = 65536  # ... counted over at least this many values
OUTLIER_FACTOR = 4.0
DEFAULT_QUANTILE = 0.999
_LEVELS = 127.0
_FORMAT = 1


class ScalarQuantizer:
    """int8 codes for one index: ``encode``, the distance constants, and the refit rule."""

    def __init__(self, dim: int, metric: str, quantile: float | None = None) -> None:
        if quantile is None:
            quantile = DEFAULT_QUANTILE
        if isinstance(quantile, bool) or not (
            isinstance(quantile, (int, float)) and 0.5 <= float(quantile) <= 1.0
        ):
            raise ValueError(f"quantile must be a number in [0.5, 1] or None, got {quantile!r}")
        self.dim = dim
        self.metric = metric
        self.quantile = float(quantile)
        self.offset = np.zeros(dim, np.float32)
        self.scale = np.float32(1.0 / _LEVELS)
        self.fitted = False
        self.n_fit = 0  # rows the current fit was computed from
        self.n_added = 0  # rows encoded since the fit
        self.values_added = 0
        self.values_clipped = 0

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, x: np.ndarray, seed: int = 0) -> None:
        """Learn offset and scale from ``x`` (float32 [n, dim], already unit length for cosine);
        at most ``FIT_SAMPLE`` rows, drawn with a fixed seed, are used."""
        n = x.shape[0]
        if n == 0:
            return
        if n > FIT_SAMPLE:
            rows = np.random.default_rng(seed).choice(n, FIT_SAMPLE, replace=False)
            x = x[np.sort(rows)]
            n = FIT_SAMPLE
        x = np.asarray(x, np.float32)
        dist = np.linalg.norm(x - np.median(x, axis=0), axis=1)
        typical = float(np.median(dist))
        if typical > 0.0:
            keep = dist <= OUTLIER_FACTOR * typical
            if keep.sum() >= max(1, n // 2):
                x = x[keep]
        tail = (1.0 - self.quantile) / 2.0
        lo, hi = np.quantile(x, [tail, 1.0 - tail], axis=0)
        offset = ((lo + hi) / 2.0).astype(np.float32)
        dev = np.abs(x - offset).reshape(-1)
        half = float(np.quantile(dev, self.quantile)) if self.quantile < 1.0 else float(dev.max())
        if not np.isfinite(half) or half <= 0.0:
            half = float(dev.max()) if dev.size and dev.max() > 0 else 1.0
        self.offset = offset
        self.scale = np.float32(half / _LEVELS)
        self.fitted = True
        self.n_fit = n
        self.n_added = 0
        self.values_added = 0
        self.values_clipped = 0

    def needs_refit(self) -> bool:
        """The documented refit rule (module docstring)."""
        if not self.fitted:
            return True
        if self.n_fit < FIT_SAMPLE and self.n_added > GROWTH_REFIT * self.n_fit:
            return True
        return (
            self.values_added >= CLIP_MIN_VALUES
            and self.values_clipped > CLIP_REFIT * self.values_added
        )

    # -- coding ------------------------------------------------------------------------------

    def encode(
        self, x: np.ndarray, codes: np.ndarray, terms: np.ndarray, count: bool = True
    ) -> None:
        """Write the codes of ``x`` [n, dim] into ``codes`` (int8 [n, dim]) and their per-vector
        distance terms into ``terms`` (float32 [n]); counts clipped values when ``count``."""
        r = (x - self.offset) / self.scale
        if count:
            self.n_added += x.shape[0]
            self.values_added += r.size
            self.values_clipped += int(np.count_nonzero(np.abs(r) > _LEVELS + 0.5))
        c = np.clip(np.rint(r), -_LEVELS, _LEVELS).astype(np.int8)
        codes[...] = c
        terms[...] = self.terms(c)

    def terms(self, c: np.ndarray) -> np.ndarray:
        """Per-vector term ``t`` of the distance formula for codes ``c`` [n, dim]."""
        cf = c.astype(np.float32)
        if self.metric == "l2":
            return (self.scale * self.scale * np.einsum("ij,ij->i", cf, cf)).astype(np.float32)
        return (-self.scale * (cf @ self.offset)).astype(np.float32)

    def constants(self) -> np.ndarray:
        """float32 [3 + dim]: ``const``, ``s``, ``scale``, then the offsets: what the kernels need
        to score codes and to code a query themselves."""
        out = np.empty(3 + self.dim, np.float32)
        s2 = float(self.scale) * float(self.scale)
        if self.metric == "l2":
            out[0] = 0.0
            out[1] = 2.0 * s2
        else:
            out[0] = 1.0 - float(self.offset.astype(np.float64) @ self.offset.astype(np.float64))
            out[1] = s2
        out[2] = self.scale
        out[3:] = self.offset
        return out

    # -- persistence -------------------------------------------------------------------------

    def to_array(self) -> np.ndarray:
        """float64 [8 + dim]: everything ``from_array`` needs, in one checkpointable array."""
        head = [
            _FORMAT, self.quantile, float(self.scale), float(self.fitted), self.n_fit,
            self.n_added, self.values_added, self.values_clipped,
        ]  # fmt: skip
        return np.concatenate([np.array(head, np.float64), self.offset.astype(np.float64)])

    @classmethod
    def from_array(cls, dim: int, metric: str, arr: Any) -> ScalarQuantizer:
        a = np.asarray(arr, np.float64)
        if a.ndim != 1 or a.shape[0] != 8 + dim or int(a[0]) != _FORMAT:
            raise ValueError("not a quantizer checkpoint (shape or version)")
        q = cls(dim, metric, float(a[1]))
        q.scale = np.float32(a[2])
        q.fitted = bool(a[3])
        q.n_fit, q.n_added, q.values_added, q.values_clipped = (int(v) for v in a[4:8])
        q.offset = a[8:].astype(np.float32)
        return q


def parse_config(value: Any) -> dict[str, Any] | None:
    """A collection's quantization option → ``{"type": "int8", "quantile": q, "always_ram": b}``
    (or ``None``). Accepts ``None``, ``"int8"`` or such a dict (``quantile`` default 0.99,
    ``always_ram`` default True: the codes always live in RAM, the flag is kept for Qdrant's
    clients; ``quantile`` default None: ``DEFAULT_QUANTILE``). Raises ``ValueError`` naming the
    bad field."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise ValueError(f"quantization must be 'int8', a dict or None, got {value!r}")
    unknown = set(value) - {"type", "quantile", "always_ram"}
    if unknown:
        raise ValueError(f"unknown quantization field {sorted(unknown)[0]!r}")
    kind = value.get("type")
    if kind not in KINDS:
        raise ValueError(f"quantization.type must be one of {', '.join(KINDS)}, got {kind!r}")
    quantile = value.get("quantile")
    if quantile is not None:
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)):
            raise ValueError(f"quantization.quantile must be a number, got {quantile!r}")
        if not 0.5 <= float(quantile) <= 1.0:
            raise ValueError(f"quantization.quantile must be in [0.5, 1], got {quantile}")
        quantile = float(quantile)
    always_ram = value.get("always_ram")
    always_ram = True if always_ram is None else always_ram
    if not isinstance(always_ram, bool):
        raise ValueError(f"quantization.always_ram must be a boolean, got {always_ram!r}")
    return {"type": kind, "quantile": quantile, "always_ram": always_ram}


def search_options(value: Any) -> dict[str, Any]:
    """Per-query quantization parameters ``{"ignore", "rescore", "oversampling"}`` (each
    optional, as Qdrant's ``QuantizationSearchParams``) → keyword arguments of ``HNSW.search``.
    Raises ``ValueError`` naming the bad field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"quantization search parameters must be a dict, got {value!r}")
    unknown = set(value) - {"ignore", "rescore", "oversampling"}
    if unknown:
        raise ValueError(f"unknown quantization search field {sorted(unknown)[0]!r}")
    out: dict[str, Any] = {}
    for key, arg in (("ignore", "ignore_quantization"), ("rescore", "rescore")):
        v = value.get(key)
        if v is None:
            continue
        if not isinstance(v, bool):
            raise ValueError(f"quantization.{key} must be a boolean, got {v!r}")
        out[arg] = v
    over = value.get("oversampling")
    if over is not None:
        if isinstance(over, bool) or not isinstance(over, (int, float)) or not over >= 1.0:
            raise ValueError(f"quantization.oversampling must be a number >= 1, got {over!r}")
        if over != over or over == float("inf"):
            raise ValueError(f"quantization.oversampling must be finite, got {over!r}")
        out["oversampling"] = float(over)
    return out
