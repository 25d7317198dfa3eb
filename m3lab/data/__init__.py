"""m3lab.data: every data set m3lab trains and evaluates on, behind one small API.

Records (``Document``, ``Query``, ``Qrels``, ``RetrievalDataset``, ``BitextDataset``,
``TrainingExample``) and loaders for XQuAD, Tatoeba, BEIR folders, plain corpora,
FlagEmbedding training files and the embedded mini corpus. Public data files are read
from ``data_dir``, ``$M3LAB_DATA_DIR`` or the user cache, or downloaded and verified
(see ``sources``). Bad input raises ``DataError`` naming the file, line and field.
"""
from .corpus import load_beir, load_corpus
from .mini import MINI_LANGUAGES, load_mini, mini_topics
from .mining import bm25_tokenize, mine_hard_negatives
from .records import BitextDataset, DataError, Document, Qrels, Query, RetrievalDataset, TrainingExample
from .sources import cache_dir, download, resolve_data_file
from .tatoeba import TATOEBA_LANGUAGES, load_tatoeba
from .training import (build_tatoeba_training, build_xquad_training, iter_training_file, read_training_file,
                       write_training_file)
from .xquad import XQUAD_LANGUAGES, load_xquad, load_xquad_long

__all__ = [
    "Document", "Query", "Qrels", "RetrievalDataset", "BitextDataset", "TrainingExample", "DataError",
    "XQUAD_LANGUAGES", "load_xquad", "load_xquad_long",
    "TATOEBA_LANGUAGES", "load_tatoeba",
    "load_beir", "load_corpus",
    "read_training_file", "iter_training_file", "write_training_file",
    "build_xquad_training", "build_tatoeba_training", "mine_hard_negatives", "bm25_tokenize",
    "MINI_LANGUAGES", "load_mini", "mini_topics",
    "resolve_data_file", "download", "cache_dir",
]
