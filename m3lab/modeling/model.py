"""The M3 model: one Hugging Face encoder, three retrieval functions (paper section 3.2).

``M3Model`` wraps any encoder (XLM-R as in bge-m3, BERT/MiniLM, ...) with the two
heads of bge-m3 and reads and writes bge-m3's checkpoint layout: the encoder directory
plus ``colbert_linear.pt`` (Linear d->d) and ``sparse_linear.pt`` (Linear d->1). The
functions themselves live in :mod:`m3lab.modeling.functions`, the scores in :mod:`m3lab.scoring`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import scoring
from .._io import atomic_directory, write_json
from .functions import (
    POOLINGS,
    _max_weights,
    colbert_embedding,
    dense_embedding,
    init_heads,
    sparse_token_weights,
)
from .hub import (
    COLBERT_FILE,
    CONFIG_FILE,
    DEFAULT_MAX_LENGTHS,
    DEFAULT_PROMPTS,
    DELTA_FILE,
    SPARSE_FILE,
    apply_encoder_delta,
    saved_base,
    _cpu_float_state,
    _detect_pooling,
    _download_from_hub,
    _load_state,
    resolve_model_path,
    saved_settings,
)
from .outputs import EncodeOutput, M3Embeddings, ScoreOutput

if TYPE_CHECKING:
    from .pool import EncodePool

logger = logging.getLogger("m3lab")

MCLS_INTERVAL = 256  # appendix B.2: a [CLS] every 256 tokens


#: The fixed cost of one forward pass on CPU, in tokens: encode cuts a length-sorted batch
#: early where the padding it saves is worth more than one more call (see plan_batches).
CPU_BATCH_OVERHEAD_TOKENS = 128


def plan_batches(lengths: Sequence[int], batch_size: int,
                 overhead_tokens: float | None = CPU_BATCH_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Group texts (by index) into batches of at most ``batch_size``, longest first.

    Texts are sorted by decreasing token length, as bge-m3's encode does, so a batch pads
    to its first text. Fixed-size batches of sorted texts still pad a lot where lengths
    fall fast (25% of XQuAD paragraph tokens at batch 32). With ``overhead_tokens`` the
    sorted run is cut where that pays: the cut points minimise
    sum over batches of (texts x longest length + overhead_tokens), i.e. padded tokens plus
    a fixed cost per forward pass, by dynamic programming (n x batch_size steps).
    ``None`` cuts every ``batch_size`` texts (used on GPUs, where a fuller batch is cheap).
    """
    order = np.argsort([-n for n in lengths], kind="stable")
    n = len(order)
    if overhead_tokens is None or n <= 1:
        return [order[s:s + batch_size] for s in range(0, n, batch_size)]
    sorted_len = [int(lengths[i]) for i in order]
    cost = [0.0] * (n + 1)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        best, arg = float("inf"), 0
        for start in range(max(0, end - batch_size), end):
            c = cost[start] + (end - start) * sorted_len[start]  # the batch pads to its first (longest) text
            if c < best:
                best, arg = c, start
        cost[end], cut[end] = best + overhead_tokens, arg
    bounds, end = [], n
    while end > 0:
        bounds.append((cut[end], end))
        end = cut[end]
    return [order[s:e] for s, e in reversed(bounds)]


def check_texts(texts: str | Iterable[str]) -> list[str]:
    """A list of strings, or a ``TypeError`` naming the first non-string's index."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be a string or a list of strings, got bytes")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


def tokenize_texts(tokenizer, texts: Sequence[str], *, max_length: int, mcls: bool = False) -> list[list[int]]:
    """Token ids per text (with special tokens, truncated at ``max_length``, unpadded).

    With ``mcls`` a [CLS] is inserted before every further 256 content tokens
    (appendix B.2), within ``max_length`` in total.
    """
    if not mcls:
        return tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    cls_id = tokenizer.cls_token_id
    if cls_id is None:
        raise ValueError("MCLS needs a tokenizer with a CLS token")
    out = []
    # the tokenizer's special-token frame, e.g. [CLS] ... [SEP] or <s> ... </s>
    frame = tokenizer("", add_special_tokens=True)["input_ids"]
    prefix = frame[:1] if frame and frame[0] == cls_id else []
    suffix = frame[len(prefix):]
    available = max_length - len(frame)
    for content in tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=max_length)["input_ids"]:
        # every block after the first costs one inserted [CLS]: keep what fits
        n = min(len(content), available)
        while n > 0 and n + (n - 1) // MCLS_INTERVAL > available:
            n -= 1
        content = content[:n]
        with_cls: list[int] = []
        for start in range(0, len(content), MCLS_INTERVAL):
            if start:
                with_cls.append(cls_id)
            with_cls.extend(content[start:start + MCLS_INTERVAL])
        out.append(prefix + with_cls + suffix)
    return out


def pad_token_ids(ids: Sequence[Sequence[int]], pad_id: int, cls_id: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad token ids into ``input_ids``/``attention_mask`` (int64), plus ``cls_mask`` when ``cls_id`` is given (MCLS)."""
    length = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if cls_id is not None:
        batch["cls_mask"] = (input_ids == cls_id) & mask.bool()
    return batch


def encode_batches(run_batch: Callable[[dict[str, torch.Tensor]], tuple], all_ids: Sequence[Sequence[int]],
                   batches: Sequence[np.ndarray], collate: Callable[[list], dict[str, torch.Tensor]], *,
                   dense_dim: int, vocab_size: int, return_dense: bool = True, return_sparse: bool = True,
                   return_colbert: bool = True, show_progress: bool | None = None,
                   map_batches: Callable[[list[dict[str, torch.Tensor]]], Iterable[tuple]] | None = None) -> EncodeOutput:
    """Run ``run_batch`` over planned batches and gather an :class:`EncodeOutput` in input order.

    ``run_batch(collate(ids))`` returns NumPy ``(dense, token_weights, colbert, colbert_mask)`` for
    one padded batch, as :meth:`M3Model.forward` computes them; the torch model and the ONNX
    runner (:mod:`m3lab.onnx`) share everything else here. ``map_batches``, if given, computes
    those outputs for all the collated batches at once, in order, instead (the worker processes of
    :class:`m3lab.modeling.pool.EncodePool`). A progress bar shows for more than 8 batches unless
    ``show_progress`` says otherwise.
    """
    n = len(all_ids)
    dense = np.zeros((n, dense_dim), dtype=np.float32) if return_dense else None
    sparse: list | None = [None] * n if return_sparse else None
    colbert: list | None = [None] * n if return_colbert else None
    colbert_ids: list | None = [None] * n if return_colbert else None
    show = len(batches) > 8 if show_progress is None else show_progress
    collated = [collate([all_ids[i] for i in idx]) for idx in batches] if map_batches else None
    outputs = iter(map_batches(collated)) if map_batches else None
    for k, idx in enumerate(tqdm(batches, desc="encode", disable=not show)):
        batch = collated[k] if collated is not None else collate([all_ids[i] for i in idx])
        d_np, w_np, c_np, m_np = next(outputs) if outputs is not None else run_batch(batch)
        if return_dense:
            dense[idx] = d_np
        ids_np = batch["input_ids"].cpu().numpy()
        if return_sparse:
            for row, i in enumerate(idx):
                sparse[i] = _max_weights(ids_np[row], w_np[row])
        if return_colbert:
            for row, i in enumerate(idx):
                colbert[i] = np.ascontiguousarray(c_np[row][m_np[row]])
                colbert_ids[i] = ids_np[row, 1:][m_np[row]]
    return EncodeOutput(dense=dense, sparse=sparse, colbert=colbert,
                        input_ids=[np.asarray(x, dtype=np.int64) for x in all_ids],
                        vocab_size=vocab_size, colbert_token_ids=colbert_ids)


class M3Model(nn.Module):
    """An encoder with bge-m3's dense, sparse and multi-vector heads.

    Build one with :meth:`from_pretrained`; embed texts with :meth:`encode`; score query
    and passage pairs with :meth:`score`; train it through :meth:`forward`.
    """

    def __init__(self, encoder: nn.Module, tokenizer, *, pooling: str = "cls",
                 colbert_linear: nn.Linear | None = None, sparse_linear: nn.Linear | None = None,
                 name_or_path: str | None = None, heads_trained: bool = True,
                 prompts: dict[str, str] | None = None, max_lengths: dict[str, int] | None = None,
                 matryoshka_dims: Sequence[int] | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.name_or_path = name_or_path
        self.heads_trained = heads_trained
        #: What is known of the heads, in words (set by :meth:`from_pretrained` from the checkpoint's record).
        self.heads_origin = "trained" if heads_trained else "initialised by init_heads (seed 0), not trained"
        #: Text put before every query / passage by :meth:`encode_queries` / :meth:`encode_corpus`
        #: (e.g. e5's "query: " / "passage: "), and where they cut; saved in m3lab_config.json.
        self.prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
        self.max_lengths = {**DEFAULT_MAX_LENGTHS, **(max_lengths or {})}
        #: The truncated sizes it was trained for (``TrainConfig.matryoshka_dims``, largest first; None:
        #: none); saved in m3lab_config.json. Cut vectors with m3lab.modeling.matryoshka.truncate_embeddings.
        self.matryoshka_dims = sorted(map(int, matryoshka_dims), reverse=True) if matryoshka_dims else None
        d = encoder.config.hidden_size
        self.colbert_linear = colbert_linear if colbert_linear is not None else nn.Linear(d, d)
        self.sparse_linear = sparse_linear if sparse_linear is not None else nn.Linear(d, 1)
        # bge-m3 drops these ids from the lexical weights: cls/eos/pad/unk, whichever exist.
        # A BERT-style tokenizer has no EOS, so its [SEP] stays, exactly as in bge-m3.
        drop = {getattr(tokenizer, f"{t}_token_id", None) for t in ("cls", "eos", "pad", "unk")}
        self.register_buffer("drop_ids", torch.tensor(sorted(i for i in drop if i is not None), dtype=torch.long),
                             persistent=False)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, pooling: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "M3Model":
        """Load an encoder directory or hub id, with bge-m3 heads if it has them.

        ``name_or_path``: a local directory, a Hugging Face hub id (needs network), or a
        short name (``"default"``, ``"e5-small"``, ``"minilm"``; :data:`m3lab.modeling.hub.SHORT_NAMES`),
        or a delta directory written by :meth:`save_delta`. ``pooling``: ``"cls"`` (bge-m3) or
        ``"mean"`` (sentence-transformers models); ``None`` takes the checkpoint's own
        setting (``m3lab_config.json``, else sentence-transformers' pooling config, else CLS).
        ``device`` defaults to CUDA when available; ``dtype`` to float16 on CUDA, float32 else.

        Without ``colbert_linear.pt``/``sparse_linear.pt`` the heads are initialised
        with :func:`init_heads` (seed 0): W_mul = identity, so multi-vector starts as the
        normalised token states; W_lex small with bias 0.3, so every token starts active. A
        warning says they are untrained.
        """
        from transformers import AutoModel, AutoTokenizer

        path = Path(resolve_model_path(name_or_path))
        if not path.is_dir():
            path = Path(_download_from_hub(str(path)))
        base = saved_base(path)  # a delta checkpoint: the base's encoder and tokenizer, then what training changed
        encoder_path = Path(resolve_model_path(base)) if base is not None else path
        if not (encoder_path / "config.json").is_file():
            raise FileNotFoundError(f"{encoder_path} is not a Hugging Face model directory (no config.json)")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        pooling = pooling or _detect_pooling(path)

        tokenizer = AutoTokenizer.from_pretrained(str(encoder_path))
        encoder = AutoModel.from_pretrained(str(encoder_path), dtype=torch.float32)
        if base is not None:
            apply_encoder_delta(encoder, path)
        d = encoder.config.hidden_size
        colbert_linear, sparse_linear = nn.Linear(d, d), nn.Linear(d, 1)
        has_heads = (path / COLBERT_FILE).is_file() and (path / SPARSE_FILE).is_file()
        recorded = _saved_heads_trained(path)  # what m3lab recorded when it saved them (None: no record)
        heads_trained = has_heads and recorded is not False
        if has_heads:
            colbert_linear.load_state_dict(_load_state(path / COLBERT_FILE))
            sparse_linear.load_state_dict(_load_state(path / SPARSE_FILE))
            if recorded is False:
                logger.warning("%s: its m3lab_config.json records the heads as never trained (saved as "
                               "initialised by init_heads)", path)
        else:
            init_heads(colbert_linear, sparse_linear)
            logger.warning("%s has no %s/%s: the multi-vector and sparse heads are untrained "
                           "(initialised by m3lab.modeling.init_heads, seed 0)", path, COLBERT_FILE, SPARSE_FILE)
        model = cls(encoder, tokenizer, pooling=pooling, colbert_linear=colbert_linear,
                    sparse_linear=sparse_linear, name_or_path=str(name_or_path), heads_trained=heads_trained,
                    matryoshka_dims=_saved_matryoshka_dims(path), **saved_settings(path))
        if not has_heads:
            model.heads_origin = "no head files: initialised by init_heads (seed 0), not trained"
        elif recorded is None:
            model.heads_origin = "head files present, with no record of their training (taken as trained)"
        else:
            model.heads_origin = ("trained (recorded by m3lab when saved)" if recorded else
                                  "saved as initialised by init_heads, never trained (recorded by m3lab)")
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | os.PathLike, *, encoder_dtype: torch.dtype | None = None) -> Path:
        """Write the bge-m3 layout atomically: encoder (safetensors) + tokenizer + the two head files.

        ``encoder_dtype`` (e.g. ``torch.float16``) stores the encoder weights in that type;
        the heads stay float32. ``BGEM3FlagModel`` loads the result unchanged.
        """
        path = Path(path)
        with atomic_directory(path) as tmp:
            encoder = self.encoder
            state = None
            if encoder_dtype is not None:
                state = {k: v.to(encoder_dtype) if v.is_floating_point() else v
                         for k, v in encoder.state_dict().items()}
            encoder.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            self._save_heads_and_settings(tmp, format="bge-m3")
        return path

    def _save_heads_and_settings(self, folder: Path, **record) -> None:
        """The two head files (float32) and m3lab_config.json (pooling, prompts, max lengths, ``record``)."""
        torch.save(_cpu_float_state(self.colbert_linear), folder / COLBERT_FILE)
        torch.save(_cpu_float_state(self.sparse_linear), folder / SPARSE_FILE)
        extra = {"matryoshka_dims": list(self.matryoshka_dims)} if self.matryoshka_dims else {}
        write_json(folder / CONFIG_FILE, {"pooling": self.pooling, **record, "heads_trained": bool(self.heads_trained),
                                          "colbert_dim": self.colbert_linear.out_features,
                                          "prompts": dict(self.prompts), "max_lengths": dict(self.max_lengths),
                                          **extra})

    def save_delta(self, path: str | os.PathLike, base: str, *, dtype: torch.dtype = torch.float16) -> Path:
        """Write only what differs from ``base`` (a short name or directory): a small, shippable checkpoint.

        ``encoder_delta.safetensors`` holds the encoder tensors that differ from the base's
        (in ``dtype``), beside the two heads (float32) and m3lab_config.json, which names
        ``base``. :meth:`from_pretrained` rebuilds the model from the base plus these;
        :meth:`save_pretrained` of it writes the complete bge-m3 layout again.
        """
        from safetensors.torch import save_file
        from transformers import AutoModel

        base_state = AutoModel.from_pretrained(resolve_model_path(base), dtype=torch.float32).state_dict()
        ours = self.encoder.state_dict()
        if set(base_state) != set(ours):
            raise ValueError(f"the encoder's weights are not those of {base!r}: "
                             f"{sorted(set(base_state) ^ set(ours))[:5]} differ")
        changed = {k: v.detach().to("cpu", dtype).contiguous() for k, v in ours.items()
                   if not torch.equal(v.detach().cpu().float(), base_state[k].float())}
        path = Path(path)
        with atomic_directory(path) as tmp:
            save_file(changed, str(tmp / DELTA_FILE), metadata={"base": base})
            self._save_heads_and_settings(tmp, format="m3lab-delta", base=base)
        return path

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return max(len(self.tokenizer), self.encoder.config.vocab_size)

    @property
    def max_positions(self) -> int:
        n = getattr(self.encoder.config, "max_position_embeddings", 512)
        # XLM-R reserves padding_idx + 1 positions.
        return n - 2 if getattr(self.encoder.config, "model_type", "") in ("xlm-roberta", "roberta") else n

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, texts: Sequence[str], *, max_length: int = 512, mcls: bool = False) -> list[list[int]]:
        """Token ids per text (with special tokens, truncated, unpadded); :func:`tokenize_texts`."""
        return tokenize_texts(self.tokenizer, texts, max_length=min(max_length, self.max_positions), mcls=mcls)

    def collate(self, ids: Sequence[Sequence[int]], *, mcls: bool = False) -> dict[str, torch.Tensor]:
        """Right-pad token ids into ``input_ids``/``attention_mask`` tensors (plus ``cls_mask`` for MCLS)."""
        return pad_token_ids(ids, self.tokenizer.pad_token_id or 0, self.tokenizer.cls_token_id if mcls else None)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                cls_mask: torch.Tensor | None = None, lower_states: torch.Tensor | None = None,
                lower_layers: int = 0) -> M3Embeddings:
        """All three representations of a padded batch (differentiable).

        With ``lower_states`` (the output of :meth:`lower_states` for the same batch and
        ``lower_layers``) only the encoder layers above ``lower_layers`` run: training with
        frozen, cached lower layers (``frozen_layers`` in :class:`m3lab.training.TrainConfig`).
        """
        if lower_states is None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = run_layers(self.encoder, lower_states, attention_mask, start=lower_layers)
        dense = dense_embedding(hidden, attention_mask, self.pooling, cls_mask)
        weights = sparse_token_weights(hidden, self.sparse_linear, input_ids, self.drop_ids.to(input_ids.device))
        colbert, colbert_mask = colbert_embedding(hidden, attention_mask, self.colbert_linear, cls_mask)
        return M3Embeddings(dense=dense, token_weights=weights, input_ids=input_ids,
                            colbert=colbert, colbert_mask=colbert_mask)

    @torch.no_grad()
    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """The hidden states after the embeddings and the first ``layers`` encoder layers (no grad).

        ``forward(..., lower_states=..., lower_layers=layers)`` continues from them; in eval
        mode the two paths give the encoder's own output.
        """
        hidden = self.encoder.embeddings(input_ids=input_ids)
        return run_layers(self.encoder, hidden, attention_mask, start=0, stop=layers)

    # ------------------------------------------------------------------ inference
    def encode(self, texts: str | Sequence[str], *, batch_size: int = 32, max_length: int = 512,
               return_dense: bool = True, return_sparse: bool = True, return_colbert: bool = True,
               mcls: bool = False, show_progress: bool | None = None, pool: EncodePool | None = None,
               processes: int | None = None, devices: Sequence[str] | None = None) -> EncodeOutput:
        """Embed texts with the three functions.

        Texts are sorted by token length so each batch has little padding, then run in
        inference mode (the model's dtype: float16 on GPU by default). A batch holds at most
        ``batch_size`` texts; on CPU it is cut earlier where that saves more padding than an
        extra forward pass costs (:func:`plan_batches`). The results do not depend on the
        batching beyond float rounding, and come back in input order. A progress bar shows
        for more than 8 batches unless ``show_progress`` says otherwise.

        ``pool`` (an :class:`~m3lab.modeling.pool.EncodePool`), or ``processes`` / ``devices`` (a pool
        for this call), runs the same batches in several worker processes; the output is the
        single-process one.

        An empty or whitespace-only text is encoded like ``""``: only the special tokens.
        Its dense vector is the model's vector for that input, its sparse dict holds no
        content token (with BERT-style tokenizers, bge-m3 keeps [SEP], so it may hold that),
        and its multi-vector array has (tokens - 1) rows as for any text.
        A non-string raises ``TypeError`` naming its index.
        """
        texts = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mcls and self.pooling != "cls":
            logger.warning("MCLS averages [CLS] states; this model pools with %r, so its dense vectors change meaning",
                           self.pooling)
        all_ids = self.tokenize(texts, max_length=max_length, mcls=mcls) if texts else []
        batches = plan_batches([len(x) for x in all_ids], batch_size,
                               CPU_BATCH_OVERHEAD_TOKENS if self.device.type == "cpu" else None)
        self.eval()

        def run(batch: dict[str, torch.Tensor]) -> tuple:
            out = self(**{k: v.to(self.device) for k, v in batch.items()})
            numpy = lambda t, wanted: t.float().cpu().numpy() if wanted else None  # noqa: E731
            return (numpy(out.dense, return_dense), numpy(out.token_weights, return_sparse),
                    numpy(out.colbert, return_colbert), out.colbert_mask.cpu().numpy() if return_colbert else None)

        own_pool = None
        if pool is None and (processes or devices) and batches:
            from .pool import EncodePool

            pool = own_pool = EncodePool(self, processes=processes, devices=devices)
        wanted = (return_dense, return_sparse, return_colbert)
        try:
            with torch.inference_mode():
                return encode_batches(run, all_ids, batches, lambda ids: self.collate(ids, mcls=mcls),
                                      dense_dim=self.hidden_size, vocab_size=self.vocab_size,
                                      return_dense=return_dense, return_sparse=return_sparse,
                                      return_colbert=return_colbert, show_progress=show_progress,
                                      map_batches=(lambda b: pool.map_batches(b, wanted)) if pool else None)
        finally:
            if own_pool is not None:
                own_pool.close()

    def encode_queries(self, queries: str | Sequence[str], *, max_length: int | None = None, **kwargs) -> EncodeOutput:
        """:meth:`encode` for queries: the query prompt before each, cut at the query max length.

        ``self.prompts["query"]`` and ``self.max_lengths["query"]`` come from the checkpoint
        (``m3lab_config.json``, or sentence-transformers' prompts) and are saved with it.
        ``max_length`` overrides the saved one; other arguments go to :meth:`encode`.
        """
        return self._encode_as("query", queries, max_length, kwargs)

    def encode_corpus(self, passages: str | Sequence[str], *, max_length: int | None = None, **kwargs) -> EncodeOutput:
        """:meth:`encode` for passages: the passage prompt before each, cut at the passage max length."""
        return self._encode_as("passage", passages, max_length, kwargs)

    def _encode_as(self, kind: str, texts, max_length: int | None, kwargs: dict) -> EncodeOutput:
        prompt = self.prompts[kind]
        texts = check_texts(texts)
        return self.encode([prompt + t for t in texts] if prompt else texts,
                           max_length=max_length if max_length is not None else self.max_lengths[kind], **kwargs)

    def score(self, queries: EncodeOutput | str | Sequence[str], passages: EncodeOutput | str | Sequence[str], *,
              weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, max_length: int | None = None,
              batch_size: int = 32) -> ScoreOutput:
        """Score every query against every passage with the weighted functions and their weighted sum.

        ``queries``/``passages`` are :meth:`encode` results or texts, encoded here with
        :meth:`encode_queries` / :meth:`encode_corpus` (their prompts and max lengths, unless
        ``max_length`` is given). ``weights`` = (w_dense, w_sparse, w_colbert): only the
        functions with a non-zero weight are encoded and scored (the others are ``None`` in
        the result); all-zero weights raise ``ValueError``.
        """
        weights = scoring.check_weights(weights)
        wanted = scoring.weighted_functions(weights)
        kw = dict(max_length=max_length, batch_size=batch_size, **{f"return_{f}": f in wanted for f in scoring.FUNCTIONS})
        q = queries if isinstance(queries, EncodeOutput) else self.encode_queries(queries, **kw)
        p = passages if isinstance(passages, EncodeOutput) else self.encode_corpus(passages, **kw)
        return score_encoded(q, p, weights=weights)

    def compute_score(self, sentence_pairs, *, batch_size: int = 256, max_query_length: int | None = None,
                      max_passage_length: int | None = None,
                      weights_for_different_modes: Sequence[float] | None = None) -> dict:
        """``BGEM3FlagModel.compute_score``: per-pair scores by mode (:func:`m3lab.modeling.compat.compute_score`)."""
        from .compat import compute_score

        return compute_score(self, sentence_pairs, batch_size=batch_size, max_query_length=max_query_length,
                             max_passage_length=max_passage_length,
                             weights_for_different_modes=weights_for_different_modes)

    def __repr__(self) -> str:
        return (f"M3Model({self.name_or_path!r}, pooling={self.pooling!r}, d={self.hidden_size}, "
                f"heads_trained={self.heads_trained})")


def _saved_heads_trained(path: Path) -> bool | None:
    """``heads_trained`` of a checkpoint's m3lab_config.json: whether its heads were trained when m3lab
    saved them (None: no record, e.g. a FlagEmbedding checkpoint)."""
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text(encoding="utf-8")).get("heads_trained")
    return None if value is None else bool(value)


def _saved_matryoshka_dims(path: Path) -> list[int] | None:
    """``matryoshka_dims`` of a checkpoint's m3lab_config.json (None if it has none)."""
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        return None
    dims = json.loads(cfg.read_text(encoding="utf-8")).get("matryoshka_dims")
    return [int(d) for d in dims] if dims else None


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT/XLM-R-style Hugging Face encoder (``encoder.encoder.layer``)."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(encoder).__name__} has no encoder.layer list: layer-wise forward "
                         "(frozen_layers) supports BERT/XLM-R-style encoders")
    return layers


def run_layers(encoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, *,
               start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Run layers ``start:stop`` of ``encoder`` on ``hidden`` with the padding mask the encoder itself builds."""
    try:  # transformers >= 5: the same mask BertModel/XLMRobertaModel.forward builds
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
    except ImportError:  # transformers 4.x
        mask = encoder.get_extended_attention_mask(attention_mask, attention_mask.shape)
    for layer in encoder_layers(encoder)[start:stop]:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def score_encoded(q: EncodeOutput, p: EncodeOutput, *, weights: Sequence[float] = scoring.DEFAULT_WEIGHTS) -> ScoreOutput:
    """All-pairs scores of two :class:`EncodeOutput`: each weighted function, then the weighted sum (s_rank).

    Functions with weight 0 are not scored (``None`` in the result); a weighted function that
    either side was encoded without raises ``ValueError``, as do all-zero weights.
    """
    weights = scoring.check_weights(weights)
    wanted = scoring.weighted_functions(weights)
    for f in wanted:
        if getattr(q, f) is None or getattr(p, f) is None:
            raise ValueError(f"w_{f} is {weights[scoring.FUNCTIONS.index(f)]} but the {'queries' if getattr(q, f) is None else 'passages'} "
                             f"were encoded without return_{f}=True")
    dense = scoring.dense_scores(q.dense, p.dense) if "dense" in wanted else None
    sparse = scoring.sparse_scores(q.sparse_csr, p.sparse_csr) if "sparse" in wanted else None
    colbert = scoring.colbert_scores_chunked(q.colbert, p.colbert) if "colbert" in wanted else None
    total = scoring.combine_scores(dense, sparse, colbert, weights)
    return ScoreOutput(scores=np.asarray(total, dtype=np.float32), dense=dense, sparse=sparse, colbert=colbert, weights=weights)
