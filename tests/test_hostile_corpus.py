"""Hostile input to the corpus reader and the vocabulary (hypothesis).

Whatever bytes a file holds, `load_corpus` and `read_text` either load exactly the text
Python's strict UTF-8 decoder sees, or raise CorpusError with a one-line message: never
another exception, never a hang. The oracle is `bytes.decode("utf-8")`, not data.py's
incremental decoder, and reads are made tiny so every character straddles a read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm import data
from charlstm.data import (
    BatchStream,
    Vocab,
    encode_known,
    fit_batch_shape,
    load_corpus,
    read_text,
    token_dtype,
    val_batches,
)
from charlstm.errors import CharLSTMError, ConfigError, CorpusError

# Every example writes a file; the first one also imports and warms numpy paths.
HOSTILE = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class HangError(Exception):
    """Raised by `no_hang` when the guarded block runs past its limit."""


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: hypothesis deadlines only report after a call returns."""

    def expire(signum, frame):
        raise HangError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message.strip(), "empty error message"
    assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
    return message


# ------------------------------------------------------------------------- byte sources

# Pieces that a hostile or merely unlucky file is made of.
NASTY_PIECES = [
    b"\x00",  # NUL: binary files, UTF-16
    b"\xed\xa0\x80",  # a lone high surrogate U+D800 written as (invalid) UTF-8
    b"\xed\xbf\xbf",  # a lone low surrogate U+DFFF
    b"\xc0\x80",  # overlong NUL (Java's modified UTF-8)
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # a five-byte sequence
    b"\x80",  # a stray continuation byte
    b"\xe2\x82",  # a truncated three-byte character
    b"\xef\xbb\xbf",  # a UTF-8 byte-order mark (valid: it is U+FEFF)
    b"\xff\xfe",  # a UTF-16 byte-order mark
    b"\r\n",
    b"\x1b[31m",  # an ANSI escape: control characters are text
    b"\x7f\x01\x08\x0c",
]

# any code point a str can hold, lone surrogates included
ANY_CHAR = st.characters(codec=None, exclude_categories=())
# text that UTF-8 can encode (no surrogates)
ENCODABLE_CHAR = st.characters(exclude_categories=("Cs",))

utf8_pieces = st.text(ENCODABLE_CHAR, max_size=12).map(lambda s: s.encode("utf-8"))
surrogate_pieces = st.text(ANY_CHAR, min_size=1, max_size=4).map(lambda s: s.encode("utf-8", "surrogatepass"))
file_bytes = st.one_of(
    st.binary(max_size=64),
    st.lists(
        st.one_of(utf8_pieces, surrogate_pieces, st.sampled_from(NASTY_PIECES), st.binary(max_size=3)),
        max_size=12,
    ).map(b"".join),
)


def expected_error(raw: bytes) -> re.Pattern | None:
    """What a strict reading of `raw` must report, or None when it is good text.

    A NUL and a bad sequence in one file may be found in either order (it depends on how
    the file is cut into reads), so then either message is accepted.
    """
    if not raw:
        return re.compile("file is empty")
    patterns = []
    nul = raw.find(b"\0")
    if nul >= 0:
        patterns.append(rf"looks like a binary file \(NUL byte at offset {nul}\)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        patterns.append(rf"invalid UTF-8 at byte offset {e.start}$")
    return re.compile("|".join(patterns)) if patterns else None


@contextlib.contextmanager
def chunk_bytes(n: int) -> Iterator[None]:
    old = data.CHUNK_BYTES
    data.CHUNK_BYTES = n
    try:
        yield
    finally:
        data.CHUNK_BYTES = old


# ------------------------------------------------------------------------ corpus reader


@HOSTILE
@given(raw=file_bytes, chunk=st.integers(1, 9), cached=st.booleans())
def test_any_bytes_load_exactly_or_fail_in_one_line(tmp_path_factory, raw, chunk, cached):
    folder = tmp_path_factory.mktemp("corpus")
    path = folder / "input.txt"
    path.write_bytes(raw)
    cache = folder / "cache" if cached else None
    problem = expected_error(raw)

    with no_hang(10), chunk_bytes(chunk):
        if problem is not None:
            for read in (lambda: load_corpus([path], cache), lambda: read_text(path)):
                with pytest.raises(CorpusError) as info:
                    read()
                message = assert_one_line(info.value)
                assert message.startswith(f"{path}: ")
                assert problem.search(message), message
            return

        text = raw.decode("utf-8")
        corpus = load_corpus([path], cache)
        again = load_corpus([path], cache) if cached else None
        assert read_text(path) == text

    assert corpus.n_chars == len(text)
    assert corpus.vocab.chars == sorted(set(text))
    assert corpus.tokens.dtype == token_dtype(corpus.vocab.size)
    assert corpus.vocab.decode(corpus.tokens) == text
    if again is not None:
        assert again.cached and again.vocab == corpus.vocab
        assert np.array_equal(again.tokens, corpus.tokens)


@HOSTILE
@given(files=st.lists(file_bytes, min_size=1, max_size=4))
def test_several_files_name_the_bad_one(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("several")
    paths = []
    for i, raw in enumerate(files):
        paths.append(folder / f"part{i}.txt")
        paths[-1].write_bytes(raw)
    # files are checked for emptiness first, then read in order
    bad = [p for p, raw in zip(paths, files, strict=True) if not raw]
    bad += [p for p, raw in zip(paths, files, strict=True) if raw and expected_error(raw)]

    with no_hang(10):
        if bad:
            with pytest.raises(CorpusError) as info:
                load_corpus(paths)
            assert assert_one_line(info.value).startswith(f"{bad[0]}: ")
            return
        corpus = load_corpus(paths)
    text = "".join(raw.decode("utf-8") for raw in files)
    assert corpus.vocab.decode(corpus.tokens) == text


def test_one_very_long_line_across_reads(tmp_path):
    # 6.3 MB with no newline; 3-byte characters put character boundaries off every read
    # boundary of the default 4 MiB reads
    line = ("x" + "€" * 20 + "漢") * 100_000
    path = tmp_path / "long.txt"
    path.write_bytes(line.encode("utf-8"))
    with no_hang(30):
        started = time.perf_counter()
        corpus = load_corpus([path], tmp_path / "cache")
        seconds = time.perf_counter() - started
    assert corpus.n_chars == len(line)
    assert corpus.vocab.chars == ["x", "€", "漢"]
    assert corpus.vocab.decode(corpus.tokens[-22:]) == line[-22:]
    assert seconds < 10, f"6 MB took {seconds:.1f} s"

    # a bad byte far past the first read is reported at its exact offset
    raw = bytearray(path.read_bytes())
    raw[5_000_001] = 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorpusError, match=r"invalid UTF-8 at byte offset 5000001$"):
        load_corpus([path])


@pytest.mark.parametrize(
    "raw, outcome",
    [
        (b"a", "loads"),
        (b"\n", "loads"),
        ("😀".encode(), "loads"),
        (b"\x01", "loads"),  # a control character is a character
        (b"\x00", "NUL byte at offset 0"),
        (b"\xed\xa0\x80", "invalid UTF-8 at byte offset 0"),
        (b"\xff", "invalid UTF-8 at byte offset 0"),
        (b"", "file is empty"),
    ],
)
def test_one_character(tmp_path, raw, outcome):
    path = tmp_path / "one.txt"
    path.write_bytes(raw)
    if outcome != "loads":
        with pytest.raises(CorpusError, match=re.escape(outcome)):
            load_corpus([path])
        return
    corpus = load_corpus([path])
    assert corpus.n_chars == 1 and corpus.vocab.size == 1
    # one character loads, but is too small to train on: a clear error, not an IndexError
    with pytest.raises(CorpusError, match="too small to train on"):
        BatchStream(corpus.tokens, 4, 8)


def not_a_regular_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":  # opening a FIFO for reading blocks until a writer comes: a hang
        os.mkfifo(path)
    elif kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "symlink-loop":
        path.symlink_to(path)
    elif kind == "device":
        path = Path("/dev/zero")  # endless: reading it whole would never finish
    elif kind == "name-too-long":
        path = tmp_path / ("x" * 300)
    elif kind == "under-a-file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "child.txt"
    return path


@pytest.mark.parametrize(
    "kind",
    ["directory", "fifo", "dangling-symlink", "symlink-loop", "device", "name-too-long", "under-a-file"],
)
def test_not_a_regular_file(tmp_path, kind):
    path = not_a_regular_file(tmp_path, kind)
    with no_hang(5):
        for read in (lambda: load_corpus([path]), lambda: read_text(path)):
            with pytest.raises(CorpusError) as info:
                read()
            assert assert_one_line(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("cache", ["x" * 300, "a-file/cache", "a-file"])
def test_unusable_cache_folder(tmp_path, cache):
    # a cache folder that cannot exist: one error line naming it, not an OSError from a stat
    path = tmp_path / "input.txt"
    path.write_text("some text")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CorpusError, match="cannot write the token cache") as info:
        load_corpus([path], tmp_path / cache)
    assert_one_line(info.value)


# -------------------------------------------------------------------------- vocabulary


@HOSTILE
@given(text=st.text(ANY_CHAR, max_size=40), other=st.text(ANY_CHAR, max_size=20))
def test_vocab_of_any_text(text, other):
    # lone surrogates, NUL and control characters included: a str may hold them all, but a
    # vocabulary holds neither NUL nor surrogates (no UTF-8 text has them; none can be printed)
    if "\0" in text or not text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        with pytest.raises(CorpusError) as info:
            Vocab.from_text(text)
        assert_one_line(info.value)
        return
    vocab = Vocab.from_text(text)
    assert vocab.chars == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert Vocab.from_array(vocab.to_array()) == vocab

    unknown = sorted(set(other) - set(text))
    assert vocab.unknown(other) == unknown
    ids, known = encode_known(other, vocab)
    assert known.tolist() == [c in vocab.chars for c in other]
    assert all(0 <= i < vocab.size for i in ids.tolist())
    if unknown:
        with pytest.raises(CorpusError) as info:
            vocab.encode(other)
        assert_one_line(info.value)  # repr() keeps a newline or a control character escaped
    else:
        assert vocab.decode(vocab.encode(other)) == other


@HOSTILE
@given(chars=st.lists(st.text(ANY_CHAR, max_size=3), max_size=8))
def test_vocab_from_any_list_of_strings(chars):
    try:
        vocab = Vocab(chars)
    except CorpusError as e:
        assert_one_line(e)
        return
    assert vocab.chars == chars
    assert all(len(c) == 1 for c in chars) and "\0" not in chars
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in chars)
    assert [ord(c) for c in chars] == sorted({ord(c) for c in chars})


array_cases = st.one_of(
    st.lists(st.text(ANY_CHAR, max_size=2), max_size=6).map(np.array),
    st.lists(st.binary(max_size=2), max_size=6).map(lambda x: np.array(x, dtype="S2")),
    st.lists(st.integers(-5, 0x11_0000), max_size=6).map(np.array),
    st.lists(st.characters(codec=None), max_size=6).map(lambda x: np.array(x, dtype=object)),
    st.lists(st.characters(codec=None), min_size=1, max_size=6).map(lambda x: np.array([x, x])),
    st.just(np.array("abc")),
    st.just(np.zeros((0,), dtype="<U1")),
)


@HOSTILE
@given(arr=array_cases)
def test_vocab_from_any_array(arr):
    # how a checkpoint's vocabulary comes back: any array must give a Vocab or CorpusError
    try:
        vocab = Vocab.from_array(arr)
    except CorpusError as e:
        assert_one_line(e)
        return
    assert vocab.to_array().tolist() == arr.tolist()


# ----------------------------------------------------------------------------- batching


@HOSTILE
@given(
    n=st.integers(0, 60),
    batch=st.integers(-2, 70),
    seq_len=st.integers(-2, 70),
    val_frac=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([float("nan"), float("inf"), 1e-300])),
)
def test_any_size_and_shape_batch_or_fail_cleanly(n, batch, seq_len, val_frac):
    tokens = (np.arange(n) % 7).astype(np.uint8)
    try:
        corpus_split = data.train_size(n, val_frac)
    except ConfigError as e:
        assert_one_line(e)
        assert not 0 <= val_frac < 1
        return
    assert 0 <= corpus_split <= n
    try:
        stream = BatchStream(tokens[:corpus_split], batch, seq_len)
    except CharLSTMError as e:
        assert isinstance(e, ConfigError | CorpusError)
        assert_one_line(e)
        assert batch < 1 or seq_len < 1 or corpus_split < data.MIN_TRAIN_CHARS
        return
    b, t = stream.batch, stream.seq_len
    assert (b, t) == fit_batch_shape(corpus_split, batch, seq_len)
    assert 1 <= b <= batch and 1 <= t <= seq_len
    assert stream.windows_per_epoch >= 1
    for _ in range(stream.windows_per_epoch + 1):  # one epoch and the wrap-around
        x, y, _reset = stream.next_batch()
        assert x.shape == y.shape == (t, b)
    for x, y in val_batches(tokens[corpus_split:], batch, seq_len):
        assert x.shape == y.shape and x.shape[0] >= 1


def test_surrogate_in_text_is_unknown_not_a_crash():
    # a str from a surrogateescape'd command line may hold lone surrogates
    vocab = Vocab.from_text("abc")
    text = "a\udcff\ud800b"
    ids, known = encode_known(text, vocab)
    assert known.tolist() == [True, False, False, True]
    with pytest.raises(CorpusError, match="not in the vocabulary"):
        vocab.encode(text)


def test_hypothesis_guard_is_armed():
    # the hang guard itself: a blocking call is interrupted, not waited for
    with pytest.raises(HangError), no_hang(0.2):
        time.sleep(5)
