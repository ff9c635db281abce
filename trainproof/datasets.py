"""Committed, pre-batched datasets from arrays (docs/protocol.md §3.10 generalised).

:func:`from_arrays` takes numpy arrays ``x [N, ...]`` and ``y [N, ...]`` and returns an
:class:`ArrayDataset` with the interface of :class:`replay.data.dataset.Dataset` (``batch(t)``,
``leaf(t)``, ``root(steps)``, ``x_test`` / ``y_test``), so :func:`trainproof.train`,
``replay.dispute.players.Computation`` and the runner read it the same way:

- values are converted to float32 (integer labels and token ids are exact below 2^24);
- held-out split: ``default_rng(seed).permutation(N)``, the first ``heldout`` indices aside;
- epoch ``e`` visits the training examples in the order ``default_rng([seed, e]).permutation``,
  cut into ``batch_size`` batches (the tail is dropped); step ``t`` reads batch ``t``;
- leaf ``t`` = ``tensor_root(x_t) || tensor_root(y_t)``; ``root(N) = MTH(leaf_0..leaf_{N-1})``.

:func:`from_files` memory-maps ``x.npy``/``y.npy`` folders and ``.safetensors`` files (a batch
reads only its rows); :func:`digits` is scikit-learn's digits; :func:`text` is language-model
windows over the Python sources of the pinned torch 2.13.0 wheel (BSD-3-Clause), byte-level or
BPE (docs/protocol.md §3.10.1).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from protocol.commitments import tensor_root
from protocol.merkle import merkle_root
from replay.errors import SpecError

MAX_EXACT_INT = 1 << 24


class ArraySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    examples: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int = Field(ge=0)
    heldout: int = Field(ge=0)


def _as_f32(a: np.ndarray, label: str) -> np.ndarray:
    """A float32 copy; integers must be exact in float32 (|v| < 2^24)."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        if a.size and (a.max() >= MAX_EXACT_INT or a.min() <= -MAX_EXACT_INT):
            raise SpecError(f"{label} holds integers beyond 2^24, not exact in float32")
    elif a.dtype.kind != "f":
        raise SpecError(f"{label} has dtype {a.dtype}; use numbers")
    return np.ascontiguousarray(a, dtype=np.float32)


class ArrayDataset:
    """The split and per-step batches of arrays ``x``, ``y`` (see the module docstring).

    The arrays are read lazily, one batch at a time (``x[indices]``), so a ``numpy.memmap``
    or ``np.load(..., mmap_mode="r")`` array larger than memory streams; only the held-out
    split is materialised.
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, heldout: int = 0
    ) -> None:
        if len(x) != len(y):
            raise SpecError(f"x has {len(x)} examples, y has {len(y)}")
        for label, a in (("x", x), ("y", y)):
            if np.asarray(a[:0]).dtype.kind not in "iubf":
                raise SpecError(f"{label} has dtype {np.asarray(a[:0]).dtype}; use numbers")
        self.spec = ArraySpec(examples=len(x), batch_size=batch_size, seed=seed, heldout=heldout)
        if heldout >= len(x):
            raise SpecError(f"heldout {heldout} leaves no training examples of {len(x)}")
        self._x, self._y = x, y
        order = np.random.default_rng(seed).permutation(len(x))
        test, self._train = order[:heldout], order[heldout:]
        self.x_test = _as_f32(x[test], "x") if heldout else _as_f32(x[:0], "x")
        self.y_test = _as_f32(y[test], "y") if heldout else _as_f32(y[:0], "y")
        self.per_epoch = len(self._train) // batch_size
        if self.per_epoch == 0:
            raise SpecError(
                f"batch size {batch_size} exceeds the {len(self._train)} training examples"
            )
        self._epoch: tuple[int, np.ndarray] | None = None

    @property
    def x_train(self) -> np.ndarray:
        return _as_f32(self._x[self._train], "x")

    @property
    def y_train(self) -> np.ndarray:
        return _as_f32(self._y[self._train], "y")

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.spec.seed, epoch])
            self._epoch = (epoch, rng.permutation(len(self._train)))
        return self._epoch[1]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(x_t, y_t): the exact float32 arrays step ``t`` reads."""
        if step < 0:
            raise SpecError(f"step {step} is negative")
        epoch, k = divmod(step, self.per_epoch)
        bs = self.spec.batch_size
        idx = self._train[self._order(epoch)[k * bs : (k + 1) * bs]]
        return _as_f32(self._x[idx], "x"), _as_f32(self._y[idx], "y")

    def leaf(self, step: int) -> bytes:
        x, y = self.batch(step)
        return tensor_root(x) + tensor_root(y)

    def root(self, steps: int) -> bytes:
        return merkle_root([self.leaf(t) for t in range(steps)])


def from_arrays(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, heldout: int = 0
) -> ArrayDataset:
    """A committed, pre-batched dataset over numpy arrays (see the module docstring)."""
    return ArrayDataset(x, y, batch_size, seed, heldout)


_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _safetensors_mmap(path: str) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as read-only memory maps (nothing is read but
    the header): 8-byte little-endian header length, JSON header, then the raw data."""
    import json

    with open(path, "rb") as f:
        (n,) = np.frombuffer(f.read(8), dtype="<u8")
        header = json.loads(f.read(int(n)))
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise SpecError(f"{path}: tensor {name} has dtype {meta['dtype']}; use numbers")
        start, end = meta["data_offsets"]
        shape = tuple(meta["shape"])
        if end == start:
            out[name] = np.zeros(shape, dtype)
        else:
            offset = 8 + int(n) + start
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return out


def from_files(path: str, batch_size: int, seed: int, heldout: int = 0) -> ArrayDataset:
    """Arrays ``x`` and ``y`` from a folder holding ``x.npy`` and ``y.npy`` or a
    ``.safetensors`` file (both memory-mapped: each batch reads only its rows, so a dataset
    larger than memory streams), or a ``.npz`` file (loaded whole)."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise SpecError(f"{path} does not exist")
    if p.is_dir():
        x = np.load(p / "x.npy", mmap_mode="r", allow_pickle=False)
        y = np.load(p / "y.npy", mmap_mode="r", allow_pickle=False)
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    elif p.suffix == ".safetensors":
        tensors = _safetensors_mmap(str(p))
        if "x" not in tensors or "y" not in tensors:
            raise SpecError(f"{path} must hold tensors named x and y")
        x, y = tensors["x"], tensors["y"]
    else:
        raise SpecError(f"{path}: expected .npz, .safetensors or a folder with x.npy and y.npy")
    return ArrayDataset(x, y, batch_size, seed, heldout)


def digits(batch_size: int, seed: int = 0, heldout: int = 297, image: bool = True) -> ArrayDataset:
    """scikit-learn's bundled digits (no download): x = pixels / 16 (exact), as
    ``[N, 1, 8, 8]`` images (or ``[N, 64]`` with ``image=False``), y = class index."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float64) / 16.0).astype(np.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return from_arrays(x, np.asarray(data.target), batch_size, seed, heldout)


# --- text: the torch 2.13.0 sources, byte-level or BPE (docs/protocol.md §3.10.1) ----------

SEPARATOR_ID = 0
BPE_SPECIAL = "<|endoftext|>"


class TextSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    corpus_sha256: str
    tokenizer: str  # "bytes" | "bpe"
    vocab: int = Field(gt=0)  # the tokenizer's vocabulary size (ids 0 .. vocab - 1)
    tokenizer_sha256: str  # sha256 of the tokenizer JSON ("" for bytes)
    context: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int = Field(ge=0)
    heldout: int = Field(ge=0)  # held-out files
    examples: int = Field(gt=0)  # training windows


def train_bpe(texts: list[str], vocab: int) -> str:
    """A byte-level BPE tokenizer trained on ``texts`` (in order) with the ``tokenizers``
    package; returns its JSON (deterministic: the same texts give the same JSON)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab < len(alphabet) + 2:
        raise SpecError(f"BPE vocab {vocab} is below {len(alphabet) + 2} (bytes + separator)")
    if vocab >= MAX_EXACT_INT:
        raise SpecError(f"BPE vocab {vocab} is beyond 2^24, not exact in float32")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=[BPE_SPECIAL],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


class TextDataset:
    """Windows of ``context + 1`` tokens of the torch-sources corpus (§3.10.1): ``x`` the
    first ``context``, ``y`` the last ``context`` (shifted by one), as exact float32 ids.

    ``batch(t)`` / ``leaf(t)`` / ``root(steps)`` as :class:`ArrayDataset` over the training
    windows; ``x_test`` / ``y_test`` are the windows of the held-out files; ``tokenizer_json``
    is the trained BPE tokenizer (None for bytes).
    """

    def __init__(
        self, tokenizer: str, vocab: int, context: int, batch_size: int, seed: int, heldout: int
    ) -> None:
        import hashlib

        from trainproof import text_corpus

        files = text_corpus.corpus_files()
        if not 0 <= heldout < len(files):
            raise SpecError(f"heldout {heldout} files: the corpus has {len(files)}")
        if context < 1:
            raise SpecError(f"context {context} must be positive")
        held = set(np.random.default_rng(seed).permutation(len(files))[:heldout].tolist())
        train_files = [d for i, (_, d) in enumerate(files) if i not in held]
        test_files = [d for i, (_, d) in enumerate(files) if i in held]
        self.tokenizer_json: str | None = None
        if tokenizer == "bytes":
            if vocab != 256:
                raise SpecError("byte-level text has vocab 256")

            def encode(data: bytes) -> np.ndarray:
                return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

            tok_sha = ""
        elif tokenizer == "bpe":
            from tokenizers import Tokenizer

            self.tokenizer_json = train_bpe([d.decode("utf-8") for d in train_files], vocab)
            tok = Tokenizer.from_str(self.tokenizer_json)
            vocab = tok.get_vocab_size()
            if tok.token_to_id(BPE_SPECIAL) != SEPARATOR_ID:
                raise SpecError(f"BPE tokenizer does not give {BPE_SPECIAL} id 0")

            def encode(data: bytes) -> np.ndarray:
                return np.asarray(tok.encode(data.decode("utf-8")).ids, dtype=np.int32)

            tok_sha = hashlib.sha256(self.tokenizer_json.encode()).hexdigest()
        else:
            raise SpecError(f"unknown tokenizer {tokenizer!r}; use 'bytes' or 'bpe'")
        self.vocab_size = vocab
        x, y = self._windows(train_files, encode, context)
        if len(x) == 0:
            raise SpecError(f"context {context} leaves no training windows")
        self._arrays = ArrayDataset(x, y, batch_size, seed, heldout=0)
        xt, yt = self._windows(test_files, encode, context)
        self.x_test, self.y_test = _as_f32(xt, "x"), _as_f32(yt, "y")
        self.per_epoch = self._arrays.per_epoch
        self.spec = TextSpec(
            name=text_corpus.CORPUS_NAME,
            corpus_sha256=text_corpus.manifest_sha256(),
            tokenizer=tokenizer,
            vocab=vocab,
            tokenizer_sha256=tok_sha,
            context=context,
            batch_size=batch_size,
            seed=seed,
            heldout=heldout,
            examples=len(x),
        )

    @staticmethod
    def _windows(files: list[bytes], encode: object, context: int) -> tuple[np.ndarray, ...]:
        """Each file's tokens then the separator id 0, concatenated in list order; window
        ``i`` = ``stream[i·context : i·context + context + 1]``."""
        sep = np.array([SEPARATOR_ID], dtype=np.int32)
        parts = [p for d in files for p in (encode(d), sep)]  # type: ignore[operator]
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        n = max(0, (len(stream) - 1) // context)
        x = stream[: n * context].reshape(n, context)
        y = stream[1 : n * context + 1].reshape(n, context)
        return x, y

    @property
    def x_train(self) -> np.ndarray:
        return self._arrays.x_train

    @property
    def y_train(self) -> np.ndarray:
        return self._arrays.y_train

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(x_t [B, context], y_t [B, context]): the exact float32 token ids step ``t`` reads."""
        return self._arrays.batch(step)

    def leaf(self, step: int) -> bytes:
        return self._arrays.leaf(step)

    def root(self, steps: int) -> bytes:
        return self._arrays.root(steps)


def text(
    tokenizer: str = "bytes",
    vocab: int = 256,
    context: int = 32,
    batch_size: int = 16,
    seed: int = 0,
    heldout: int = 5,
) -> TextDataset:
    """Language-model windows over the Python sources of the pinned torch 2.13.0 wheel.

    Corpus (``trainproof.text_corpus``): the 50 files ``torch/nn/modules/**.py`` and
    ``torch/optim/**.py`` of torch 2.13.0 — PyTorch's own code, BSD-3-Clause licence —
    1,410,526 bytes, each sha256-checked (another torch is refused). The files listed first in
    ``default_rng(seed).permutation(50)[:heldout]`` are held out. ``tokenizer="bytes"``: one
    token per byte (vocab 256); ``"bpe"``: a byte-level BPE of ``vocab`` tokens trained with
    ``tokenizers`` on the training files only (``<|endoftext|>`` = id 0). Each split is its
    files' tokens, each followed by the separator id 0, cut into windows of ``context + 1``
    tokens with stride ``context``: ``x`` = window[:-1], ``y`` = window[1:]. Batches: the
    training windows as :func:`from_arrays` with ``heldout=0``. See docs/protocol.md §3.10.1.
    """
    return TextDataset(tokenizer, vocab, context, batch_size, seed, heldout)
