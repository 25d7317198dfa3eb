"""2-D maps of dense embeddings: UMAP for real corpora, PCA for very small ones.

    proj = fit_projection(index.dense)          # corpus map, (n, 2) in proj.coords
    xy = proj.transform(query_dense)            # queries placed in the same map
    proj.save("map.npz"); Projection.load("map.npz")

``transform`` is deterministic and cheap, so the app can place every query:

* PCA: the exact linear projection onto the two principal axes;
* UMAP: from the ``n_neighbors`` most similar corpus vectors and UMAP's fuzzy membership
  weights exp(-(d_i - rho) / sigma) on cosine distances (rho = the nearest distance, sigma
  set so the weights sum to log2(k)), as ``umap.UMAP.transform`` starts. UMAP starts at the
  weighted *mean* of the neighbours' map positions and then refines it; we take their weighted
  geometric *median* instead (Weiszfeld's iterations from the mean), which needs no refinement
  epochs: a query whose neighbours lie in several clusters lands in the heaviest cluster
  rather than in the empty space between them. A corpus vector lands at (or next to) its own point.

Multilingual corpora: ``centre_by=languages`` subtracts each language's mean vector before
mapping (Libovický et al., 2020, "On the language neutrality of pre-trained multilingual
representations"). A model's vectors usually carry a language component that makes every
language its own cluster; without it, translations of one passage sit together as far as the
model aligns their meaning. New vectors are centred by the mean of their own label, given or
taken from their nearest corpus vector (the language component makes that reliable).

Files are plain ``.npz`` (no pickle), written atomically.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_file

METHODS = ("auto", "umap", "pca")
#: below this many points ``method="auto"`` uses PCA: UMAP's neighbour graph needs a real corpus
MIN_UMAP_POINTS = 30


@dataclass
class Projection:
    """A fitted 2-D map of ``reference`` vectors (one row per corpus item); see :func:`fit_projection`."""

    method: str                      # "umap" | "pca"
    coords: np.ndarray               # (n, 2) float32, the map of the reference vectors
    reference: np.ndarray            # (n, d) float32, unit rows (centred first if centred): what was mapped
    mean: np.ndarray | None = None   # (d,) PCA centre
    components: np.ndarray | None = None  # (2, d) PCA axes
    n_neighbors: int = 15
    group_names: np.ndarray | None = None  # (g,) labels whose means were removed (``centre_by``)
    group_means: np.ndarray | None = None  # (g, d) their mean unit vectors
    raw: np.ndarray | None = None          # (n, d) the unit vectors before centring, to label new vectors
    groups: np.ndarray | None = None       # (n,) index into group_names of each reference vector

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def centred(self) -> bool:
        return self.group_means is not None

    def transform(self, vectors: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        """Coordinates (m, 2) of new vectors (m, d) in this map.

        For a centred map, ``labels`` names each vector's group (e.g. its language); a label the
        map does not know, or none, is taken from the nearest corpus vector.
        """
        x = _as_matrix(vectors, "vectors")
        if x.shape[1] != self.reference.shape[1]:
            raise ValueError(f"vectors have dimension {x.shape[1]}, "
                             f"the map was fitted on {self.reference.shape[1]}-d vectors")
        x = _unit(x)
        if self.centred:
            x = _unit(x - self.group_means[self.group_of(x, labels)])
        if self.method == "pca":
            return ((x - self.mean) @ self.components.T).astype(np.float32)
        return _neighbour_placement(x, self.reference, self.coords, self.n_neighbors)

    def group_of(self, x: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        """Group index of each unit vector: its label's, else its nearest corpus vector's."""
        known = {str(g): i for i, g in enumerate(self.group_names)}
        given = [known.get(str(lab)) for lab in labels] if labels is not None else [None] * len(x)
        if len(given) != len(x):
            raise ValueError(f"{len(given)} labels for {len(x)} vectors")
        nearest = self.groups[np.argmax(x @ self.raw.T, axis=1)]
        return np.array([g if g is not None else n for g, n in zip(given, nearest)], dtype=np.int64)

    def save(self, path: str | Path) -> Path:
        """Write the map to ``path`` (``.npz``) atomically."""
        path = Path(path)
        arrays = {"method": np.array(self.method), "coords": self.coords, "reference": self.reference,
                  "n_neighbors": np.array(self.n_neighbors)}
        if self.method == "pca":
            arrays.update(mean=self.mean, components=self.components)
        if self.centred:
            arrays.update(group_names=np.asarray(self.group_names, dtype=str), group_means=self.group_means,
                          raw=self.raw, groups=self.groups)
        with atomic_file(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Projection":
        """Read a map written by :meth:`save`; a damaged file raises ``ValueError`` naming it."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                method = str(z["method"])
                get = lambda key: z[key] if key in z.files else None  # noqa: E731
                proj = cls(method=method, coords=z["coords"].astype(np.float32),
                           reference=z["reference"].astype(np.float32), mean=get("mean"),
                           components=get("components"), n_neighbors=int(z["n_neighbors"]),
                           group_names=get("group_names"), group_means=get("group_means"), raw=get("raw"),
                           groups=get("groups"))
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated zip, missing key, pickled object...
            raise ValueError(f"{path}: not a projection file ({type(err).__name__}: {err})") from None
        if method not in ("umap", "pca") or proj.coords.shape != (len(proj.reference), 2) or \
                (method == "pca" and proj.components is None):
            raise ValueError(f"{path}: not a projection file (method {method!r}, coords {proj.coords.shape})")
        return proj


def fit_projection(vectors: np.ndarray, method: str = "auto", *, centre_by: Sequence[str] | None = None,
                   n_neighbors: int = 15, min_dist: float = 0.1, random_state: int = 0) -> Projection:
    """Fit a 2-D map of ``vectors`` (n, d), compared by cosine similarity as the dense scores are.

    ``method``: ``"umap"``, ``"pca"`` or ``"auto"`` (UMAP from :data:`MIN_UMAP_POINTS` points
    on, PCA below). ``centre_by``: one label per vector (e.g. its language); each label's mean
    unit vector is subtracted before mapping (see the module docstring). UMAP runs with a fixed
    ``random_state``, so the same corpus gives the same map; ``n_neighbors`` is capped at n - 1.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = _unit(_as_matrix(vectors, "vectors"))
    n = len(x)
    if n < 2:
        raise ValueError(f"a map needs at least 2 vectors, got {n}")
    centring: dict = {}
    if centre_by is not None:
        labels = np.asarray([str(lab) for lab in centre_by])
        if len(labels) != n:
            raise ValueError(f"centre_by has {len(labels)} labels for {n} vectors")
        names, groups = np.unique(labels, return_inverse=True)
        means = np.stack([x[groups == g].mean(axis=0) for g in range(len(names))]).astype(np.float32)
        centring = dict(group_names=names, group_means=means, raw=x, groups=groups.astype(np.int64))
        x = _unit(x - means[groups])
    if method == "auto":
        method = "umap" if n >= MIN_UMAP_POINTS else "pca"
    if method == "pca":
        mean = x.mean(axis=0)
        # principal axes = right singular vectors of the centred data
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        components = np.zeros((2, x.shape[1]), dtype=np.float32)
        components[: min(2, len(vt))] = vt[:2]
        return Projection("pca", ((x - mean) @ components.T).astype(np.float32), x, mean.astype(np.float32),
                          components, n_neighbors, **centring)
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 vectors, got {n}; use method='pca'")
    import umap  # imported here: it compiles with numba on first use

    k = max(2, min(n_neighbors, n - 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed seed runs single-threaded
        reducer = umap.UMAP(n_neighbors=k, n_components=2, metric="cosine", min_dist=min_dist,
                            random_state=random_state, init="spectral" if n > k + 1 else "random")
        coords = reducer.fit_transform(x)
    return Projection("umap", np.asarray(coords, dtype=np.float32), x, n_neighbors=k, **centring)


# ----------------------------------------------------------------------------- helpers

def _as_matrix(vectors, name: str) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (n, d) matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _neighbour_placement(x: np.ndarray, reference: np.ndarray, coords: np.ndarray, k: int) -> np.ndarray:
    """UMAP's initial placement of new points: fuzzy-membership-weighted mean of their k nearest neighbours' coords."""
    k = max(1, min(k, len(reference)))
    dist = np.clip(1.0 - x @ reference.T, 0.0, 2.0)                  # cosine distance, (m, n)
    nn = np.argpartition(dist, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(dist, nn, axis=1)                          # (m, k)
    rho = d.min(axis=1, keepdims=True)
    sigma = _smooth_knn_sigma(d - rho, np.log2(k))
    w = np.exp(-(d - rho) / sigma)
    w /= w.sum(axis=1, keepdims=True)
    return _geometric_median(coords[nn].astype(np.float64), w).astype(np.float32)


def _geometric_median(points: np.ndarray, w: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Per row the point minimising sum_k w_k |y - p_k| (Weiszfeld's algorithm, from the weighted mean).

    ``points`` (m, k, 2), ``w`` (m, k) summing to 1. Robust: more than half of the weight in one
    cluster keeps the result inside it.
    """
    y = np.einsum("mk,mkc->mc", w, points)
    scale = max(float(np.ptp(points.reshape(-1, 2), axis=0).max()), 1e-12)
    for _ in range(iterations):
        dist = np.linalg.norm(points - y[:, None], axis=-1)
        inv = w / np.maximum(dist, 1e-9 * scale)              # a point on a data point stays there
        new = np.einsum("mk,mkc->mc", inv, points) / inv.sum(axis=1, keepdims=True)
        if np.abs(new - y).max() < 1e-7 * scale:
            return new
        y = new
    return y


def _smooth_knn_sigma(d: np.ndarray, target: float, iterations: int = 64) -> np.ndarray:
    """Per row the sigma with sum_j exp(-d_j / sigma) = target, by bisection (UMAP's smooth_knn_dist)."""
    lo = np.zeros((len(d), 1))
    hi = np.full((len(d), 1), np.inf)
    sigma = np.ones((len(d), 1))
    for _ in range(iterations):
        total = np.exp(-d / sigma).sum(axis=1, keepdims=True)
        too_big = total > target                                   # weights too wide: shrink sigma
        hi = np.where(too_big, sigma, hi)
        lo = np.where(too_big, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2, (lo + hi) / 2)
    return np.maximum(sigma, 1e-3 * max(float(np.mean(d)), 1e-12))
