"""Tatoeba bitext from LASER: up to 1000 sentence pairs (language, English) for 112 languages.

The same files back MTEB's ``Tatoeba`` bitext-mining task. ``split="all"`` gives every
pair (the evaluation set); ``train``/``test`` split the pairs by a seeded permutation
of line indices, so they are disjoint, reproducible, and each keeps file order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._files import read_lines
from .records import BitextDataset, DataError
from .sources import resolve_data_file

# ISO 639-3 codes as LASER names its files (tatoeba.<code>-eng.<code>).
TATOEBA_LANGUAGES: tuple[str, ...] = (
    "afr", "amh", "ang", "ara", "arq", "arz", "ast", "awa", "aze", "bel", "ben", "ber", "bos", "bre", "bul", "cat",
    "cbk", "ceb", "ces", "cha", "cmn", "cor", "csb", "cym", "dan", "deu", "dsb", "dtp", "ell", "epo", "est", "eus",
    "fao", "fin", "fra", "fry", "gla", "gle", "glg", "gsw", "heb", "hin", "hrv", "hsb", "hun", "hye", "ido", "ile",
    "ina", "ind", "isl", "ita", "jav", "jpn", "kab", "kat", "kaz", "khm", "kor", "kur", "kzj", "lat", "lfn", "lit",
    "lvs", "mal", "mar", "max", "mhr", "mkd", "mon", "nds", "nld", "nno", "nob", "nov", "oci", "orv", "pam", "pes",
    "pms", "pol", "por", "ron", "rus", "slk", "slv", "spa", "sqi", "srp", "swe", "swg", "swh", "tam", "tat", "tel",
    "tgl", "tha", "tuk", "tur", "tzl", "uig", "ukr", "urd", "uzb", "vie", "war", "wuu", "xho", "yid", "yue", "zsm",
)

# ISO 639-1 codes (as used by XQuAD, the mini corpus and most tools) -> the LASER file code.
# LASER picks individual languages for macrolanguages: zh -> Mandarin, fa -> Iranian Persian, ...
ISO1_TO_TATOEBA = {
    "af": "afr", "am": "amh", "ar": "ara", "az": "aze", "be": "bel", "bg": "bul", "bn": "ben", "br": "bre",
    "bs": "bos", "ca": "cat", "cs": "ces", "cy": "cym", "da": "dan", "de": "deu", "el": "ell", "eo": "epo",
    "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fo": "fao", "fr": "fra", "fy": "fry",
    "ga": "gle", "gd": "gla", "gl": "glg", "he": "heb", "hi": "hin", "hr": "hrv", "hu": "hun", "hy": "hye",
    "ia": "ina", "id": "ind", "io": "ido", "is": "isl", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat",
    "kk": "kaz", "km": "khm", "ko": "kor", "ku": "kur", "la": "lat", "lt": "lit", "lv": "lvs", "mk": "mkd",
    "ml": "mal", "mn": "mon", "mr": "mar", "ms": "zsm", "nb": "nob", "nl": "nld", "nn": "nno", "no": "nob",
    "oc": "oci", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sk": "slk", "sl": "slv", "sq": "sqi",
    "sr": "srp", "sv": "swe", "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tk": "tuk", "tl": "tgl",
    "tr": "tur", "tt": "tat", "ug": "uig", "uk": "ukr", "ur": "urd", "uz": "uzb", "vi": "vie", "xh": "xho",
    "yi": "yid", "zh": "cmn",
}


def tatoeba_code(language: str) -> str:
    """The LASER code of ``language`` (ISO 639-3 as in the files, or ISO 639-1 such as ``de``)."""
    code = ISO1_TO_TATOEBA.get(language, language)
    if code not in TATOEBA_LANGUAGES:
        hint = " (English is the target side of every pair)" if language in ("en", "eng") else ""
        raise DataError(f"Tatoeba has no language {language!r}{hint}; it has {len(TATOEBA_LANGUAGES)} ISO 639-3 "
                        f"codes from {TATOEBA_LANGUAGES[0]} to {TATOEBA_LANGUAGES[-1]} (see TATOEBA_LANGUAGES)")
    return code


def load_tatoeba(language: str, *, split: str = "all", data_dir: str | Path | None = None,
                 test_fraction: float = 0.5, seed: int = 0) -> BitextDataset:
    """Sentence pairs ``(language, English)``; ``source`` holds the language, ``target`` English.

    ``train``/``test``: a permutation of the line indices seeded with ``seed``; the first
    ``round(n * test_fraction)`` indices are the test pairs, the rest the training pairs.
    """
    code = tatoeba_code(language)
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    src_path = resolve_data_file("tatoeba", f"tatoeba.{code}-eng.{code}", data_dir=data_dir)
    tgt_path = resolve_data_file("tatoeba", f"tatoeba.{code}-eng.eng", data_dir=data_dir)
    source, target = read_lines(src_path), read_lines(tgt_path)
    if len(source) != len(target):
        raise DataError(f"{len(source)} lines, but {tgt_path.name} has {len(target)}: the files are not aligned",
                        path=src_path)
    for path, lines in ((src_path, source), (tgt_path, target)):
        for i, line in enumerate(lines):
            if not line.strip():
                raise DataError("empty sentence", path=path, line=i + 1)

    name = f"tatoeba-{code}"
    if split != "all":
        order = np.random.default_rng(seed).permutation(len(source))
        n_test = round(len(source) * test_fraction)
        keep = np.sort(order[:n_test] if split == "test" else order[n_test:])
        source, target, name = [source[i] for i in keep], [target[i] for i in keep], f"{name}-{split}"
    return BitextDataset(name, code, source, target)
