"""MUVERA fixed-dimensional encodings (FDEs) of multi-vector point clouds (issue 14, item 1).

MUVERA (Dhulipala, Hadian, Jayaram, Lee, Mirrokni: "MUVERA: Multi-Vector Retrieval via Fixed
Dimensional Encodings", NeurIPS 2024, arXiv:2405.19504) maps a set of vectors (a query's or a
document's multi-vector embedding) to one vector whose inner product approximates the Chamfer
(ColBERT MaxSim) similarity ``sum_q max_d <q, d>``, so that a plain single-vector MIPS index can
produce candidates for exact MaxSim re-ranking. One repetition of the encoding:

1. SimHash space partition: ``num_simhash_projections`` = k Gaussian hyperplanes cut the space
   into ``2**k`` buckets; a vector's bucket is read from the signs of its k projections.
2. Per bucket, the query FDE *sums* the (projected) query vectors in it; the document FDE takes
   their *mean*, and with ``fill_empty_partitions`` an empty bucket takes the document vector
   whose sketch is nearest in Hamming distance to the bucket.
3. Each vector is first projected (``identity``, or an AMS sketch: every input coordinate goes
   to one random output coordinate with a random sign, ``projection_dimension`` outputs).

``num_repetitions`` independent repetitions are concatenated, and an optional final projection
(a Count-Sketch to ``final_projection_dimension``) shortens the result.

This module reproduces Google's reference implementation, graph-mining's
``sketching/point_cloud/fixed_dimensional_encoding.cc`` (the code released with the paper),
*including its random draws*: for the same config and seed it returns the same encoding as that
C++ (compiled with GCC/libstdc++ on x86-64 glibc). That needs the exact streams of the C++
standard library, reimplemented here:

* ``std::mt19937(seed)``: the standard 32-bit Mersenne Twister with its standard seeding,
  driven through numpy's :class:`numpy.random.MT19937` bit generator with the state set from
  the seed by hand (numpy's own seeding differs); repetition ``r`` uses seed ``seed + r``.
* ``std::normal_distribution<float>`` (SimHash matrix): libstdc++'s Marsaglia polar method in
  float, uniforms from ``generate_canonical<float, 24>`` (one 32-bit draw, ``float(u) / 2**32``),
  two normals per accepted pair, ``y * mult`` first; the matrix is filled in column-major order
  (Eigen's ``NullaryExpr`` on a ``MatrixXf``). Its ``std::log(float)`` is glibc's ``logf``,
  reimplemented bit for bit (see :func:`glibc_logf`), since a correctly rounded float32 log
  differs from it on about 2 in 10,000 inputs.
* ``std::uniform_int_distribution`` (AMS sketch and Count-Sketch buckets): libstdc++'s
  Lemire "nearly divisionless" downscaling of one 32-bit draw, with its rejection step.
* ``std::bernoulli_distribution(0.5)`` (signs): ``generate_canonical<double, 53>`` from two
  32-bit draws, ``(u1 + u2 * 2**32) / 2**64 < 0.5``.
* Google's ``GrayCodeToBinary`` computes ``n ^ (n >> 1)`` (which is binary-to-Gray, despite its
  name); the fill step's Hamming distances use it exactly as the C++ does.

Partition sums, means and the Count-Sketch are accumulated in float32 in the C++'s order (points
in order, coordinates in order), so identity-projection FDEs agree with the C++ bit for bit. The
AMS projection is one float64 matrix product rounded to float32 (its sums of +-x_i are then
exact), where the C++ uses Eigen's float32 GEMM, whose rounding depends on its blocking and SIMD
width: those FDEs agree to float32 rounding (at most ~2e-7 of the largest coordinate seen). A point within rounding error
of a SimHash hyperplane could also land in another partition than in the C++ (whose float32
sketch has errors of ~1e-7 relative); with embeddings that is vanishingly rare.

Differences from the C++ API, all deliberate: inputs are ``(n, dimension)`` arrays (the C++
takes a flat vector); an empty point cloud or non-finite values raise (the C++ reads out of
bounds on an empty document with ``fill_empty_partitions``); ``fill_empty_partitions`` is
ignored by query encoding instead of being an error, so one config serves both sides.

Usage::

    cfg = FDEConfig(dimension=1024, num_repetitions=20, num_simhash_projections=5,
                    projection_type="ams_sketch", projection_dimension=16,
                    fill_empty_partitions=True, seed=42)
    q = encode_query(query_vectors, cfg)           # (cfg.output_dimension,) float32
    D = encode_documents(list_of_doc_vectors, cfg) # (n_docs, cfg.output_dimension)
    scores = D @ q / cfg.num_repetitions           # tracks MaxSim(q, d): a first stage's candidates

On 2 CPU cores that config encodes ~50,000 document vectors of dimension 1024 a second, and a
32-vector query in ~1 ms.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FDEConfig",
    "ams_projection",
    "count_sketch",
    "encode",
    "encode_document",
    "encode_documents",
    "encode_queries",
    "encode_query",
    "glibc_logf",
    "mt19937_raw",
    "partition_indices",
    "simhash_matrix",
]

_U32 = 0xFFFFFFFF
_MAX_SIMHASH = 30  # the C++ refuses num_simhash_projections >= 31
_LOGF_VARIANTS = ("glibc-fma", "glibc", "float64")

_ENCODING_ALIASES = {
    "default_sum": "default_sum", "sum": "default_sum", "query": "default_sum",
    "average": "average", "mean": "average", "document": "average",
}
_PROJECTION_ALIASES = {
    "default_identity": "identity", "identity": "identity",
    "ams_sketch": "ams_sketch", "ams": "ams_sketch",
}


@dataclass(frozen=True)
class FDEConfig:
    """The fields of graph-mining's ``FixedDimensionalEncodingConfig`` (same names and defaults).

    dimension: size of each input vector.
    num_repetitions: independent repetitions concatenated in the FDE.
    num_simhash_projections: k SimHash hyperplanes per repetition, ``2**k`` partitions (0..30).
    seed: repetition ``r`` draws its matrices from ``std::mt19937(seed + r)`` (mod 2**32); the
        final projection from ``std::mt19937(seed)``.
    encoding_type: ``"default_sum"`` (queries: sum per partition) or ``"average"`` (documents:
        mean per partition); used by :func:`encode` to route, the other functions fix it.
    projection_type: ``"identity"`` or ``"ams_sketch"`` (then ``projection_dimension`` > 0).
    projection_dimension: output size of the AMS sketch (ignored for identity).
    fill_empty_partitions: documents only: an empty partition takes the document vector whose
        sketch is nearest (Hamming distance) to it.
    final_projection_dimension: if set, a Count-Sketch to this many dimensions ends the encoding.
    logf: the ``logf`` the reference C++ was linked against, which its Gaussian draws depend on:
        ``"glibc-fma"`` (glibc >= 2.28 on an x86-64 CPU with FMA and AVX2, i.e. most from 2013
        on; the default and what the committed reference was recorded with), ``"glibc"`` (the
        same algorithm without fused multiply-adds: glibc's SSE2 build on older x86-64 CPUs), or
        ``"float64"`` (a correctly rounded float32 log). Both glibc variants were checked equal to
        glibc 2.36 on every positive float up to 1.0, the only inputs the normal draws use. Other
        C libraries (musl, macOS) have other logf code and are not reproduced. Not a field of
        Google's config.
    """

    dimension: int
    num_repetitions: int = 1
    num_simhash_projections: int = 0
    seed: int = 1
    encoding_type: str = "default_sum"
    projection_type: str = "identity"
    projection_dimension: int = 0
    fill_empty_partitions: bool = False
    final_projection_dimension: int | None = None
    logf: str = "glibc-fma"

    def __post_init__(self) -> None:
        def _int(name: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"FDEConfig.{name} must be an integer, got {value!r}")
            return int(value)

        for name in ("dimension", "num_repetitions", "num_simhash_projections", "seed", "projection_dimension"):
            object.__setattr__(self, name, _int(name, getattr(self, name)))
        if self.final_projection_dimension is not None:
            object.__setattr__(self, "final_projection_dimension",
                               _int("final_projection_dimension", self.final_projection_dimension))
        enc = _ENCODING_ALIASES.get(str(self.encoding_type).lower())
        if enc is None:
            raise ValueError(f"FDEConfig.encoding_type must be 'default_sum' (query) or 'average' (document), "
                             f"got {self.encoding_type!r}")
        proj = _PROJECTION_ALIASES.get(str(self.projection_type).lower())
        if proj is None:
            raise ValueError(f"FDEConfig.projection_type must be 'identity' or 'ams_sketch', got {self.projection_type!r}")
        object.__setattr__(self, "encoding_type", enc)
        object.__setattr__(self, "projection_type", proj)
        object.__setattr__(self, "fill_empty_partitions", bool(self.fill_empty_partitions))
        if self.dimension < 1:
            raise ValueError(f"FDEConfig.dimension must be positive, got {self.dimension}")
        if self.num_repetitions < 1:
            raise ValueError(f"FDEConfig.num_repetitions must be positive, got {self.num_repetitions}")
        if not 0 <= self.num_simhash_projections <= _MAX_SIMHASH:
            raise ValueError(f"FDEConfig.num_simhash_projections must be in [0, {_MAX_SIMHASH}], "
                             f"got {self.num_simhash_projections}")
        if proj == "ams_sketch" and self.projection_dimension <= 0:
            raise ValueError("FDEConfig.projection_dimension must be positive when projection_type is 'ams_sketch'")
        if self.final_projection_dimension is not None and self.final_projection_dimension < 1:
            raise ValueError(f"FDEConfig.final_projection_dimension must be positive or None, "
                             f"got {self.final_projection_dimension}")
        if self.logf not in _LOGF_VARIANTS:
            raise ValueError(f"FDEConfig.logf must be one of {_LOGF_VARIANTS}, got {self.logf!r}")

    @property
    def num_partitions(self) -> int:
        return 1 << self.num_simhash_projections

    @property
    def projection_dim(self) -> int:
        """Size of each vector after the inner projection (``dimension`` for identity)."""
        return self.dimension if self.projection_type == "identity" else self.projection_dimension

    @property
    def intermediate_dimension(self) -> int:
        """FDE size before the final projection: repetitions x partitions x projection_dim."""
        return self.num_repetitions * self.num_partitions * self.projection_dim

    @property
    def output_dimension(self) -> int:
        if self.final_projection_dimension is not None:
            return self.final_projection_dimension
        return self.intermediate_dimension

    def replace(self, **changes: Any) -> FDEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FDEConfig:
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# std::mt19937 and libstdc++'s distributions
# ---------------------------------------------------------------------------------------------

def _mt19937_key(seed: int) -> np.ndarray:
    """The 624-word state of ``std::mt19937(seed)`` (the standard ``init_genrand``)."""
    key = np.empty(624, dtype=np.uint32)
    s = int(seed) & _U32
    key[0] = s
    for i in range(1, 624):
        s = (1812433253 * (s ^ (s >> 30)) + i) & _U32
        key[i] = s
    return key


class _MTStream:
    """Raw 32-bit outputs of ``std::mt19937(seed)``, read forward in buffered blocks."""

    def __init__(self, seed: int):
        self._bg = np.random.MT19937(0)
        self._bg.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_key(seed), "pos": 624}}
        self._buf = np.empty(0, dtype=np.uint64)
        self._pos = 0

    def ensure(self, n: int) -> np.ndarray:
        """The next ``n`` (or more) unread outputs, without consuming them."""
        have = len(self._buf) - self._pos
        if have < n:
            more = self._bg.random_raw(max(n - have, 4096))
            self._buf = np.concatenate([self._buf[self._pos:], more])
            self._pos = 0
        return self._buf[self._pos:]

    def consume(self, n: int) -> None:
        self._pos += n

    def take(self, n: int) -> np.ndarray:
        out = self.ensure(n)[:n].copy()
        self.consume(n)
        return out


def mt19937_raw(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of ``std::mt19937(seed)`` as uint32."""
    return _MTStream(seed).take(n).astype(np.uint32)


def _canonical_float(raw: np.ndarray) -> np.ndarray:
    """libstdc++ ``generate_canonical<float, 24>`` from one 32-bit draw each."""
    u = raw.astype(np.float64).astype(np.float32) / np.float32(4294967296.0)
    return np.where(u >= np.float32(1.0), np.nextafter(np.float32(1.0), np.float32(0.0)), u).astype(np.float32)


def _bernoulli_half(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """libstdc++ ``bernoulli_distribution(0.5)``: generate_canonical<double, 53> from (lo, hi) < 0.5."""
    s = lo.astype(np.float64) + hi.astype(np.float64) * 4294967296.0
    u = s / 18446744073709551616.0
    u = np.where(u >= 1.0, np.nextafter(1.0, 0.0), u)
    return u < 0.5


def _index_and_sign(stream: _MTStream, count: int, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs (``uniform_int_distribution(0, num_buckets - 1)``, ``2 * bernoulli(0.5) - 1``)
    drawn alternately from one mt19937, as AMSProjectionMatrixFromSeed and ApplyCountSketchToVector do.

    The integer is libstdc++'s Lemire downscaling: ``(u * range) >> 32``, redrawing while the low 32 bits
    of the product fall below ``2**32 mod range``; the fast path assumes no redraw (3 draws per pair) and
    restarts at the first pair that needs one.
    """
    rng = int(num_buckets)
    if not 1 <= rng <= 1 << 32:
        raise ValueError(f"number of buckets must be in [1, 2**32], got {rng}")
    threshold = ((1 << 32) - rng) % rng
    idx = np.empty(count, dtype=np.int64)
    sign = np.empty(count, dtype=np.float32)
    done = 0
    while done < count:
        todo = count - done
        raw = stream.ensure(3 * todo)[: 3 * todo].reshape(todo, 3)
        prod = raw[:, 0] * np.uint64(rng)
        low = prod & np.uint64(_U32)
        bad = np.flatnonzero(low < np.uint64(threshold)) if threshold else np.empty(0, dtype=np.int64)
        good = todo if len(bad) == 0 else int(bad[0])
        idx[done:done + good] = (prod[:good] >> np.uint64(32)).astype(np.int64)
        sign[done:done + good] = np.where(_bernoulli_half(raw[:good, 1], raw[:good, 2]), 1.0, -1.0)
        stream.consume(3 * good)
        done += good
        if done < count:  # one pair with a redraw, element by element as libstdc++ does
            u = int(stream.take(1)[0])
            p = u * rng
            while (p & _U32) < threshold:
                p = int(stream.take(1)[0]) * rng
            idx[done] = p >> 32
            lo, hi = stream.take(2)
            sign[done] = 1.0 if bool(_bernoulli_half(np.array([lo]), np.array([hi]))[0]) else -1.0
            done += 1
    return idx, sign


# ---------------------------------------------------------------------------------------------
# glibc's logf, bit for bit
# ---------------------------------------------------------------------------------------------
# The algorithm of glibc >= 2.28 (sysdeps/ieee754/flt-32/e_logf.c, from Arm's optimized-routines,
# MIT): x = 2**k z with z in [0x3f330000, 2 * 0x3f330000) as float bits, a 16-entry table of
# 1/c and log(c), and a cubic for log1p(r), r = z/c - 1, evaluated in double. glibc selects an
# FMA build of it at run time on x86-64 CPUs with FMA (and AVX2); there the compiler fuses five
# multiply-adds, which we reproduce with an exactly emulated fused multiply-add.
_LOGF_INVC = np.array([float.fromhex(h) for h in (
    "0x1.661ec79f8f3bep+0", "0x1.571ed4aaf883dp+0", "0x1.49539f0f010bp+0", "0x1.3c995b0b80385p+0",
    "0x1.30d190c8864a5p+0", "0x1.25e227b0b8eap+0", "0x1.1bb4a4a1a343fp+0", "0x1.12358f08ae5bap+0",
    "0x1.0953f419900a7p+0", "0x1p+0", "0x1.e608cfd9a47acp-1", "0x1.ca4b31f026aap-1",
    "0x1.b2036576afce6p-1", "0x1.9c2d163a1aa2dp-1", "0x1.886e6037841edp-1", "0x1.767dcf5534862p-1")])
_LOGF_LOGC = np.array([float.fromhex(h) for h in (
    "-0x1.57bf7808caadep-2", "-0x1.2bef0a7c06ddbp-2", "-0x1.01eae7f513a67p-2", "-0x1.b31d8a68224e9p-3",
    "-0x1.6574f0ac07758p-3", "-0x1.1aa2bc79c81p-3", "-0x1.a4e76ce8c0e5ep-4", "-0x1.1973c5a611cccp-4",
    "-0x1.252f438e10c1ep-5", "0x0p+0", "0x1.aa5aa5df25984p-5", "0x1.c5e53aa362eb4p-4",
    "0x1.526e57720db08p-3", "0x1.bc2860d22477p-3", "0x1.1058bc8a07ee1p-2", "0x1.4043057b6ee09p-2")])
_LOGF_LN2 = float.fromhex("0x1.62e42fefa39efp-1")
_LOGF_A0 = float.fromhex("-0x1.00ea348b88334p-2")
_LOGF_A1 = float.fromhex("0x1.5575b0be00b6ap-2")
_LOGF_A2 = float.fromhex("-0x1.ffffef20a4123p-2")
_LOGF_OFF = 0x3F330000


def _two_sum(a, b):
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def _two_prod(a, b):
    p = a * b
    ca = 134217729.0 * a  # Veltkamp splitting, 2**27 + 1
    ah = ca - (ca - a)
    al = a - ah
    cb = 134217729.0 * b
    bh = cb - (cb - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _fma(a, b, c):
    """Correctly rounded ``a * b + c`` in float64 (Boldo and Melquiond's emulation with rounding to odd,
    IEEE Trans. Computers 57(4), 2008): exact product, exact sum with c, then the low parts added with
    rounding to odd, so that the one final rounding to nearest is correct."""
    ph, pl = _two_prod(a, b)
    sh, sl = _two_sum(c, ph)
    v, e = _two_sum(sl, pl)
    even = (v.view(np.int64) & 1) == 0
    fix = (e != 0) & even
    if np.any(fix):
        v = np.where(fix, np.nextafter(v, np.where(e > 0, np.inf, -np.inf)), v)
    return sh + v


def glibc_logf(x, variant: str = "glibc-fma") -> np.ndarray:
    """``logf`` of float32 values exactly as glibc (>= 2.28) computes it; ``variant`` as in
    :attr:`FDEConfig.logf` (``"float64"``: the correctly rounded float32 of the float64 log).

    Defined here for positive finite inputs (the only ones std::normal_distribution passes); others
    fall back to numpy's float64 log rounded to float32 (-inf, nan).
    """
    x = np.asarray(x, dtype=np.float32)
    if variant == "float64":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x.astype(np.float64)).astype(np.float32)
    if variant not in ("glibc-fma", "glibc"):
        raise ValueError(f"unknown logf variant {variant!r}; expected one of {_LOGF_VARIANTS}")
    shape = x.shape
    x = x.ravel()
    ix = x.view(np.uint32).copy()
    ok = (ix >= 1) & (ix < 0x7F800000)  # positive, finite (subnormals included)
    sub = ok & (ix < 0x00800000)
    if np.any(sub):  # normalize subnormals: x * 2**23, exponent corrected below
        ix[sub] = (x[sub] * np.float32(8388608.0)).view(np.uint32) - np.uint32(23 << 23)
    tmp = ix - np.uint32(_LOGF_OFF)
    i = ((tmp >> np.uint32(19)) & np.uint32(15)).astype(np.intp)
    k = (tmp.view(np.int32) >> 23).astype(np.float64)
    iz = ix - (tmp & np.uint32(0xFF800000))
    z = iz.view(np.float32).astype(np.float64)
    invc, logc = _LOGF_INVC[i], _LOGF_LOGC[i]
    if variant == "glibc-fma":
        r = _fma(z, invc, np.full_like(z, -1.0))
        y0 = _fma(k, np.full_like(z, _LOGF_LN2), logc)
        r2 = r * r
        y = _fma(np.full_like(z, _LOGF_A1), r, np.full_like(z, _LOGF_A2))
        y = _fma(np.full_like(z, _LOGF_A0), r2, y)
        y = _fma(y, r2, y0 + r)
    else:
        r = z * invc - 1.0
        y0 = logc + k * _LOGF_LN2
        r2 = r * r
        y = _LOGF_A1 * r + _LOGF_A2
        y = _LOGF_A0 * r2 + y
        y = y * r2 + (y0 + r)
    out = y.astype(np.float32)
    out[ix == 0x3F800000] = 0.0
    if not np.all(ok):
        with np.errstate(divide="ignore", invalid="ignore"):
            out[~ok] = np.log(x[~ok].astype(np.float64)).astype(np.float32)
    return out.reshape(shape)


def _normal_floats(stream: _MTStream, count: int, logf: str) -> np.ndarray:
    """``count`` draws of libstdc++'s ``normal_distribution<float>(0, 1)`` (Marsaglia polar)."""
    pairs = (count + 1) // 2
    out = np.empty(0, dtype=np.float32)
    while len(out) < 2 * pairs:
        need = pairs - len(out) // 2
        attempts = int(need * 1.3) + 16  # acceptance is pi/4
        raw = stream.take(2 * attempts).reshape(attempts, 2)
        u = _canonical_float(raw)
        # __x = result_type(2.0) * __aurng() - 1.0: the float product is exact, the subtraction is
        # done in double and rounded back to float
        xy = ((np.float32(2.0) * u).astype(np.float64) - 1.0).astype(np.float32)
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y  # float32, unfused (as compiled for plain x86-64)
        keep = ~((r2 > 1.0) | (r2 == 0.0))
        x, y, r2 = x[keep], y[keep], r2[keep]
        mult = np.sqrt(np.float32(-2.0) * glibc_logf(r2, logf) / r2)
        both = np.empty((len(x), 2), dtype=np.float32)
        both[:, 0] = y * mult  # returned first
        both[:, 1] = x * mult  # saved, returned next
        out = np.concatenate([out, both.ravel()])
    # std::normal_distribution keeps the unused second value of the last pair; nothing reads it
    return out[:count]


# ---------------------------------------------------------------------------------------------
# Google's random matrices (cached: a config draws the same ones for every point cloud)
# ---------------------------------------------------------------------------------------------

def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=256)
def simhash_matrix(seed: int, dimension: int, num_projections: int, logf: str = "glibc-fma") -> np.ndarray:
    """``SimHashMatrixFromSeed``: a (dimension, num_projections) float32 matrix of N(0, 1) draws of
    ``std::normal_distribution<float>`` on ``std::mt19937(seed)``, filled column by column."""
    vals = _normal_floats(_MTStream(seed), dimension * num_projections, logf)
    return _readonly(np.ascontiguousarray(vals.reshape(num_projections, dimension).T))


@functools.lru_cache(maxsize=256)
def ams_projection(seed: int, dimension: int, projection_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``AMSProjectionMatrixFromSeed`` in sparse form: row i of the (dimension, projection_dim) matrix
    holds ``sign[i]`` (+-1) in column ``index[i]`` and zeros elsewhere."""
    idx, sign = _index_and_sign(_MTStream(seed), dimension, projection_dim)
    return _readonly(idx), _readonly(sign)


@functools.lru_cache(maxsize=64)
def _count_sketch_plan(seed: int, length: int, final_dimension: int):
    idx, sign = _index_and_sign(_MTStream(seed), length, final_dimension)
    return idx, sign, _scatter_rounds(idx)


@functools.lru_cache(maxsize=256)
def _repetition_matrix(seed: int, dimension: int, num_projections: int, projection_dim: int, logf: str) -> np.ndarray:
    """One repetition's SimHash matrix and (if ``projection_dim``) dense AMS matrix side by side, float64:
    (dimension, num_projections + projection_dim)."""
    w = np.zeros((dimension, num_projections + projection_dim), dtype=np.float64)
    if num_projections:
        w[:, :num_projections] = simhash_matrix(seed, dimension, num_projections, logf)
    if projection_dim:
        idx, sign = ams_projection(seed, dimension, projection_dim)
        w[np.arange(dimension), num_projections + idx] = sign
    return _readonly(w)


@functools.lru_cache(maxsize=16)
def _all_repetitions(seed: int, reps: int, dimension: int, num_projections: int, projection_dim: int,
                     logf: str) -> np.ndarray:
    """The repetitions' matrices side by side: (dimension, reps * (num_projections + projection_dim))."""
    return _readonly(np.concatenate([_repetition_matrix((seed + r) & _U32, dimension, num_projections, projection_dim,
                                                        logf) for r in range(reps)], axis=1))


def _scatter_rounds(idx: np.ndarray) -> list[np.ndarray]:
    """Positions grouped by their rank among equal ``idx`` values, in input order: round r holds,
    for every target, its r-th source, so adding round after round sums each target in input order."""
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
    rank = np.empty(len(idx), dtype=np.int64)
    rank[order] = np.arange(len(idx)) - group_start
    return [_readonly(np.flatnonzero(rank == r)) for r in range(int(rank.max()) + 1 if len(idx) else 0)]


def _signed_scatter(values: np.ndarray, idx: np.ndarray, sign: np.ndarray, rounds, out_dim: int) -> np.ndarray:
    """``out[:, idx[i]] += sign[i] * values[:, i]`` for i in order, in float32: the C++'s sequential sums."""
    out = np.zeros((values.shape[0], out_dim), dtype=np.float32)
    for pos in rounds:
        out[:, idx[pos]] += values[:, pos] * sign[pos]
    return out


def count_sketch(vector, final_dimension: int, seed: int) -> np.ndarray:
    """``ApplyCountSketchToVector``: each input coordinate is added, with a random sign, to one random
    output coordinate. ``vector`` may be 1-D or a 2-D batch of rows (each sketched the same way)."""
    v = np.asarray(vector, dtype=np.float32)
    single = v.ndim == 1
    v2 = v[None, :] if single else v
    idx, sign, rounds = _count_sketch_plan(int(seed) & _U32, v2.shape[1], int(final_dimension))
    out = _signed_scatter(v2, idx, sign, rounds, int(final_dimension))
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# Partitions
# ---------------------------------------------------------------------------------------------

def partition_indices(sketch: np.ndarray) -> np.ndarray:
    """``SimHashPartitionIndex`` of each row of ``sketch`` (n, k): bits ``sketch > 0`` appended, in
    column order, with ``AppendToGrayCode``: ``g = (g << 1) + (bit ^ (g & 1))``."""
    bits = np.asarray(sketch) > 0
    g = np.zeros(bits.shape[0], dtype=np.int64)
    for i in range(bits.shape[1]):
        g = (g << 1) + (bits[:, i].astype(np.int64) ^ (g & 1))
    return g


def _sign_codes(bits: np.ndarray) -> np.ndarray:
    """The sign bits as a plain binary number, first projection most significant."""
    k = bits.shape[1]
    code = np.zeros(bits.shape[0], dtype=np.int64)
    for i in range(k):
        code |= bits[:, i].astype(np.int64) << (k - 1 - i)
    return code


def _popcount(a: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)
    a = a.astype(np.int64)
    out = np.zeros(a.shape, dtype=np.int64)
    while np.any(a):
        out += a & 1
        a = a >> 1
    return out


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def _as_cloud(points, config: FDEConfig, what: str) -> np.ndarray:
    if hasattr(points, "detach"):  # a torch tensor
        points = points.detach().cpu().float().numpy()
    arr = np.asarray(points)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected an (n, {config.dimension}) array of vectors, got shape {arr.shape}")
    if arr.shape[1] != config.dimension:
        raise ValueError(f"{what}: vectors have dimension {arr.shape[1]}, but the config's dimension is "
                         f"{config.dimension}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what}: the point cloud is empty (0 vectors); an FDE needs at least one")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: the point cloud has non-finite values (nan or inf)")
    return arr


def _encode_clouds(clouds: list[np.ndarray], config: FDEConfig, document: bool) -> np.ndarray:
    """FDEs of already validated float32 clouds, all at once (points concatenated)."""
    n_docs = len(clouds)
    sizes = np.array([len(c) for c in clouds], dtype=np.int64)
    X = np.concatenate(clouds, axis=0) if n_docs > 1 else clouds[0]
    owner = np.repeat(np.arange(n_docs, dtype=np.int64), sizes)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    R, k, B, pd = config.num_repetitions, config.num_simhash_projections, config.num_partitions, config.projection_dim
    out = np.empty((n_docs, R, B, pd), dtype=np.float32)
    ams = config.projection_type == "ams_sketch"
    X64 = X.astype(np.float64) if (k > 0 or ams) else None
    binrep = None
    if document and config.fill_empty_partitions and k > 0:
        j = np.arange(B, dtype=np.int64)
        binrep = j ^ (j >> 1)  # Google's "GrayCodeToBinary"
    width = k + (pd if ams else 0)
    if width:
        # one float64 product for all repetitions: the SimHash projections, of which only the signs
        # are used (float64 keeps them those of the exact product), and the AMS sketches, whose sums
        # of +-x_i are then (all but always) exact, rounded once to float32. Eigen's float32 GEMM
        # rounds those sums at each step, in its own order: the only source of differences.
        Y_all = X64 @ _all_repetitions(config.seed, R, config.dimension, k, pd if ams else 0, config.logf)
    for rep in range(R):
        if width:
            Y = Y_all[:, rep * width:(rep + 1) * width]
        if k > 0:
            bits = Y[:, :k] > 0
            part = partition_indices(bits)
        else:
            bits = None
            part = np.zeros(len(X), dtype=np.int64)
        proj = np.ascontiguousarray(Y[:, k:], dtype=np.float32) if ams else X
        flat = np.zeros((n_docs * B, pd), dtype=np.float32)
        key = owner * B + part
        np.add.at(flat, key, proj)  # unbuffered, in point order: the C++'s float sums
        if document:
            counts = np.bincount(key, minlength=n_docs * B)
            filled = counts > 0
            flat[filled] /= counts[filled].astype(np.float32)[:, None]
            if binrep is not None and not np.all(filled):
                _fill_empty(flat, ~filled.reshape(n_docs, B), _sign_codes(bits), binrep, proj, starts, sizes)
        out[:, rep] = flat.reshape(n_docs, B, pd)
    fde = out.reshape(n_docs, -1)
    if config.final_projection_dimension is not None:
        fde = count_sketch(fde, config.final_projection_dimension, config.seed)
    return fde


def _fill_empty(flat, empty, codes, binrep, proj, starts, sizes, cap: int = 1 << 22) -> None:
    """Each empty partition j of a document takes the projected vector of its first point with the
    smallest ``DistanceToSimHashPartition``: popcount(point's sign bits XOR binrep[j]). Documents are
    handled in groups of at most ``cap`` (point, partition) pairs."""
    B = empty.shape[1]
    docs = np.flatnonzero(empty.any(axis=1))
    pairs = np.cumsum(sizes[docs]) * B
    lo = 0
    while lo < len(docs):
        hi = max(lo + 1, int(np.searchsorted(pairs, (pairs[lo - 1] if lo else 0) + cap, side="right")))
        sel = docs[lo:hi]
        lens = sizes[sel]
        seg = np.r_[0, np.cumsum(lens)[:-1]]
        total = int(lens.sum())
        pts = np.repeat(starts[sel] - seg, lens) + np.arange(total)  # rows of these documents' points
        dist = _popcount(codes[pts][:, None] ^ binrep[None, :])  # (total, B)
        best = np.minimum.reduceat(dist, seg, axis=0)  # (len(sel), B)
        hit = dist == np.repeat(best, lens, axis=0)
        first = np.minimum.reduceat(np.where(hit, np.arange(total)[:, None], total), seg, axis=0)
        dd, jj = np.nonzero(empty[sel])
        flat[sel[dd] * B + jj] = proj[pts[first[dd, jj]]]  # first minimum, as the C++'s strict <
        lo = hi


def _batches(clouds: list[np.ndarray], config: FDEConfig, budget: int = 1 << 24) -> Iterable[list[np.ndarray]]:
    """Consecutive chunks whose intermediate FDEs, and whose points, stay within ``budget`` floats each."""
    per_doc = max(1, config.intermediate_dimension)
    width = config.num_simhash_projections + (config.projection_dim if config.projection_type == "ams_sketch" else 0)
    point_floats = 3 * config.dimension + 2 * config.num_repetitions * width  # X, X in float64, products
    chunk: list[np.ndarray] = []
    used_docs = used_points = 0
    for cloud in clouds:
        cost = len(cloud) * point_floats
        if chunk and (used_docs + per_doc > budget or used_points + cost > budget):
            yield chunk
            chunk, used_docs, used_points = [], 0, 0
        chunk.append(cloud)
        used_docs += per_doc
        used_points += cost
    if chunk:
        yield chunk


def encode_query(points, config: FDEConfig) -> np.ndarray:
    """Query FDE (sum per partition) of one (n, dimension) point cloud: a float32 vector of
    ``config.output_dimension``. ``config.fill_empty_partitions`` does not apply to queries."""
    return _encode_clouds([_as_cloud(points, config, "encode_query")], config, document=False)[0]


def encode_document(points, config: FDEConfig) -> np.ndarray:
    """Document FDE (mean per partition, optional fill of empty ones) of one (n, dimension) point cloud."""
    return _encode_clouds([_as_cloud(points, config, "encode_document")], config, document=True)[0]


def encode(points, config: FDEConfig) -> np.ndarray:
    """``GenerateFixedDimensionalEncoding``: query or document FDE by ``config.encoding_type``."""
    if config.encoding_type == "average":
        return encode_document(points, config)
    return encode_query(points, config)


def _encode_many(point_clouds: Sequence, config: FDEConfig, document: bool, what: str) -> np.ndarray:
    if isinstance(point_clouds, np.ndarray) and point_clouds.ndim == 2:
        raise ValueError(f"{what}: expected a list of (n_i, {config.dimension}) arrays; for one point cloud "
                         f"use {what[:-1]}")
    clouds = [_as_cloud(p, config, f"{what}[{i}]") for i, p in enumerate(point_clouds)]
    if not clouds:
        return np.zeros((0, config.output_dimension), dtype=np.float32)
    return np.concatenate([_encode_clouds(b, config, document) for b in _batches(clouds, config)], axis=0)


def encode_queries(point_clouds: Sequence, config: FDEConfig) -> np.ndarray:
    """Query FDEs of a list of (n_i, dimension) point clouds: (len(point_clouds), output_dimension)."""
    return _encode_many(point_clouds, config, False, "encode_queries")


def encode_documents(point_clouds: Sequence, config: FDEConfig) -> np.ndarray:
    """Document FDEs of a list of (n_i, dimension) point clouds: (len(point_clouds), output_dimension)."""
    return _encode_many(point_clouds, config, True, "encode_documents")
