"""``m3lab index build`` and ``m3lab index info``: corpus indexes from the command line."""
from __future__ import annotations

import argparse
import json

from .spec import PRESETS, describe_spec


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a corpus index, or show what an index holds")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")

    b = isub.add_parser("build", help="encode a corpus file and save its index")
    b.add_argument("corpus", help="a .txt, .jsonl, .csv or .tsv corpus (as the app's upload)")
    b.add_argument("out", nargs="?", default=None,
                   help="directory to write the index to (written atomically); not needed with --url")
    b.add_argument("--model", default="default", help="model directory, hub id, or 'default' (default)")
    b.add_argument("--spec", default=None, metavar="SPEC",
                   help="storage options: a preset (" + ", ".join(PRESETS) + ") and/or key=value pairs, e.g. "
                        "'compact' or 'muvera,colbert_dtype=int8' (default: m3lab's default storage)")
    b.add_argument("--text-column", default="text", help="jsonl/csv field holding the text (default text)")
    b.add_argument("--max-length", type=int, default=None, help="max tokens per document (default: the model's)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--backend", choices=["m3lab", "qdrant"], default="m3lab",
                   help="m3lab's own index folder (default) or a Qdrant collection (QdrantIndex): embedded "
                        "qdrant-edge in OUT, or a server/cluster with --url")
    b.add_argument("--url", default=None, help="--backend qdrant: a Qdrant server or cluster (OUT is then ignored)")
    b.add_argument("--api-key", default=None, help="--backend qdrant: the server's API key")
    b.add_argument("--collection", default="m3lab", help="--backend qdrant: collection name (default m3lab)")
    b.add_argument("--shards", type=int, default=None, help="--backend qdrant on a cluster: shard number")
    b.add_argument("--replication-factor", type=int, default=None, help="--backend qdrant on a cluster")
    b.add_argument("--chunk-size", type=int, default=256,
                   help="--backend qdrant: documents encoded and written at a time (the unit of resuming, and "
                        "of sharing the work between torchrun ranks; default 256)")
    b.add_argument("--colbert-dtype", choices=["float16", "float32"], default="float16",
                   help="--backend qdrant: multi-vector storage (default float16)")
    b.set_defaults(func=_build)

    i = isub.add_parser("info", help="print an index's spec, sizes and model (reads the manifest only)")
    i.add_argument("path", help="index directory")
    i.add_argument("--json", action="store_true", help="print the manifest's summary as JSON")
    i.set_defaults(func=_info)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from ..data.corpus import load_corpus
    from ..modeling import M3Model
    from .index import CorpusIndex
    from .spec import parse_index_spec

    options = parse_index_spec(args.spec)  # a bad spec fails before the model loads
    if args.out is None and not (args.backend == "qdrant" and args.url):
        raise ValueError("m3lab index build: give the output directory (OUT), or --backend qdrant --url URL")
    if args.backend == "qdrant" and options:
        raise ValueError("--spec applies to m3lab's own index; --backend qdrant takes --colbert-dtype")
    documents = load_corpus(args.corpus, text_column=args.text_column)
    if args.backend == "qdrant":
        return _build_qdrant(args, documents)
    model = M3Model.from_pretrained(args.model)
    index = CorpusIndex.build(model, documents, max_length=args.max_length, batch_size=args.batch_size, **options)
    index.save(args.out)
    print(summary(CorpusIndex.read_manifest(args.out)))
    return 0


def _build_qdrant(args: argparse.Namespace, documents) -> int:
    """``--backend qdrant``; under torchrun (``WORLD_SIZE`` > 1) every rank encodes its share of the chunks."""
    import os
    import sys

    import torch
    import torch.distributed as dist

    from ..modeling import M3Model
    from .qdrant import QdrantIndex

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = None
    if world > 1:
        cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    try:
        model = M3Model.from_pretrained(args.model, device=device)
        where = {"url": args.url, "api_key": args.api_key} if args.url else {"path": args.out}
        index = QdrantIndex.build(model, documents, collection=args.collection, max_length=args.max_length,
                                  batch_size=args.batch_size, chunk_size=args.chunk_size,
                                  colbert_dtype=args.colbert_dtype, shards=args.shards,
                                  replication_factor=args.replication_factor, **where)
        rank = dist.get_rank() if world > 1 else 0
        if world > 1:
            print(f"rank {rank}/{world}: encoded {index.encoded_here} of {len(index)} documents", file=sys.stderr,
                  flush=True)
        if rank == 0:
            print(json.dumps(index.info(), indent=2))
        index.close()
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .index import CorpusIndex
    from .qdrant import MANIFEST as QDRANT_MANIFEST

    if (Path(args.path) / QDRANT_MANIFEST).is_file():  # an embedded Qdrant index: its manifest says it all
        manifest = json.loads((Path(args.path) / QDRANT_MANIFEST).read_text(encoding="utf-8"))
        record = {k: manifest.get(k) for k in ("format", "model", "settings", "corpus", "documents_done",
                                               "complete", "created")}
        print(json.dumps(record, indent=2))
        return 0
    manifest = CorpusIndex.read_manifest(args.path)
    print(json.dumps(info_record(manifest), indent=2) if args.json else summary(manifest))
    return 0


def info_record(manifest: dict) -> dict:
    """What ``m3lab index info`` shows, from a manifest: spec, documents, model, bytes on disk per structure."""
    n = max(int(manifest["corpus"]["n_documents"]), 1)
    files = manifest["files"]
    groups: dict[str, int] = {}
    for name, info in files.items():
        key = ("dense" if name.startswith("dense") else "sparse" if name.startswith("sparse")
               else "colbert" if name.startswith("colbert") else "muvera" if name.startswith("muvera") else "other")
        groups[key] = groups.get(key, 0) + int(info["bytes"])
    arrays = manifest["arrays"]
    vectors = arrays.get("colbert_vectors", {}).get("shape", [0])[0]
    return {"spec": describe_spec(manifest["settings"]), "documents": int(manifest["corpus"]["n_documents"]),
            "model": manifest["model"]["name_or_path"], "store": manifest["settings"]["store"],
            "multi_vectors_per_document": vectors / n if vectors else None,
            "bytes": groups, "bytes_per_document": {k: round(v / n, 1) for k, v in groups.items()},
            "total_bytes": sum(groups.values()), "settings": manifest["settings"],
            "m3lab_version": manifest.get("m3lab_version"), "created": manifest.get("created")}


def summary(manifest: dict) -> str:
    """A few readable lines about an index (``m3lab index info``, the app's Corpus view)."""
    r = info_record(manifest)
    lines = [f"spec:      {r['spec']}",
             f"documents: {r['documents']:,}   model: {r['model']}   stored: {', '.join(r['store'])}",
             f"size:      {_size(r['total_bytes'])} on disk, {_size(r['total_bytes'] / max(r['documents'], 1))} "
             "per document"]
    for key, b in sorted(r["bytes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {key:<8} {_size(b):>10}  ({_size(r['bytes_per_document'][key])} per document)")
    if r["multi_vectors_per_document"]:
        lines.append(f"multi-vectors per document: {r['multi_vectors_per_document']:.1f}")
    return "\n".join(lines)


def _size(b: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if b < 1000 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1000
    return f"{b:.1f} GB"
