"""Where data files come from: an explicit folder, ``M3LAB_DATA_DIR``, the user cache, or a download.

The download path streams the canonical public URL (``checksums.json``) into the cache
with a progress bar, checks the byte size and SHA-256, and moves the file into place only
when both match, so the cache never holds a partial or corrupt file.

Regenerate ``checksums.json`` from a local mirror with ``python -m m3lab.data.sources DIR``.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import platformdirs
from tqdm.auto import tqdm

from .._io import atomic_file
from .records import DataError

CHECKSUMS_FILE = Path(__file__).with_name("checksums.json")

# Public data sets: where to download them, under which license (file sizes and hashes are filled in by main()).
SOURCES = {
    "xquad": {
        "url": "https://raw.githubusercontent.com/google-deepmind/xquad/master/{filename}",
        "license": "CC BY-SA 4.0",
        "pattern": "xquad.*.json",
    },
    "tatoeba": {
        "url": "https://raw.githubusercontent.com/facebookresearch/LASER/main/data/tatoeba/v1/{filename}",
        "license": "CC BY 2.0 FR (Tatoeba corpus)",
        "pattern": "tatoeba.*-eng.*",
    },
}


def cache_dir() -> Path:
    """Root of downloaded data sets: ``$M3LAB_CACHE_DIR``, else the platform's user cache for m3lab."""
    return Path(os.environ.get("M3LAB_CACHE_DIR") or platformdirs.user_cache_dir("m3lab")) / "datasets"


@functools.cache
def checksums() -> dict[str, Any]:
    """The table of canonical URLs, sizes and SHA-256 hashes of every downloadable file."""
    return json.loads(CHECKSUMS_FILE.read_text(encoding="utf-8"))


def resolve_data_file(dataset: str, filename: str, *, data_dir: str | Path | None = None) -> Path:
    """Path of ``<dataset>/<filename>``, looked up in this order:

    1. ``data_dir`` when given (the data-set folder itself is accepted too);
    2. ``$M3LAB_DATA_DIR`` when set (e.g. ``../shared/data`` offline and in CI);
    3. the user cache (``cache_dir()/<dataset>/<filename>``);
    4. a download from the canonical URL into that cache.

    A folder given by 1 or 2 is final: a file missing there raises ``DataError`` rather
    than silently going online.
    """
    root = data_dir if data_dir is not None else os.environ.get("M3LAB_DATA_DIR") or None
    if root is not None:
        root = Path(root).expanduser()
        for candidate in (root / dataset / filename, root / filename):
            if candidate.is_file():
                return candidate
        origin = "data_dir" if data_dir is not None else "M3LAB_DATA_DIR"
        raise DataError(f"{dataset} file {filename!r} not found in {origin} (looked for {root / dataset / filename})")
    cached = cache_dir() / dataset / filename
    if cached.is_file():
        return cached
    table = checksums().get(dataset)
    if table is None or filename not in table["files"]:
        raise DataError(f"unknown {dataset} file {filename!r}: it is not in {CHECKSUMS_FILE.name}")
    info = table["files"][filename]
    return download(table["url"].format(filename=filename), cached, expected_size=info["size"], sha256=info["sha256"])


def download(url: str, dest: str | Path, *, expected_size: int | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream ``url`` (``https://`` or ``file://``) to ``dest`` atomically and verify it.

    The bytes go to a temporary file beside ``dest``; a size or checksum mismatch, a
    network error or an interruption deletes it and raises (``DataError`` for the first
    three), so ``dest`` only ever appears complete.
    """
    dest = Path(dest)
    digest = hashlib.sha256()
    size = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "m3lab"})
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_file(dest, "wb") as out:
            total = expected_size or int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            # Checked inside the block: raising here makes atomic_file delete the partial file.
            if expected_size is not None and size != expected_size:
                raise DataError(f"downloaded {size} bytes from {url}, expected {expected_size}", path=dest)
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise DataError(f"SHA-256 mismatch for {url}: got {digest.hexdigest()}, expected {sha256}", path=dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DataError(f"could not download {url} ({e}); offline, point M3LAB_DATA_DIR at a local copy",
                        path=dest) from e
    return dest


def file_table(folder: str | Path, pattern: str) -> dict[str, dict[str, Any]]:
    """``{filename: {"size", "sha256"}}`` for the files in ``folder`` matching ``pattern``."""
    return {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(Path(folder).glob(pattern))}


def main(argv: list[str]) -> None:
    """Write ``checksums.json`` from a local mirror laid out as ``<dir>/<dataset>/<file>``."""
    if len(argv) != 1:
        sys.exit("usage: python -m m3lab.data.sources DATA_DIR   (e.g. ../shared/data)")
    table = {name: {**info, "files": file_table(Path(argv[0]) / name, info["pattern"])}
             for name, info in SOURCES.items()}
    for name, info in table.items():
        if not info["files"]:
            sys.exit(f"no {name} files matching {info['pattern']!r} under {Path(argv[0]) / name}")
    with atomic_file(CHECKSUMS_FILE) as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {CHECKSUMS_FILE} ({sum(len(i['files']) for i in table.values())} files)")


if __name__ == "__main__":
    main(sys.argv[1:])
