"""The corpora the app can index: the embedded mini corpus, XQuAD, Tatoeba and uploaded files.

Each builder returns a :class:`Corpus` with per-document labels to colour the projection by
(language; category and topic where the data has them). Loading is done by :mod:`m3lab.data`;
this module only names the choices and checks uploads against the app's limits.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m3lab.data import MINI_LANGUAGES, DataError, Document, load_corpus, load_mini, load_tatoeba, mini_topics
from m3lab.data.xquad import xquad_paragraphs

#: upload limits, stated in the UI
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_DOCUMENTS = 5000
UPLOAD_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")

#: parallel languages offered for XQuAD and Tatoeba (those of the mini corpus)
PARALLEL_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "zh", "ar", "ru")
TATOEBA_PAIRS = 300  # sentence pairs per Tatoeba language: enough for a map, quick to index


@dataclass
class Corpus:
    """Documents to index with a display name and, per document, the labels the projection colours by."""

    name: str
    documents: list[Document]
    labels: dict[str, list[str]] = field(default_factory=dict)  # grouping -> one label per document

    def __post_init__(self) -> None:
        if not self.documents:
            raise DataError(f"corpus {self.name!r} has no documents")
        self.labels.setdefault("language", [d.language or "unknown" for d in self.documents])
        for key, values in self.labels.items():
            if len(values) != len(self.documents):
                raise ValueError(f"corpus {self.name!r}: {len(values)} {key} labels for "
                                 f"{len(self.documents)} documents")

    @property
    def groupings(self) -> list[str]:
        """The labels available for colouring, ``language`` first."""
        return list(self.labels)


# ----------------------------------------------------------------------------- built-in corpora

def mini_corpus(languages: Sequence[str] = MINI_LANGUAGES, *, path: str | Path | None = None) -> Corpus:
    """The embedded mini corpus in ``languages``: one passage per topic and language, parallel across languages."""
    languages = list(languages)
    ds = load_mini(languages=languages, path=path)
    category = {t["id"]: t["category"] for t in mini_topics(path)}
    topics = [d.id.rsplit("/", 1)[0] for d in ds.corpus]
    label = "all languages" if sorted(languages) == sorted(MINI_LANGUAGES) else ", ".join(languages)
    return Corpus(f"mini corpus ({label})", ds.corpus,
                  {"language": [d.language or "unknown" for d in ds.corpus],
                   "category": [category[t] for t in topics], "topic": topics})


def xquad_corpus(languages: Sequence[str]) -> Corpus:
    """XQuAD paragraphs in ``languages`` (240 per language, parallel); ids ``p{article}_{paragraph}/{lang}``."""
    docs, category, topic = [], [], []
    for lang in languages:
        for p in xquad_paragraphs(lang):
            docs.append(Document(f"{p.doc_id}/{lang}", p.context, lang))
            category.append(p.title.replace("_", " "))
            topic.append(p.doc_id)
    return Corpus(f"XQuAD ({', '.join(languages)})", docs, {"language": [d.language for d in docs],
                                                           "category": category, "topic": topic})


def tatoeba_corpus(language: str, pairs: int = TATOEBA_PAIRS) -> Corpus:
    """The first ``pairs`` Tatoeba sentence pairs of ``language`` and English, both sides as documents."""
    bitext = load_tatoeba(language)
    n = min(pairs, len(bitext))
    docs, topic = [], []
    for i in range(n):
        docs.append(Document(f"{bitext.language}-{i}/{language}", bitext.source[i], language))
        docs.append(Document(f"{bitext.language}-{i}/en", bitext.target[i], "en"))
        topic += [f"pair {i}"] * 2
    return Corpus(f"Tatoeba ({language}–en, {n} pairs)", docs, {"language": [d.language for d in docs], "topic": topic})


def builtin_choices(mini_languages: Sequence[str] = MINI_LANGUAGES) -> list[str]:
    """The names of the built-in corpora, as the Corpus view lists them."""
    choices = ["mini corpus: all languages"] + [f"mini corpus: {lang}" for lang in MINI_LANGUAGES]
    if list(mini_languages) != list(MINI_LANGUAGES):
        choices.insert(0, f"mini corpus: {', '.join(mini_languages)}")
    choices += ["XQuAD: en", f"XQuAD: parallel ({', '.join(PARALLEL_LANGUAGES[:3])})"]
    choices += [f"Tatoeba: {lang}–en" for lang in PARALLEL_LANGUAGES if lang != "en"]
    return choices


def load_builtin(choice: str) -> Corpus:
    """The corpus named by one of :func:`builtin_choices` (``DataError`` when its files are unavailable)."""
    kind, _, arg = (s.strip() for s in choice.partition(":"))
    if kind == "mini corpus":
        return mini_corpus(MINI_LANGUAGES if arg == "all languages" else [a.strip() for a in arg.split(",")])
    if kind == "XQuAD":
        if arg.startswith("parallel"):
            return xquad_corpus([a.strip() for a in arg[arg.index("(") + 1:arg.rindex(")")].split(",")])
        return xquad_corpus([arg])
    if kind == "Tatoeba":
        return tatoeba_corpus(arg.split("–")[0])
    raise ValueError(f"unknown built-in corpus {choice!r}")


# ----------------------------------------------------------------------------- uploads

class UploadError(ValueError):
    """An upload the app refuses: the message is shown in the UI as is."""


def upload_corpus(path: str | Path, *, display_name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_documents: int = MAX_UPLOAD_DOCUMENTS) -> Corpus:
    """Read an uploaded ``.txt``/``.jsonl``/``.csv``/``.tsv`` file within the limits.

    Errors name the file by ``display_name`` (the user's file name, not the server's temporary
    path) and, for bad records, the line and field as :class:`m3lab.data.DataError` gives them.
    """
    path = Path(path)
    name = display_name or path.name
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise UploadError(f"{name}: unsupported file type {path.suffix or '(none)'!r}; "
                          f"upload one of {', '.join(UPLOAD_SUFFIXES)}")
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB upload limit")
    if size == 0:
        raise UploadError(f"{name}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise UploadError(f"{name}: this looks like a binary file (it contains NUL bytes); upload UTF-8 text")
    try:
        docs = load_corpus(path)
    except DataError as err:  # re-located on the user's file name
        raise UploadError(str(DataError(err.message, path=name, line=err.line, field=err.field))) from None
    if len(docs) > max_documents:
        raise UploadError(f"{name}: {len(docs)} documents is over the limit of {max_documents}")
    return Corpus(f"upload {name}", docs)


# ----------------------------------------------------------------------------- data sets with questions

def evaluation_choices(mini_languages: Sequence[str] = MINI_LANGUAGES) -> list[str]:
    """The data sets the Evaluate view can score (a corpus with questions and relevance judgements)."""
    choices = [f"mini corpus: {', '.join(mini_languages)}"]
    if list(mini_languages) != list(MINI_LANGUAGES):
        choices.append("mini corpus: all languages")
    return choices + [f"XQuAD: {lang}" for lang in PARALLEL_LANGUAGES]


#: what an evaluation upload may hold: a BEIR folder as a .zip, or its files
EVAL_UPLOAD_SUFFIXES = (".zip", ".jsonl", ".tsv")
MAX_UNZIPPED_BYTES = 4 * MAX_UPLOAD_BYTES


def upload_evaluation(files: Sequence[str | Path], *, corpus: Sequence[Document] | None = None,
                      names: Sequence[str] | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
                      max_documents: int = MAX_UPLOAD_DOCUMENTS):
    """A :class:`m3lab.data.RetrievalDataset` from uploaded files, read by :func:`m3lab.data.load_beir`:
    a BEIR folder as one ``.zip`` (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``), or the files
    themselves: ``queries*.jsonl``, a qrels ``.tsv`` and, optionally, ``corpus*.jsonl``. Without a
    corpus the questions are judged against ``corpus`` (the session's documents), so a qrels file
    alone evaluates the corpus one is looking at. Errors name the user's file (``names``), line and field.
    """
    import shutil
    import tempfile
    import zipfile

    from m3lab.data import load_beir

    paths = [Path(f) for f in files]
    names = list(names) if names is not None else [p.name for p in paths]
    if not paths:
        raise UploadError("upload a BEIR folder as .zip, or queries.jsonl and a qrels .tsv")
    total = 0
    for path, name in zip(paths, names):
        if path.suffix.lower() not in EVAL_UPLOAD_SUFFIXES:
            raise UploadError(f"{name}: unsupported file type {path.suffix or '(none)'!r}; upload one of "
                              f"{', '.join(EVAL_UPLOAD_SUFFIXES)}")
        total += path.stat().st_size
    if total > max_bytes:
        raise UploadError(f"{', '.join(names)}: {total / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB "
                          "upload limit")
    folder = Path(tempfile.mkdtemp(prefix="m3lab-eval-"))
    shown: dict[Path, str] = {}  # a file in the temporary folder -> how the user knows it
    on_session_corpus = False
    try:
        if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
            with zipfile.ZipFile(paths[0]) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
                    raise UploadError(f"{names[0]}: over {MAX_UNZIPPED_BYTES / 2**20:.0f} MB unpacked")
                for m in members:
                    parts = Path(m.filename).parts
                    if m.filename.startswith("/") or ".." in parts:
                        raise UploadError(f"{names[0]}: unsafe path {m.filename!r} in the archive")
                z.extractall(folder)
            found = sorted(folder.rglob("queries.jsonl"))
            if not found:
                raise UploadError(f"{names[0]}: no queries.jsonl in the archive (a BEIR folder has corpus.jsonl, "
                                  "queries.jsonl and qrels/test.tsv)")
            root = found[0].parent
            shown = {p: f"{names[0]}/{p.relative_to(folder)}" for p in folder.rglob("*") if p.is_file()}
        else:
            root = folder
            (root / "qrels").mkdir()
            roles = {"corpus": None, "queries": None, "qrels": None}
            for path, name in zip(paths, names):
                role = "qrels" if path.suffix.lower() == ".tsv" else "corpus" if name.lower().startswith("corpus") \
                    else "queries" if name.lower().startswith("queries") else None
                if role is None:
                    raise UploadError(f"{name}: name the files corpus*.jsonl, queries*.jsonl and *.tsv (the qrels)")
                if roles[role] is not None:
                    raise UploadError(f"{name}: a second {role} file ({roles[role]} is the first)")
                roles[role] = name
                target = root / ("qrels/test.tsv" if role == "qrels" else f"{role}.jsonl")
                shutil.copyfile(path, target)
                shown[target] = name
            missing = [r for r in ("queries", "qrels") if roles[r] is None]
            if missing:
                raise UploadError(f"no {' and no '.join(missing)} file: upload queries*.jsonl and a qrels .tsv "
                                  "(and corpus*.jsonl, or the session's corpus is used)")
            if roles["corpus"] is None:
                if not corpus:
                    raise UploadError("no corpus*.jsonl and no session corpus to judge the questions against")
                with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
                    for d in corpus:
                        f.write(json.dumps({"_id": d.id, "text": d.text, "title": d.title or ""},
                                           ensure_ascii=False) + "\n")
                shown[root / "corpus.jsonl"] = "this session's corpus"
                on_session_corpus = True
        try:
            dataset = load_beir(root)
        except DataError as err:
            where = shown.get(Path(err.path), err.path) if err.path is not None else None
            raise UploadError(str(DataError(err.message, path=where, line=err.line, field=err.field))) from None
        if len(dataset.corpus) > max_documents:
            raise UploadError(f"{len(dataset.corpus)} documents is over the limit of {max_documents}")
        dataset.name = f"upload {', '.join(names)}" + (" on this session's corpus" if on_session_corpus else "")
        return dataset
    except zipfile.BadZipFile:
        raise UploadError(f"{names[0]}: not a valid .zip archive") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_evaluation_dataset(choice: str):
    """The :class:`m3lab.data.RetrievalDataset` named by one of :func:`evaluation_choices`."""
    from m3lab.data import load_xquad

    kind, _, arg = (s.strip() for s in (choice or "").partition(":"))
    if kind == "mini corpus":
        return load_mini(languages=MINI_LANGUAGES if arg == "all languages" else [a.strip() for a in arg.split(",")])
    if kind == "XQuAD" and arg:
        return load_xquad(arg)
    raise ValueError(f"unknown data set {choice!r}")
