"""Tests for charlstm.data: corpus loading, cache and errors, vocabulary, batching.

Batch layouts are checked against a loop-per-column reference written here from the
definition, not against the vectorised indexing in data.py.
"""

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
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
    train_size,
    val_batches,
)
from charlstm.errors import CharLSTMError, ConfigError, CorpusError

SHAKESPEARE = Path(__file__).resolve().parents[1] / "corpora" / "tinyshakespeare.txt"

# accents, a dash, CJK, emoji, astral math letters (4-byte UTF-8, one code point each)
MIXED = "Café naïve — 中文字符, emoji 😀🎉, math 𝔘𝔫𝔦, done.\n"


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def reference_window(tokens, batch, seq_len, k):
    """Window k built column by column from the BatchStream definition."""
    s = (len(tokens) - 1) // batch
    x = np.zeros((seq_len, batch), dtype=np.int64)
    y = np.zeros((seq_len, batch), dtype=np.int64)
    for b in range(batch):
        start = b * s + k * seq_len
        x[:, b] = tokens[start : start + seq_len]
        y[:, b] = tokens[start + 1 : start + seq_len + 1]
    return x, y


# --- vocabulary


def test_vocab_is_sorted_by_code_point():
    vocab = Vocab.from_text(MIXED)
    assert vocab.chars == sorted(set(MIXED), key=ord)
    codes = [ord(c) for c in vocab.chars]
    assert all(a < b for a, b in itertools.pairwise(codes))
    assert vocab.size == len(set(MIXED))


def test_vocab_round_trip_non_ascii():
    vocab = Vocab.from_text(MIXED)
    ids = vocab.encode(MIXED)
    assert ids.dtype == np.int64
    assert ids.shape == (len(MIXED),)  # one id per code point, no surrogate pairs
    assert ids[MIXED.index("😀")] == vocab.chars.index("😀")
    assert vocab.decode(ids) == MIXED
    assert vocab.decode(ids.tolist()) == MIXED


def test_vocab_array_round_trip(tmp_path):
    vocab = Vocab.from_text(MIXED)
    arr = vocab.to_array()
    assert arr.dtype == np.dtype("<U1")
    assert arr.shape == (vocab.size,)
    np.save(tmp_path / "v.npy", arr, allow_pickle=False)
    back = Vocab.from_array(np.load(tmp_path / "v.npy", allow_pickle=False))
    assert back == vocab
    assert back.decode(vocab.encode(MIXED)) == MIXED


@settings(max_examples=50, deadline=None, database=None)
@given(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1))
def test_vocab_round_trip_any_text(text):
    vocab = Vocab.from_array(Vocab.from_text(text).to_array())
    assert vocab.decode(vocab.encode(text)) == text


def test_vocab_rejects_unsorted_or_repeated():
    with pytest.raises(CorpusError):
        Vocab(["b", "a"])
    with pytest.raises(CorpusError):
        Vocab(["a", "a"])
    with pytest.raises(CorpusError):
        Vocab(["ab"])


def test_unknown_characters():
    vocab = Vocab.from_text("abc ")
    text = "a b😀 é x c"
    assert vocab.unknown(text) == ["x", "é", "😀"]
    with pytest.raises(CorpusError, match="'x', 'é', '😀'") as info:
        vocab.encode(text)
    assert isinstance(info.value, CharLSTMError)
    ids, known = encode_known(text, vocab)
    assert ids.shape == known.shape == (len(text),)
    assert known.tolist() == [c in "abc " for c in text]
    assert (~known).sum() == 3
    assert vocab.decode(ids[known]) == "".join(c for c in text if c in "abc ")


# --- corpus and split


def test_tinyshakespeare_split_sizes(tmp_path):
    corpus = load_corpus([SHAKESPEARE], cache_dir=tmp_path)
    assert corpus.n_chars == 1_115_394
    assert corpus.vocab.size == 65
    assert corpus.tokens.dtype == np.uint8
    train, val = corpus.split(0.1)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert [len(a) for a in corpus.split()] == [1_003_854, 111_540]
    assert corpus.vocab.decode(train[:14]) == "First Citizen:"
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert corpus.vocab.decode(val) == text[1_003_854:]


def test_train_size_is_exact_decimal():
    assert train_size(1_115_394, 0.1) == 1_003_854
    assert train_size(10, 0.9) == 1  # 10 * (1 - 0.9) is 0.999... in floats
    assert train_size(1000, 0.3) == 700
    assert train_size(7, 0.0) == 7
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            train_size(10, bad)


def test_split_without_validation(tmp_path):
    corpus = load_corpus([write(tmp_path, "a.txt", "hello world")])
    train, val = corpus.split(0)
    assert len(train) == 11
    assert len(val) == 0


def test_multiple_files_concatenate_in_order(tmp_path):
    a = write(tmp_path, "a.txt", "Hello, ")
    b = write(tmp_path, "b.txt", "wörld 😀\n")
    cache = tmp_path / "cache"
    ab = load_corpus([a, b], cache_dir=cache)
    assert ab.vocab.decode(ab.tokens) == "Hello, wörld 😀\n"
    assert ab.n_chars == 15
    ba = load_corpus([b, a], cache_dir=cache)
    assert not ba.cached  # another order is another corpus, not a cache hit
    assert ba.vocab.decode(ba.tokens) == "wörld 😀\nHello, "
    assert ab.vocab == ba.vocab
    assert ab.name == f"{a}, {b}"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_characters_split_across_reads(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk)
    path = write(tmp_path, "mixed.txt", MIXED * 3)
    corpus = load_corpus([path])
    assert corpus.vocab.decode(corpus.tokens) == MIXED * 3
    assert corpus.vocab == Vocab.from_text(MIXED)
    assert read_text(path) == MIXED * 3


def test_token_dtype_boundaries():
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


@pytest.mark.parametrize(("n_chars", "dtype"), [(100, np.uint8), (300, np.uint16), (65537, np.uint32)])
def test_token_file_dtype(tmp_path, n_chars, dtype):
    codes = [c for c in range(1, 0x20000) if not 0xD800 <= c < 0xE000][:n_chars]
    text = "".join(map(chr, codes))
    corpus = load_corpus([write(tmp_path, "t.txt", text)], cache_dir=tmp_path / "c")
    assert corpus.vocab.size == n_chars
    assert corpus.tokens.dtype == dtype
    assert corpus.vocab.decode(corpus.tokens) == text


def test_progress_counts_both_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_BYTES", 8)
    path = write(tmp_path, "p.txt", MIXED)
    size = path.stat().st_size
    calls = []
    load_corpus([path], progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 2 * size)
    assert calls[-1] == (2 * size, 2 * size)
    assert all(total == 2 * size for _, total in calls)
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)
    assert len(calls) > 4  # one call per read, not just start and end


# --- cache


def test_cache_is_reused_without_reading(tmp_path, monkeypatch):
    path = write(tmp_path, "c.txt", MIXED * 10)
    cache = tmp_path / "cache"
    calls = []
    first = load_corpus([path], cache_dir=cache, progress=lambda *a: calls.append(a))
    assert not first.cached
    assert calls
    files = sorted(cache.iterdir())
    assert [f.name.split(".", 1)[1] for f in files] == ["tokens.npy", "vocab.npy"]
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(data, "_decoded_chunks", no_reading)
    calls.clear()
    second = load_corpus([path], cache_dir=cache, progress=lambda *a: calls.append(a))
    assert second.cached
    assert calls == []
    assert [f.stat().st_mtime_ns for f in sorted(cache.iterdir())] == mtimes
    assert isinstance(second.tokens, np.memmap)
    assert not second.tokens.flags.writeable
    assert second.vocab == first.vocab
    assert np.array_equal(second.tokens, first.tokens)


def test_cache_is_rebuilt_when_a_file_changes(tmp_path):
    path = write(tmp_path, "c.txt", "aaaa bbbb")
    cache = tmp_path / "cache"
    load_corpus([path], cache_dir=cache)
    before = path.stat()
    write(tmp_path, "c.txt", "cccc dddd")  # same size: only the mtime tells
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    again = load_corpus([path], cache_dir=cache)
    assert not again.cached
    assert again.vocab.decode(again.tokens) == "cccc dddd"


def test_damaged_cache_is_rebuilt(tmp_path):
    path = write(tmp_path, "c.txt", MIXED)
    cache = tmp_path / "cache"
    load_corpus([path], cache_dir=cache)
    (tokens_file,) = cache.glob("*.tokens.npy")
    tokens_file.write_bytes(tokens_file.read_bytes()[:20])
    again = load_corpus([path], cache_dir=cache)
    assert not again.cached
    assert again.vocab.decode(again.tokens) == MIXED


def test_failed_build_leaves_no_temp_files(tmp_path, monkeypatch):
    def fails_midway(*args):
        yield np.zeros(3, dtype=np.uint8)
        raise CorpusError("x.txt: file changed while being read")

    monkeypatch.setattr(data, "_encoded_chunks", fails_midway)
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError):
        load_corpus([write(tmp_path, "x.txt", "some text")], cache_dir=cache)
    assert list(cache.iterdir()) == []


# --- bad input


BAD_INPUTS = {
    "missing": (None, "no such file"),
    "directory": (None, "is a directory"),
    "empty": (b"", "is empty"),
    "nul": (b"hello\x00world", "looks like a binary file (NUL byte at offset 5)"),
    "utf16": ("hi".encode("utf-16"), "looks like a binary file"),
    "bad byte": ("café ok ".encode() + b"\xff more", "invalid UTF-8 at byte offset 9"),
    "latin-1": ("naïve".encode("latin-1"), "invalid UTF-8 at byte offset 2"),
    "cut at end": ("abc€".encode()[:-1], "invalid UTF-8 at byte offset 3"),
    "surrogate": (b"ab\xed\xa0\x80", "invalid UTF-8 at byte offset 2"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file(tmp_path, case):
    content, expected = BAD_INPUTS[case]
    path = tmp_path / "in put.txt"
    if case == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    for load in (
        lambda: load_corpus([path], cache_dir=tmp_path / "c"),
        lambda: read_text(path),
    ):
        with pytest.raises(CorpusError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message
        assert str(path) in message
        assert expected in message


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 1 << 22])
def test_bad_byte_offset_across_reads(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk)
    # 'abcé' is 5 bytes; then the first two bytes of '中' followed by 'Z'
    path = write(tmp_path, "x.txt", "abcé".encode() + b"\xe4\xb8Z tail")
    with pytest.raises(CorpusError, match="invalid UTF-8 at byte offset 5$"):
        load_corpus([path])
    nul = write(tmp_path, "n.txt", b"abcdefg\x00")
    with pytest.raises(CorpusError, match="NUL byte at offset 7"):
        load_corpus([nul])


def test_bad_file_among_several_is_named(tmp_path):
    good = write(tmp_path, "good.txt", "fine")
    bad = write(tmp_path, "bad.txt", b"\x00")
    with pytest.raises(CorpusError, match=r"bad\.txt: looks like a binary") as info:
        load_corpus([good, bad])
    assert "good.txt" not in str(info.value)


def test_no_files(tmp_path):
    with pytest.raises(CorpusError):
        load_corpus([])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, "secret.txt", "text")
    path.chmod(0)
    with pytest.raises(CorpusError, match="cannot read"):
        load_corpus([path])


@pytest.mark.parametrize("text", ["a", "ab"])
def test_too_small_to_train_on(tmp_path, text):
    corpus = load_corpus([write(tmp_path, "tiny.txt", text)])
    train, _ = corpus.split(0)
    with pytest.raises(CorpusError, match="too small to train on") as info:
        BatchStream(train, 32, 64, name=corpus.name)
    assert "\n" not in str(info.value)
    assert str(corpus.paths[0]) in str(info.value)


def test_smallest_trainable_corpus(tmp_path):
    corpus = load_corpus([write(tmp_path, "three.txt", "abc")])
    stream = BatchStream(corpus.tokens, 32, 64)
    assert (stream.batch, stream.seq_len, stream.windows_per_epoch) == (1, 1, 1)
    x, y, reset = stream.next_batch()
    assert (x.tolist(), y.tolist(), reset) == ([[0]], [[1]], True)


# --- batching


def test_batches_are_contiguous_streams():
    tokens = np.arange(103, dtype=np.uint16)  # each token equals its position
    stream = BatchStream(tokens, batch=4, seq_len=5)
    s = (103 - 1) // 4
    assert stream.stream_len == s
    assert stream.windows_per_epoch == (s - 1) // 5 == 4
    previous = None
    for k in range(4):
        x, y, reset = stream.next_batch()
        assert x.shape == y.shape == (5, 4)  # (T, B), time-major
        assert x.dtype == y.dtype == np.int64
        assert reset == (k == 0)
        assert np.array_equal(y[:-1], x[1:])  # targets are the inputs shifted by one
        for b in range(4):
            assert x[0, b] == b * s + k * 5
            assert y[-1, b] < (b + 1) * s  # never reads into the next segment
        if previous is not None:
            prev_x, prev_y = previous
            assert np.array_equal(x[0], prev_x[-1] + 1)  # row b continues row b
            assert np.array_equal(x[0], prev_y[-1])
        previous = x, y
    assert stream.epoch == 1.0
    x, _, reset = stream.next_batch()
    assert reset
    assert np.array_equal(x[0], np.arange(4) * s)


def test_batches_match_reference():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=500).astype(np.uint8)
    stream = BatchStream(tokens, batch=3, seq_len=7)
    wpe = stream.windows_per_epoch
    for step in range(2 * wpe + 3):
        x, y, reset = stream.next_batch()
        k = step % wpe
        want_x, want_y = reference_window(tokens, 3, 7, k)
        assert np.array_equal(x, want_x)
        assert np.array_equal(y, want_y)
        assert reset == (k == 0)


def test_epoch_progress():
    stream = BatchStream(np.zeros(103, dtype=np.uint8), batch=4, seq_len=5)
    assert stream.epoch == 0.0
    for _ in range(5):
        stream.next_batch()
    assert stream.epoch == pytest.approx(1.25)


def test_state_restore_gives_identical_batches():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 65, size=500).astype(np.uint8)
    stream = BatchStream(tokens, batch=3, seq_len=7)
    assert stream.windows_per_epoch == 23
    for _ in range(20):
        stream.next_batch()
    saved = json.loads(json.dumps(stream.state()))  # as a checkpoint would store it
    assert all(isinstance(v, int) for v in saved.values())
    epoch = stream.epoch
    after = [stream.next_batch() for _ in range(10)]  # crosses the epoch boundary
    assert any(reset for _, _, reset in after)

    resumed = BatchStream(tokens, batch=3, seq_len=7)
    resumed.restore(saved)
    assert resumed.epoch == epoch
    for x, y, reset in after:
        rx, ry, rreset = resumed.next_batch()
        assert np.array_equal(rx, x)
        assert np.array_equal(ry, y)
        assert rreset == reset
    assert resumed.state() == stream.state()


def test_restore_refuses_another_layout():
    tokens = np.zeros(500, dtype=np.uint8)
    saved = BatchStream(tokens, batch=3, seq_len=7).state()
    with pytest.raises(ConfigError, match="batch"):
        BatchStream(tokens, batch=4, seq_len=7).restore(saved)
    with pytest.raises(ConfigError, match="n_tokens"):
        BatchStream(tokens[:400], batch=3, seq_len=7).restore(saved)


def test_small_corpus_shrinks_with_notice():
    notices = []
    stream = BatchStream(np.arange(45), 32, 64, notice=notices.append)
    assert notices == ["corpus is small: batch size 32 -> 4, window 64 -> 10"]
    assert (stream.batch, stream.seq_len) == (4, 10)
    x, y, _ = stream.next_batch()
    assert x.shape == y.shape == (10, 4)

    notices.clear()
    BatchStream(np.arange(45), 2, 8, notice=notices.append)
    assert notices == []


def test_fit_batch_shape_always_gives_a_window():
    for n in range(3, 300):
        for batch, seq_len in [(1, 1), (1, 100), (32, 64), (64, 2), (8, 16)]:
            b, t = fit_batch_shape(n, batch, seq_len)
            assert 1 <= b <= batch and 1 <= t <= seq_len
            assert (n - 1) // b >= t + 1  # at least one full window per stream
            if (n - 1) // batch >= seq_len + 1:
                assert (b, t) == (batch, seq_len)
            else:
                assert b == batch or (n - 1) // (b + 1) < t + 1  # b is the most t allows


def test_val_batches_cover_the_array():
    tokens = np.arange(50)
    windows = list(val_batches(tokens, 4, 5))
    b, s = 4, 49 // 4
    assert [x.shape for x, _ in windows] == [(5, 4), (5, 4), (2, 4)]
    xs = np.concatenate([x for x, _ in windows])  # (S, B)
    ys = np.concatenate([y for _, y in windows])
    for col in range(b):
        assert np.array_equal(xs[:, col], tokens[col * s : col * s + s])
        assert np.array_equal(ys[:, col], tokens[col * s + 1 : col * s + s + 1])


def test_val_batches_shrink_batch_for_long_enough_streams():
    windows = list(val_batches(np.arange(20), 8, 5))
    assert windows[0][0].shape == (5, 3)  # 19 // 6 = 3 streams of 6 tokens
    assert list(val_batches(np.arange(1), 8, 5)) == []
    ((x, y),) = list(val_batches(np.arange(2), 8, 5))
    assert (x.tolist(), y.tolist()) == ([[0]], [[1]])
