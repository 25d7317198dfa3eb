"""Plain corpora (``.txt``, ``.jsonl``, ``.csv``, ``.tsv``) and BEIR-format benchmark folders."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ._files import existing_file, iter_jsonl, read_text
from .records import DataError, Document, Qrels, Query, RetrievalDataset

FORMATS = ("txt", "lines", "paragraphs", "jsonl", "csv", "tsv")
_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def load_corpus(path: str | Path, *, text_column: str = "text", format: str | None = None,
                language: str | None = None) -> list[Document]:
    """Read documents from a plain file; the format comes from the suffix unless ``format`` says.

    * ``txt``: blank-line separated paragraphs if the file has a blank line between two
      texts, else one document per line (force either with ``paragraphs`` / ``lines``);
    * ``jsonl``: one object per line with ``text_column`` and optional ``id`` (or ``_id``),
      ``title`` and ``lang`` (or ``language``);
    * ``csv`` / ``tsv``: a header row naming ``text_column`` and optional ``id``, ``title``,
      ``lang`` (or ``language``) columns. CSV follows RFC 4180 quoting; TSV has no quoting
      (quotes are text, as in MS MARCO-style files).

    Documents without an id get ``doc-{i}`` (``i`` their 0-based position). ``language``
    fills in documents that do not name theirs. An empty corpus or a repeated id raises
    ``DataError`` naming the file and line.
    """
    path = existing_file(path)
    fmt = format or _SUFFIXES.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise DataError(f"cannot read format {fmt!r}; pass format= one of {FORMATS}" if fmt else
                        f"cannot tell the format from the suffix {path.suffix!r}; pass format= one of {FORMATS}",
                        path=path)
    if fmt == "jsonl":
        records = _jsonl_documents(path, text_field=text_column, language=language)
    elif fmt in ("csv", "tsv"):
        records = _table_documents(path, text_column, fmt, language)
    else:
        text = read_text(path)
        if fmt == "paragraphs" or (fmt == "txt" and _BLANK_LINE.search(text.strip())):
            chunks = _BLANK_LINE.split(text)
        else:
            chunks = text.split("\n")
        records = [(0, None, chunk.strip(), None, language) for chunk in chunks if chunk.strip()]
    return _documents(records, path)


def load_beir(path: str | Path, *, split: str = "test", language: str | None = None) -> RetrievalDataset:
    """A BEIR-format folder: ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl``
    (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, header optional).

    As in BEIR, only the queries judged in ``qrels/<split>.tsv`` are kept.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError("BEIR folder not found", path=root)
    # BEIR corpora have some title-only documents, so an empty text is allowed there.
    corpus = _documents(_jsonl_documents(root / "corpus.jsonl", language=language, id_required=True, empty_text=True),
                        root / "corpus.jsonl")
    query_records = _jsonl_documents(root / "queries.jsonl", language=language, id_required=True)
    queries = [Query(d.id, d.text, d.language) for d in _documents(query_records, root / "queries.jsonl", "queries")]
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise DataError(f"no qrels for split {split!r} (splits here: {', '.join(splits) or 'none'})", path=qrels_path)

    doc_ids, query_ids = {d.id for d in corpus}, {q.id for q in queries}
    qrels: Qrels = {}
    for number, line in enumerate(read_text(qrels_path).split("\n"), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if number == 1 and len(cols) == 3 and not cols[2].strip().lstrip("-").isdigit():
            continue  # header row (query-id, corpus-id, score)
        if len(cols) != 3:
            raise DataError(f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}",
                            path=qrels_path, line=number)
        qid, did, score = (c.strip() for c in cols)
        if qid not in query_ids:
            raise DataError(f"query {qid!r} is not in queries.jsonl", path=qrels_path, line=number, field="query-id")
        if did not in doc_ids:
            raise DataError(f"document {did!r} is not in corpus.jsonl", path=qrels_path, line=number,
                            field="corpus-id")
        try:
            qrels.setdefault(qid, {})[did] = int(score)
        except ValueError:
            raise DataError(f"expected an integer, got {score!r}", path=qrels_path, line=number,
                            field="score") from None
    queries = [q for q in queries if q.id in qrels]
    return RetrievalDataset(root.name, corpus, queries, qrels, query_language=language, corpus_language=language)


# A parsed record before ids are settled: (line, id or None, text, title, language).
_Record = tuple[int, str | None, str, str | None, str | None]


def _documents(records: list[_Record], path: Path, what: str = "documents") -> list[Document]:
    if not records:
        raise DataError(f"no {what}: the file is empty", path=path)
    docs, first_line = [], {}
    for i, (line, doc_id, text, title, lang) in enumerate(records):
        doc_id = doc_id if doc_id is not None else f"doc-{i}"
        if doc_id in first_line:
            raise DataError(f"duplicate id {doc_id!r} (first on line {first_line[doc_id]})", path=path,
                            line=line or None, field="id")
        first_line[doc_id] = line
        docs.append(Document(doc_id, text, lang, title))
    return docs


def _jsonl_documents(path: Path, *, text_field: str = "text", language: str | None = None,
                     id_required: bool = False, empty_text: bool = False) -> list[_Record]:
    records = []
    for number, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=number)
        fields = {"text": text_field, "id": "_id" if "_id" in obj else "id", "title": "title",
                  "lang": "language" if "language" in obj else "lang"}
        if id_required and fields["id"] not in obj:
            raise DataError("missing", path=path, line=number, field="_id")
        values = _fields(obj, fields, path, number, empty_text=empty_text)
        records.append((number, values["id"], values["text"], values["title"], values["lang"] or language))
    return records


def _table_documents(path: Path, text_column: str, fmt: str, language: str | None) -> list[_Record]:
    reader = csv.DictReader(io.StringIO(read_text(path)), delimiter="\t" if fmt == "tsv" else ",",
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    columns = reader.fieldnames or []
    if text_column not in columns:
        raise DataError(f"no column {text_column!r} in the header (columns: {', '.join(columns) or 'none'})",
                        path=path, line=1, field=text_column)
    fields = {"text": text_column, "id": "id", "title": "title",
              "lang": "language" if "language" in columns else "lang"}
    records = []
    try:
        for row in reader:
            values = _fields(row, fields, path, reader.line_num)
            records.append((reader.line_num, values["id"], values["text"], values["title"], values["lang"] or language))
    except csv.Error as e:  # e.g. a field over csv.field_size_limit(); the bad record starts after the last one read
        raise DataError(f"malformed {fmt.upper()} ({e})", path=path, line=reader.line_num + 1) from None
    return records


def _fields(obj: dict, fields: dict[str, str], path: Path, line: int, *, empty_text: bool = False) -> dict:
    """One record's text (a non-empty string unless ``empty_text``) and optional id, title and language."""
    out = {}
    for key, name in fields.items():
        value = obj.get(name)
        if key == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric ids are common in JSON
        if value is not None and not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=name)
        out[key] = value or None
    text = fields["text"]
    if not isinstance(obj.get(text), str):
        raise DataError("missing" if text not in obj else "is empty", path=path, line=line, field=text)
    if not obj[text].strip() and not empty_text:
        raise DataError("is empty", path=path, line=line, field=text)
    out["text"] = obj[text]
    return out
