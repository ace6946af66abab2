"""Corpus files, the character vocabulary, and batching for truncated BPTT.

`load_corpus` turns UTF-8 files into one memory-mapped token array (cached on disk);
`Vocab` maps characters to ids; `BatchStream` and `val_batches` cut a token array into
B contiguous streams read T steps at a time, time-major (T, B).
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charlstm.errors import ConfigError, CorpusError

ProgressFn = Callable[[int, int], None]  # (done_bytes, total_bytes)
NoticeFn = Callable[[str], None]
_ByteCounter = Callable[[int], None]

# read size; looked up at call time so tests can shrink it
CHUNK_BYTES = 4 * 1024 * 1024
# part of the cache key: bump when the cache file layout changes
CACHE_VERSION = 1
# one stream (B=1) with one window of T=1 needs S - 1 >= 1, i.e. N >= 3
MIN_TRAIN_CHARS = 3


# ----------------------------------------------------------------------------- reading


def _check_file(path: Path) -> os.stat_result:
    """Stat `path`, raising CorpusError unless it is a non-empty regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CorpusError(f"{path}: is a directory, not a text file")
    if not stat.S_ISREG(st.st_mode):
        raise CorpusError(f"{path}: is not a regular file")
    if st.st_size == 0:
        raise CorpusError(f"{path}: file is empty")
    return st


def _decoded_chunks(path: Path, on_bytes: _ByteCounter | None = None) -> Iterator[str]:
    """Yield the text of `path` piece by piece, CHUNK_BYTES of input at a time.

    The incremental decoder holds back a character split across two reads, so the whole
    file is never one str. Raises CorpusError for a NUL byte or invalid UTF-8.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # file offset of the next read
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK_BYTES)
                final = not chunk
                nul = chunk.find(b"\0")
                if nul >= 0:
                    # text never contains NUL; UTF-16 and binary files nearly always do
                    at = offset + nul
                    msg = f"{path}: looks like a binary file (NUL byte at offset {at})"
                    raise CorpusError(msg)
                # bytes of a character split across the last read and this one
                held = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(chunk, final=final)
                except UnicodeDecodeError as e:
                    # e.start counts from the held bytes, which precede this chunk
                    bad = offset - held + e.start
                    msg = f"{path}: invalid UTF-8 at byte offset {bad}"
                    raise CorpusError(msg) from None
                offset += len(chunk)
                if on_bytes is not None and chunk:
                    on_bytes(len(chunk))
                if text:
                    yield text
                if final:
                    return
    except OSError as e:
        raise CorpusError(f"{path}: cannot read ({e.strerror or e})") from None


def read_text(path: Path | str) -> str:
    """Read a small text whole (eval, sample, inspect); same errors as load_corpus."""
    path = Path(path)
    _check_file(path)
    return "".join(_decoded_chunks(path))


def _code_points(text: str) -> np.ndarray:
    """(N,) uint32 code points of `text`; lone surrogates pass (never known)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


# -------------------------------------------------------------------------- vocabulary


class Vocab:
    """The characters a model knows, sorted by code point; a char's id is its index."""

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise CorpusError(f"invalid vocabulary: {c!r} is not one character")
        if not chars:
            raise CorpusError("invalid vocabulary: it is empty")
        if "\0" in chars:
            # numpy '<U1' arrays strip NUL, so it could not survive to_array/from_array
            raise CorpusError("invalid vocabulary: it contains NUL")
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        if np.any(np.diff(codes) <= 0):
            raise CorpusError("invalid vocabulary: repeated or unsorted characters")
        if np.any((codes >= 0xD800) & (codes <= 0xDFFF)):
            # UTF-8 text never holds a lone surrogate and no output stream can encode one:
            # only a tampered checkpoint has them, and sampling would crash printing them
            raise CorpusError("invalid vocabulary: it contains a lone surrogate (not a character)")
        self.chars: list[str] = chars
        self._array = np.array(chars, dtype="<U1")  # (V,)
        self._known = frozenset(chars)
        # code point -> id, -1 where absent: one gather encodes a chunk; <= 4.4 MB
        self._table = np.full(int(codes[-1]) + 1, -1, dtype=np.int32)
        self._table[codes] = np.arange(len(chars), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The vocabulary of exactly the characters in `text`."""
        return cls(sorted(set(text)))

    @classmethod
    def from_array(cls, arr: np.ndarray) -> Vocab:
        """Inverse of `to_array` (how checkpoints store the vocabulary)."""
        arr = np.asarray(arr)
        if arr.ndim != 1 or arr.dtype.kind != "U" or arr.dtype.itemsize != 4:
            got = f"{arr.shape} {arr.dtype}"
            raise CorpusError(f"invalid vocabulary array: want (V,) <U1, got {got}")
        return cls(arr.tolist())

    @property
    def size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(tuple(self.chars))

    def __repr__(self) -> str:
        return f"Vocab(size={self.size})"

    def to_array(self) -> np.ndarray:
        """(V,) '<U1' array of the characters in id order."""
        return self._array.copy()

    def _lookup(self, codes: np.ndarray) -> np.ndarray:
        """(N,) int32 ids of (N,) code points, -1 for unknown characters."""
        if codes.size and codes.max() < len(self._table):
            return self._table[codes]  # the usual case: no mask, no extra copies
        ids = np.full(len(codes), -1, dtype=np.int32)
        inside = codes < len(self._table)
        ids[inside] = self._table[codes[inside]]
        return ids

    def unknown(self, text: str) -> list[str]:
        """Distinct characters of `text` not in the vocabulary, sorted by code point."""
        return sorted(set(text) - self._known)

    def encode(self, text: str) -> np.ndarray:
        """(N,) int64 ids of `text`; CorpusError naming any unknown characters."""
        ids, known = encode_known(text, self)
        if not known.all():
            missing = self.unknown(text)
            shown = ", ".join(repr(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            n = len(missing)
            msg = f"text has {n} character(s) not in the vocabulary: {shown}{more}"
            raise CorpusError(msg)
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a 1-D sequence of ids."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids out of range for a vocabulary of {self.size}")
        return "".join(self._array[ids].tolist())


def escape(text: str) -> str:
    """`text` on one line, readable back: control characters, backslashes and the space
    escaped (`\\n`, `\\t`, `\\\\`, `␠`, `\\x01`), every other printable character as it is."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable():
            code = ord(ch)
            out.append(
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
            )
        else:
            out.append(ch)
    return "".join(out)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", " ": "␠"}


def encode_known(text: str, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Encode `text` with a model's vocabulary that may lack some of its characters.

    Returns (ids, known), both (N,): int64 ids and a bool mask. Unknown characters get
    id 0 and known=False, so eval can still feed them as input, skip them as targets,
    and report `(~known).sum()` unknown characters.
    """
    ids = vocab._lookup(_code_points(text)).astype(np.int64)
    known = ids >= 0
    ids[~known] = 0
    return ids, known


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary of this size."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


# ------------------------------------------------------------------------------ corpus


def train_size(n: int, val_frac: float) -> int:
    """Training tokens out of n: nanoGPT's int(n * (1 - val_frac)), in exact decimal.

    Float rounding would make 10 chars at val_frac=0.9 give 0 training chars instead
    of 1; reading val_frac as the decimal it was written as avoids that.
    """
    if not 0 <= val_frac < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {val_frac}")
    return math.floor(n * (1 - Fraction(str(val_frac))))


@dataclass(frozen=True, eq=False)
class Corpus:
    """The token stream of one or more files concatenated, and its vocabulary."""

    paths: tuple[Path, ...]
    vocab: Vocab
    tokens: np.ndarray  # (N,) uint8/uint16/uint32, read-only (a memmap when cached)
    cached: bool  # True when the tokens came from an existing cache entry

    @property
    def n_chars(self) -> int:
        return len(self.tokens)

    @property
    def name(self) -> str:
        """The files, as given, for messages."""
        names = [str(p) for p in self.paths]
        if len(names) <= 3:
            return ", ".join(names)
        return f"{', '.join(names[:2])} and {len(names) - 2} more"

    def split(self, val_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) views; val is the contiguous last `val_frac` (0 -> empty)."""
        n_train = train_size(self.n_chars, val_frac)
        return self.tokens[:n_train], self.tokens[n_train:]


class _Progress:
    """Counts bytes over both passes, so one bar runs from 0 to 2 x corpus size."""

    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn, self.total, self.done = fn, total, 0
        if fn is not None:
            fn(0, total)

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        if self.fn is not None:
            # a file that grows while being read must not push done past total
            self.fn(min(self.done, self.total), self.total)


def _scan(paths: Sequence[Path], report: _Progress) -> tuple[set[str], list[int]]:
    """Pass 1: the character set and each file's character count."""
    chars: set[str] = set()
    counts = []
    for path in paths:
        n = 0
        for text in _decoded_chunks(path, report):
            chars.update(text)
            n += len(text)
        counts.append(n)
    return chars, counts


def _encoded_chunks(
    paths: Sequence[Path], counts: list[int], vocab: Vocab, report: _Progress
) -> Iterator[np.ndarray]:
    """Pass 2: yield the ids of each decoded piece, in the token file's dtype."""
    dtype = token_dtype(vocab.size)
    for path, expected in zip(paths, counts, strict=True):
        n = 0
        for text in _decoded_chunks(path, report):
            ids = vocab._lookup(_code_points(text))
            n += len(ids)
            if n > expected or ids.min() < 0:
                raise CorpusError(f"{path}: file changed while being read")
            yield ids.astype(dtype)
        if n != expected:
            raise CorpusError(f"{path}: file changed while being read")


def _cache_key(paths: Sequence[Path], stats: Sequence[os.stat_result]) -> str:
    pairs = zip(paths, stats, strict=True)
    ident = [[str(p.resolve()), st.st_size, st.st_mtime_ns] for p, st in pairs]
    return hashlib.sha256(json.dumps([CACHE_VERSION, ident]).encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """Write a temp file beside `target`, then rename it over: never half a file."""
    prefix = f".{target.name}."
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_Cached = tuple[Vocab, np.ndarray]


def _load_cached(tokens_file: Path, vocab_file: Path) -> _Cached | None:
    """The cached (vocab, tokens), or None if absent or unusable (then rebuilt)."""
    try:
        present = tokens_file.is_file() and vocab_file.is_file()
    except OSError:  # is_file() raises e.g. for a name too long; writing the cache then says so
        return None
    if not present:
        return None
    try:
        vocab = Vocab.from_array(np.load(vocab_file, allow_pickle=False))
        tokens = np.load(tokens_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, CorpusError):
        return None
    if tokens.ndim != 1 or len(tokens) == 0 or tokens.dtype != token_dtype(vocab.size):
        return None
    return vocab, tokens


def _write_cache(
    tokens_file: Path,
    vocab_file: Path,
    vocab: Vocab,
    n: int,
    chunks: Iterator[np.ndarray],
) -> None:
    """Stream the ids into a .npy file piece by piece: memory stays one chunk deep."""
    header = {
        "descr": np.lib.format.dtype_to_descr(token_dtype(vocab.size)),
        "fortran_order": False,
        "shape": (n,),
    }
    try:
        tokens_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(tokens_file) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for ids in chunks:
                f.write(ids.data)
        with atomic_file(vocab_file) as f:
            np.save(f, vocab.to_array(), allow_pickle=False)
    except OSError as e:
        where = e.filename or tokens_file.parent
        msg = f"{where}: cannot write the token cache ({e.strerror or e})"
        raise CorpusError(msg) from None


def load_corpus(
    paths: Sequence[Path | str],
    cache_dir: Path | str | None = None,
    progress: ProgressFn | None = None,
) -> Corpus:
    """Read UTF-8 files, concatenated in order, into a token array and its vocabulary.

    Two streaming passes: the character set, then the ids. With `cache_dir` the ids go
    to a .npy file keyed by the files' absolute paths, sizes and mtimes, and are
    memory-mapped read-only; a later call with unchanged files reads only that cache
    (and never calls `progress`). Without `cache_dir` the ids are kept in memory.
    `progress(done, total)` counts bytes over both passes: total is 2 x corpus bytes.
    """
    paths = tuple(Path(p) for p in paths)
    if not paths:
        raise CorpusError("no corpus files given")
    stats = [_check_file(p) for p in paths]

    tokens_file = vocab_file = None
    if cache_dir is not None:
        stem = f"{paths[0].stem}-{_cache_key(paths, stats)}"
        tokens_file = Path(cache_dir) / f"{stem}.tokens.npy"
        vocab_file = Path(cache_dir) / f"{stem}.vocab.npy"
        hit = _load_cached(tokens_file, vocab_file)
        if hit is not None:
            return Corpus(paths, hit[0], hit[1], cached=True)

    report = _Progress(progress, 2 * sum(st.st_size for st in stats))
    chars, counts = _scan(paths, report)
    vocab = Vocab(sorted(chars))
    n = sum(counts)
    chunks = _encoded_chunks(paths, counts, vocab, report)
    if tokens_file is None or vocab_file is None:
        tokens = np.empty(n, dtype=token_dtype(vocab.size))
        pos = 0
        for ids in chunks:
            tokens[pos : pos + len(ids)] = ids
            pos += len(ids)
        tokens.flags.writeable = False  # same contract as the read-only memmap
    else:
        _write_cache(tokens_file, vocab_file, vocab, n, chunks)
        tokens = np.load(tokens_file, mmap_mode="r", allow_pickle=False)
    return Corpus(paths, vocab, tokens, cached=False)


# ---------------------------------------------------------------------------- batching


def _check_shape(batch: int, seq_len: int) -> None:
    if batch < 1 or seq_len < 1:
        msg = f"batch size and window must be >= 1, got {batch} and {seq_len}"
        raise ConfigError(msg)


def fit_batch_shape(n_tokens: int, batch: int, seq_len: int, *, name: str = "corpus") -> tuple[int, int]:
    """The (batch, seq_len) to use on n_tokens: as asked, or smaller for a short text.

    Each of the B streams holds S = (n_tokens - 1) // B tokens and needs S >= T + 1 for
    one window. Short texts shrink B and T by the same factor (so neither collapses to 1
    first), then B grows back as far as the chosen T allows.
    """
    _check_shape(batch, seq_len)
    if n_tokens < MIN_TRAIN_CHARS:
        raise CorpusError(
            f"{name}: too small to train on ({n_tokens} training characters, need "
            f"at least {MIN_TRAIN_CHARS}); use a longer text or less validation"
        )
    avail = n_tokens - 1
    if avail // batch >= seq_len + 1:
        return batch, seq_len
    scale = math.sqrt(avail / (batch * (seq_len + 1)))
    # at most avail // 2 streams keeps S >= 2, so T >= 1 fits
    b = max(1, min(int(batch * scale), avail // 2))
    t = min(seq_len, avail // b - 1)
    b = min(batch, avail // (t + 1))
    return b, t


def _shrink_notice(batch: int, seq_len: int, b: int, t: int) -> str:
    parts = []
    if b != batch:
        parts.append(f"batch size {batch} -> {b}")
    if t != seq_len:
        parts.append(f"window {seq_len} -> {t}")
    return "corpus is small: " + ", ".join(parts)


class BatchStream:
    """Training windows for truncated BPTT over B parallel contiguous streams.

    The tokens are cut into B segments of S = (N - 1) // B; window k of an epoch gives
    column b = tokens[b*S + k*T : b*S + k*T + T], so each column continues the one
    before and the hidden state can carry over. An epoch is (S - 1) // T windows (a
    last partial window is dropped); at its end the streams restart from their
    segment starts and `next_batch` flags `reset` so the caller zeroes its state.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch: int,
        seq_len: int,
        *,
        notice: NoticeFn | None = None,
        name: str = "corpus",
    ) -> None:
        b, t = fit_batch_shape(len(tokens), batch, seq_len, name=name)
        if (b, t) != (batch, seq_len) and notice is not None:
            notice(_shrink_notice(batch, seq_len, b, t))
        self.tokens = tokens  # (N,)
        self.batch, self.seq_len = b, t
        self.stream_len = (len(tokens) - 1) // b  # S
        self.windows_per_epoch = (self.stream_len - 1) // t
        # (T+1, B) offsets of window 0; window k adds k*T
        self._index = np.arange(t + 1)[:, None] + np.arange(b) * self.stream_len
        self._epoch = 0
        self._window = 0  # index within the epoch of the next window to return

    @property
    def epoch(self) -> float:
        """Epochs done so far, fractional (1.37 = 37% into the second epoch)."""
        return self._epoch + self._window / self.windows_per_epoch

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(inputs, targets, reset): (T, B) int64 each; reset on each epoch's start."""
        reset = self._window == 0
        index = self._index + self._window * self.seq_len
        window = np.asarray(self.tokens[index], dtype=np.int64)  # (T+1, B)
        self._window += 1
        if self._window == self.windows_per_epoch:
            self._epoch += 1
            self._window = 0
        return window[:-1], window[1:], reset

    def state(self) -> dict[str, int]:
        """The position, plus the layout it is only valid for (saved in checkpoints)."""
        return {
            "epoch": self._epoch,
            "window": self._window,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "n_tokens": len(self.tokens),
        }

    def restore(self, state: dict[str, int]) -> None:
        """Go back to a `state()`: the next batch is the one that followed it then."""
        mine = self.state()
        for key in ("batch", "seq_len", "n_tokens"):
            if key in state and int(state[key]) != mine[key]:
                raise ConfigError(
                    f"cannot resume: {key} was {state[key]}, now {mine[key]} "
                    "(the corpus, batch size or window changed)"
                )
        try:
            epoch, window = int(state["epoch"]), int(state["window"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError("cannot resume: the batch position is missing") from None
        if epoch < 0 or not 0 <= window < self.windows_per_epoch:
            msg = f"cannot resume: position epoch={epoch} window={window} is invalid"
            raise ConfigError(msg)
        self._epoch, self._window = epoch, window


def val_batches(tokens: np.ndarray, batch: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One full pass over validation tokens as (inputs (T, B), targets (T, B)) int64.

    Cut like BatchStream, with B lowered so each stream has at least seq_len + 1 tokens
    where the text allows; every window continues the previous one (carry the state).
    Unlike training, the last window of a stream may be shorter than seq_len, and a
    stream's last target is the next stream's first token, so only the up to B - 1
    tokens past B*S go unpredicted. Yields nothing for fewer than 2 tokens.
    """
    _check_shape(batch, seq_len)
    return _val_windows(tokens, batch, seq_len)


def _val_windows(tokens: np.ndarray, batch: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(tokens)
    if n < 2:
        return
    b = max(1, min(batch, (n - 1) // (seq_len + 1)))
    s = (n - 1) // b
    starts = np.arange(b) * s  # (B,)
    for p in range(0, s, seq_len):
        t = min(seq_len, s - p)
        index = np.arange(t + 1)[:, None] + starts + p
        window = np.asarray(tokens[index], dtype=np.int64)  # (T+1, B)
        yield window[:-1], window[1:]
