"""Record Google's MUVERA fixed-dimensional encodings for tests/test_muvera.py (issue 14, item 1).

Run once, in a scratch directory, never as part of m3lab or its tests (see README.md beside this
file for the exact package versions)::

    apt-get install -y g++ libeigen3-dev libabsl-dev
    python tests/reference/muvera/make_muvera_reference.py            # ~20 s on 2 cores
    python tests/reference/muvera/make_muvera_reference.py --check-logf   # optional, ~15 min

It downloads the muvera-fde 0.1.0 sdist (``pip download``), which carries graph-mining's
``sketching/point_cloud/fixed_dimensional_encoding.cc`` with its protobuf config replaced by a
plain struct, compiles that file together with ``fde_driver.cc`` (this project's own driver)
against Debian's Eigen and abseil, runs it on fixed point clouds and configs, and writes
``muvera_reference.npz``: the point clouds, Google's query and document FDEs, some of its
random matrices, Count-Sketch outputs, raw std::mt19937 outputs, glibc ``logf`` values (with
and without glibc's FMA code path), and a JSON ``meta`` describing all of it.

Only numpy is needed from Python; m3lab is not imported (except by the optional ``--check-logf``,
which writes nothing), so the reference does not depend on the implementation it checks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SDIST = "muvera-fde==0.1.0"
SDIST_FILE = "muvera_fde-0.1.0.tar.gz"
SDIST_SHA256 = "8bedbbb70d5332de53cba91d835315d480008355fa189b4b885dc2d625d0b50d"
CXXFLAGS = ["-std=c++17", "-O3", "-DNDEBUG"]  # scikit-build-core's Release flags; no -march (no FMA)
NO_FMA_ENV = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA"}  # makes glibc pick its SSE2 logf

# name, dimension, num_repetitions, num_simhash_projections, seed, projection_type,
# projection_dimension, fill_empty_partitions (documents), final_projection_dimension (None: unset)
CONFIGS = [
    ("identity_basic", 16, 2, 3, 1, "identity", 0, False, None),
    ("identity_fill", 16, 3, 4, 7, "identity", 0, True, None),
    ("identity_fill_final", 64, 3, 5, 123, "identity", 0, True, 500),
    ("identity_final_many_reps", 16, 20, 6, 5, "identity", 0, False, 777),
    ("identity_no_simhash", 128, 2, 0, 1, "identity", 0, True, None),
    ("ams_basic", 32, 4, 2, 42, "ams_sketch", 8, False, None),
    ("ams_fill_final_negative_seed", 32, 5, 5, -3, "ams_sketch", 16, True, 256),
    ("ams_fill_final_d128", 128, 10, 4, 2024, "ams_sketch", 16, True, 1024),
    ("ams_fill_256_partitions", 24, 1, 8, 99, "ams_sketch", 5, True, None),
    ("ams_final_no_fill", 64, 6, 3, 31337, "ams_sketch", 12, False, 100),
]
N_QUERIES, N_DOCS = 3, 3
SIMHASH_CASES = [(1, 128, 8), (42, 1024, 6), (4294967293, 32, 5)]  # seed -3 as uint32
AMS_CASES = [(1, 128, 16), (3, 1000, 7), (2024, 128, 16)]
# (seed, input length, final dimension); the last uses so large a range that libstdc++'s
# uniform_int_distribution must redraw several times (2**32 mod 3e6 = 1,967,296)
COUNT_SKETCH_CASES = [(5, 20480, 777), (123, 6144, 500), (17, 8000, 3_000_000)]
MT_SEEDS = [0, 1, 5489, 4294967295]


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def tool_version(cmd) -> str:
    try:
        return sh(cmd).stdout.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def deb_version(pkg: str) -> str:
    try:
        return sh(["dpkg-query", "-W", "-f=${Version}", pkg]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fetch_sdist(work: Path) -> Path:
    tarball = work / SDIST_FILE
    if not tarball.exists():
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "muvera-fde", "-d", str(work), SDIST])
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest}, expected {SDIST_SHA256}")
    src = work / "muvera_fde-0.1.0"
    if not src.exists():
        with tarfile.open(tarball) as tf:
            tf.extractall(work)
    return src / "src"


def build_driver(work: Path, src: Path) -> tuple[Path, float, list[str]]:
    for header in ("/usr/include/eigen3/Eigen/Core", "/usr/include/absl/status/statusor.h"):
        if not Path(header).exists():
            raise SystemExit(f"{header} missing: apt-get install -y g++ libeigen3-dev libabsl-dev")
    shim = work / "shim"
    if not Path("/usr/include/absl/log/check.h").exists():
        # Debian 12's abseil (20220623) predates absl/log; the .cc includes check.h and log.h
        # but uses none of their macros, so empty stand-ins suffice
        (shim / "absl" / "log").mkdir(parents=True, exist_ok=True)
        for name in ("check.h", "log.h"):
            (shim / "absl" / "log" / name).write_text("// empty stand-in: fixed_dimensional_encoding.cc uses none of it\n")
    libs = sh(["pkg-config", "--libs", "absl_status", "absl_statusor", "absl_strings"]).stdout.split()
    exe = work / "fde_driver"
    cmd = ["g++", *CXXFLAGS, "-I", str(src), "-I", "/usr/include/eigen3", "-I", str(shim),
           str(HERE / "fde_driver.cc"), "-o", str(exe), *libs]
    t0 = time.time()
    sh(cmd)
    return exe, time.time() - t0, cmd


class Driver:
    def __init__(self, exe: Path, work: Path):
        self.exe, self.work, self.calls = exe, work, 0

    def _tmp(self, name: str) -> str:
        return str(self.work / name)

    def fde(self, points: np.ndarray, cfg: dict, document: bool, fill: bool):
        inp, out = self._tmp("in.bin"), self._tmp("out.bin")
        np.ascontiguousarray(points, dtype=np.float32).tofile(inp)
        final = -1 if cfg["final_projection_dimension"] is None else cfg["final_projection_dimension"]
        args = [str(self.exe), "fde", cfg["dimension"], cfg["num_repetitions"], cfg["num_simhash_projections"],
                cfg["seed"], int(document), int(cfg["projection_type"] == "ams_sketch"),
                cfg["projection_dimension"], int(fill), final, inp, points.size, out]
        r = subprocess.run([str(a) for a in args], check=False, text=True, capture_output=True)
        self.calls += 1
        if r.returncode == 3:
            return r.stdout.strip()
        if r.returncode != 0:
            raise RuntimeError(f"driver failed: {r.stderr}")
        return np.fromfile(out, dtype=np.float32)

    def matrix(self, kind: str, seed: int, rows: int, cols: int) -> np.ndarray:
        out = self._tmp("m.bin")
        sh([str(self.exe), kind, str(seed), str(rows), str(cols), out])
        return np.fromfile(out, dtype=np.float32).reshape(rows, cols)

    def count_sketch(self, seed: int, vec: np.ndarray, final: int) -> np.ndarray:
        inp, out = self._tmp("cs_in.bin"), self._tmp("cs_out.bin")
        vec.astype(np.float32).tofile(inp)
        sh([str(self.exe), "countsketch", str(seed), str(final), inp, str(len(vec)), out])
        return np.fromfile(out, dtype=np.float32)

    def logf(self, x: np.ndarray, env: dict | None = None) -> np.ndarray:
        inp, out = self._tmp("lg_in.bin"), self._tmp("lg_out.bin")
        x.astype(np.float32).tofile(inp)
        sh([str(self.exe), "logf", inp, str(len(x)), out], env={**os.environ, **(env or {})})
        return np.fromfile(out, dtype=np.float32)

    def mt(self, seed: int, n: int) -> np.ndarray:
        out = self._tmp("mt.bin")
        sh([str(self.exe), "mt", str(seed), str(n), out])
        return np.fromfile(out, dtype=np.uint32)


def point_clouds(rng: np.random.Generator, dim: int, n_clouds: int, lo: int, hi: int) -> list[np.ndarray]:
    """Embedding-like clouds: unit vectors spread around a few directions."""
    clouds = []
    for _ in range(n_clouds):
        n = int(rng.integers(lo, hi + 1))
        centers = rng.standard_normal((3, dim))
        pts = centers[rng.integers(0, 3, n)] + 0.7 * rng.standard_normal((n, dim))
        clouds.append((pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32))
    return clouds


def check_logf(drv: Driver, chunk: int = 1 << 23) -> None:
    """Every float in (0, 1] (the logs std::normal_distribution<float> takes): glibc vs m3lab."""
    sys.path.insert(0, str(HERE.parents[2]))
    from m3lab.retrieval.muvera import glibc_logf

    for variant, env in (("glibc-fma", None), ("glibc", NO_FMA_ENV)):
        t0, bad, not_rounded, seen = time.time(), 0, 0, 0
        for a in range(1, 0x3F800000 + 1, chunk):
            x = np.arange(a, min(a + chunk, 0x3F800001), dtype=np.uint32).view(np.float32)
            want = drv.logf(x, env)
            seen += len(x)
            bad += int(np.sum(glibc_logf(x, variant).view(np.uint32) != want.view(np.uint32)))
            not_rounded += int(np.sum(want != np.log(x.astype(np.float64)).astype(np.float32)))
        print(f"{variant}: {seen} inputs, {bad} differ from m3lab's glibc_logf; glibc is not correctly "
              f"rounded on {not_rounded}; {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/muvera_reference_build"))
    ap.add_argument("--out", type=Path, default=HERE / "muvera_reference.npz")
    ap.add_argument("--check-logf", action="store_true",
                    help="only compare m3lab's glibc_logf with this machine's glibc on every positive float "
                         "<= 1.0, for the FMA and the SSE2 build (imports m3lab; ~15 min on 2 cores)")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    t_start = time.time()
    src = fetch_sdist(work)
    exe, build_s, build_cmd = build_driver(work, src)
    drv = Driver(exe, work)
    if args.check_logf:
        check_logf(drv)
        return
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(20240529)

    # point clouds: 3 queries (5-32 vectors) and 3 documents (5-40 vectors) per dimension
    clouds: dict[int, dict[str, list[str]]] = {}
    for dim in sorted({c[1] for c in CONFIGS}):
        entry = {"queries": [], "documents": []}
        for kind, lo, hi, n in (("queries", 5, 32, N_QUERIES), ("documents", 5, 40, N_DOCS)):
            for j, pts in enumerate(point_clouds(rng, dim, n, lo, hi)):
                key = f"points_d{dim}_{kind[0]}{j}"
                arrays[key] = pts
                entry[kind].append(key)
        clouds[dim] = entry

    configs_meta = []
    for name, dim, reps, k, seed, ptype, pdim, fill, final in CONFIGS:
        cfg = {"dimension": dim, "num_repetitions": reps, "num_simhash_projections": k, "seed": seed,
               "projection_type": ptype, "projection_dimension": pdim, "fill_empty_partitions": fill,
               "final_projection_dimension": final}
        entry = {"name": name, "config": cfg, "queries": [], "documents": []}
        for kind, document in (("queries", False), ("documents", True)):
            for j, pkey in enumerate(clouds[dim][kind]):
                fde = drv.fde(arrays[pkey], cfg, document=document, fill=fill and document)
                if isinstance(fde, str):
                    raise RuntimeError(f"{name}: Google's encoder refused the config: {fde}")  # noqa: TRY004
                key = f"fde_{name}_{kind[0]}{j}"
                arrays[key] = fde
                entry[kind].append({"points": pkey, "fde": key})
        if fill:  # Google's query encoder refuses fill_empty_partitions
            entry["query_with_fill_error"] = drv.fde(arrays[clouds[dim]["queries"][0]], cfg, False, True)
        configs_meta.append(entry)

    # Google's error messages on bad input, for the record
    base = {"dimension": 16, "num_repetitions": 1, "num_simhash_projections": 3, "seed": 1,
            "projection_type": "identity", "projection_dimension": 0, "fill_empty_partitions": False,
            "final_projection_dimension": None}
    q16 = arrays[clouds[16]["queries"][0]]
    errors = {
        "dimension_mismatch": drv.fde(q16.ravel()[:-1], base, False, False),
        "simhash_31": drv.fde(q16, {**base, "num_simhash_projections": 31}, False, False),
        "ams_without_projection_dimension": drv.fde(q16, {**base, "projection_type": "ams_sketch"}, False, False),
        "query_with_fill": drv.fde(q16, base, False, True),
    }
    assert all(isinstance(v, str) for v in errors.values()), errors

    # Google's random matrices
    for seed, dim, k in SIMHASH_CASES:
        arrays[f"simhash_{seed}_{dim}_{k}"] = drv.matrix("simhash", seed, dim, k)
    for seed, dim, pdim in AMS_CASES:
        m = drv.matrix("ams", seed, dim, pdim)
        nz = m != 0
        assert np.all(nz.sum(axis=1) == 1), "an AMS row must hold exactly one +-1"
        arrays[f"ams_{seed}_{dim}_{pdim}_index"] = np.argmax(nz, axis=1).astype(np.int32)
        arrays[f"ams_{seed}_{dim}_{pdim}_sign"] = m[np.arange(dim), np.argmax(nz, axis=1)].astype(np.int8)
    for seed, length, final in COUNT_SKETCH_CASES:
        vec = np.arange(1, length + 1, dtype=np.float32)  # exact values: the test rebuilds them
        out = drv.count_sketch(seed, vec, final)
        nz = np.flatnonzero(out)
        arrays[f"countsketch_{seed}_{length}_{final}_index"] = nz.astype(np.int32)
        arrays[f"countsketch_{seed}_{length}_{final}_value"] = out[nz]
    for seed in MT_SEEDS:
        arrays[f"mt19937_{seed}"] = drv.mt(seed, 1000)

    # glibc logf: random inputs in (0, 1] plus the ones where its FMA path, its SSE2 path and the
    # correctly rounded value disagree (the inputs std::normal_distribution<float> gives it)
    cand = rng.random(400_000).astype(np.float32)
    cand = cand[cand > 0]
    fma_out, sse_out = drv.logf(cand), drv.logf(cand, NO_FMA_ENV)
    rounded = np.log(cand.astype(np.float64)).astype(np.float32)
    hard = np.flatnonzero((fma_out != sse_out) | (fma_out != rounded))
    pick = np.r_[hard[:1500], np.arange(500)]
    x = np.concatenate([cand[pick], np.array([1.0, 0.5, 2.0 ** -126, 2.0 ** -149, 1e-40, 0.75], dtype=np.float32)])
    arrays["logf_x"] = x
    arrays["logf_glibc_fma"] = drv.logf(x)
    arrays["logf_glibc"] = drv.logf(x, NO_FMA_ENV)

    cpu_flags = ""
    try:
        line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
        cpu_flags = " ".join(f for f in ("avx2", "fma") if f in line.split())
    except (OSError, StopIteration):
        pass
    meta = {
        "what": "Google graph-mining MUVERA FDEs (fixed_dimensional_encoding.cc via the muvera-fde 0.1.0 sdist)",
        "sdist": SDIST, "sdist_sha256": SDIST_SHA256,
        "compiler": tool_version(["g++", "--version"]), "cxxflags": CXXFLAGS,
        "packages": {p: deb_version(p) for p in ("g++", "libstdc++-12-dev", "libc6", "libeigen3-dev", "libabsl-dev")},
        "glibc_logf": f"FMA path on this CPU ({cpu_flags}); logf_glibc recorded with {NO_FMA_ENV}",
        "platform": platform.platform(), "numpy": np.__version__,
        "build_seconds": round(build_s, 1), "driver_calls": drv.calls,
        "configs": configs_meta, "errors": errors,
        "simhash_cases": SIMHASH_CASES, "ams_cases": AMS_CASES, "count_sketch_cases": COUNT_SKETCH_CASES,
        "count_sketch_input": "np.arange(1, length + 1, dtype=float32); nonzero outputs stored",
        "mt19937_seeds": MT_SEEDS, "logf_hard_cases": int(min(len(hard), 1500)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), **arrays)
    print(f"built the driver in {build_s:.1f} s ({' '.join(build_cmd[:4])} ...)")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {len(arrays)} arrays, "
          f"{len(CONFIGS)} configs) in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
