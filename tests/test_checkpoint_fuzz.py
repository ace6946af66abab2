"""Fuzzing the checkpoint loader with a real checkpoint, mutated every way a file can go wrong.

Each broken file must be refused with a one-line CheckpointError naming it, within a second,
with the loader's peak traced allocation (numpy's buffers are traced too) under a small
multiple of the file's size; and loading never unpickles. A mutation the zip's checksums
cannot see (a timestamp, say) may load, but only as the same model.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import pickle
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm.checkpoint import FORMAT, TRAIN_PREFIX, Checkpoint, load_checkpoint, save_checkpoint
from charlstm.data import Vocab
from charlstm.errors import CheckpointError
from charlstm.model import ModelConfig, init_params
from charlstm.train import Hooks, last_path_for, train

MAX_SECONDS = 1.0


def allowed_peak(path: Path) -> int:
    """What loading may allocate: a small multiple of the file, whatever it claims."""
    return 4 * path.stat().st_size + (1 << 20)


FUZZ = settings(
    max_examples=200,
    deadline=None,  # the time limit is asserted per load instead
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """A best checkpoint and a training state written by a real (tiny) training run."""
    folder = tmp_path_factory.mktemp("real")
    corpus = folder / "corpus.txt"
    corpus.write_text("Hello, wörld! «quotes» 漢字 😀\n" * 40, encoding="utf-8")
    options = {"layers": 2, "hidden": 8, "embed": 4, "seq_len": 8, "batch_size": 4, "steps": 4}
    options["eval_every"] = 2
    out = folder / "models" / "tiny.npz"
    train([corpus], options, out=out, hooks=Hooks())
    return {"best": out, "last": last_path_for(out)}


@dataclass
class Outcome:
    checkpoint: Checkpoint | None
    error: CheckpointError | None
    seconds: float
    peak: int  # bytes, traced allocations during the load


def _load(path: Path, with_train_state: bool) -> tuple[Checkpoint | None, CheckpointError | None]:
    """Anything but a Checkpoint or CheckpointError propagates and fails the test."""
    try:
        return load_checkpoint(path, with_train_state=with_train_state), None
    except CheckpointError as e:
        return None, e


def measured_load(path: Path, with_train_state: bool = True) -> Outcome:
    """Load twice: timed (tracing slows allocation), then under tracemalloc for the peak."""
    started = time.perf_counter()
    _load(path, with_train_state)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        checkpoint, error = _load(path, with_train_state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return Outcome(checkpoint, error, seconds, peak)


def check_bounds(path: Path, outcome: Outcome) -> None:
    assert outcome.seconds < MAX_SECONDS, f"{path.name}: took {outcome.seconds:.2f} s"
    limit = allowed_peak(path)
    assert outcome.peak < limit, (
        f"{path.name}: peak {outcome.peak:,} bytes for a {path.stat().st_size:,}-byte file"
    )


def assert_refused(path: Path, match: str = "", with_train_state: bool = True) -> str:
    outcome = measured_load(path, with_train_state)
    assert outcome.error is not None, f"{path.name}: loaded, expected a CheckpointError"
    message = str(outcome.error)
    assert "\n" not in message and str(path) in message, message
    if match:
        assert match in message, message
    check_bounds(path, outcome)
    return message


def same_model(a: Checkpoint, b: Checkpoint) -> bool:
    return (
        a.params.flat.tobytes() == b.params.flat.tobytes()
        and a.vocab == b.vocab
        and a.config == b.config
        and sorted(a.train_state) == sorted(b.train_state)
        and all(
            a.train_state[k].dtype == b.train_state[k].dtype
            and a.train_state[k].tobytes() == b.train_state[k].tobytes()
            for k in a.train_state
        )
    )


# ------------------------------------------------------------------- archive surgery


def read_members(path: Path) -> dict[str, bytes]:
    """name (without .npy) -> the raw .npy bytes, in archive order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename[: -len(".npy")]: archive.read(info) for info in archive.infolist()}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)  # object arrays on purpose: the loader must refuse
    return buffer.getvalue()


def npy_header(shape: tuple, descr: str = "<f4", version: int = 1) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == 1:
        np.lib.format.write_array_header_1_0(buffer, header)
    else:
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes | np.ndarray], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, value in members.items():
            raw = value if isinstance(value, bytes) else npy(value)
            archive.writestr(name if name.endswith("/") else name + ".npy", raw)
    return path


def rewrite(src: Path, dst: Path, change: Callable[[dict[str, bytes | np.ndarray]], None]) -> Path:
    members: dict[str, bytes | np.ndarray] = dict(read_members(src))
    change(members)
    return write_zip(dst, members)


def array_of(members: dict, key: str) -> np.ndarray:
    return np.load(io.BytesIO(members[key]), allow_pickle=False)


def config_of(members: dict) -> dict:
    return json.loads(str(array_of(members, "config")))


def with_config(members: dict, **changes) -> None:
    config = config_of(members)
    config.update(changes)
    members["config"] = np.array(json.dumps(config))


PARAM_KEYS = ["embed", "lstm.0.Wx", "lstm.0.Wh", "lstm.0.b", "lstm.1.Wx", "lstm.1.Wh", "lstm.1.b"]
PARAM_KEYS += ["head.W", "head.b"]
REQUIRED_KEYS = ["format", "config", "vocab", *PARAM_KEYS]


# --------------------------------------------------------------------------- the real file


def test_the_real_checkpoints_load_within_bounds(real):
    for path in real.values():
        outcome = measured_load(path)
        assert outcome.error is None
        check_bounds(path, outcome)
    assert set(read_members(real["best"])) == set(REQUIRED_KEYS)
    assert measured_load(real["last"]).checkpoint.train_state  # the moments came back


def test_a_larger_checkpoint_loads_within_the_memory_bound(tmp_path):
    # the bound is not only met by tiny files: 2x128 with Adam moments is ~5 MB
    config = ModelConfig(vocab_size=90, layers=2, hidden=128, embed=32, dropout=0.0)
    params = init_params(config, np.random.default_rng(0))
    moments = {"m": np.zeros_like(params.flat), "v": np.ones_like(params.flat)}
    path = save_checkpoint(tmp_path / "big.last.npz", params, Vocab(map(chr, range(33, 123))), {}, moments)
    outcome = measured_load(path)
    assert outcome.error is None
    check_bounds(path, outcome)


# ------------------------------------------------------------------ random byte damage


@FUZZ
@given(data=st.data())
def test_truncated_anywhere(real, tmp_path_factory, data):
    src = real[data.draw(st.sampled_from(["best", "last"]))]
    raw = src.read_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    path = tmp_path_factory.mktemp("cut") / "cut.npz"
    path.write_bytes(raw[:cut])
    assert_refused(path)


@FUZZ
@given(data=st.data())
def test_flipped_bytes_are_refused_or_harmless(real, tmp_path_factory, data):
    src = real[data.draw(st.sampled_from(["best", "last"]))]
    raw = bytearray(src.read_bytes())
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=4),
        label="flips",
    )
    for at, mask in flips:
        raw[at] ^= mask
    path = tmp_path_factory.mktemp("flip") / "flipped.npz"
    path.write_bytes(bytes(raw))
    outcome = measured_load(path)
    check_bounds(path, outcome)
    if outcome.error is None:
        # only bytes nothing depends on (timestamps, version-made-by, ...) may go unnoticed
        assert same_model(outcome.checkpoint, load_checkpoint(src, with_train_state=True))
    else:
        assert "\n" not in str(outcome.error)


def directory_entries(raw: bytes) -> dict[str, int]:
    """member name -> where its entry in the zip's central directory starts."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        at, entries = archive.start_dir, {}
        for _ in archive.infolist():
            name_length, extra_length, comment_length = struct.unpack("<HHH", raw[at + 28 : at + 34])
            entries[raw[at + 46 : at + 46 + name_length].decode()] = at
            at += 46 + name_length + extra_length + comment_length
    return entries


@pytest.mark.parametrize("member", ["train.h.npy", "lstm.1.b.npy"])
def test_a_directory_entry_that_swallows_the_next_ones_is_refused(real, tmp_path, member):
    """A damaged comment length in one entry of the zip directory (found by the byte-flip fuzz:
    the high byte of train.h's) makes zipfile read the entries after it as that entry's
    comment; they must not vanish quietly, leaving a checkpoint without its last arrays (where
    they end mid-entry, zipfile refuses the directory itself)."""
    raw = bytearray(real["last"].read_bytes())
    raw[directory_entries(bytes(raw))[member] + 33] ^= 1  # comment length += 256
    path = tmp_path / "swallowed.npz"
    path.write_bytes(bytes(raw))
    assert_refused(path)


def test_a_corrupt_array_header_is_one_line(real, tmp_path):
    """A .npy header length 256 bytes too long (found by the byte-flip fuzz in train.m) makes
    numpy's header parser raise tokenize's error: refused in one line, not a traceback."""
    raw = bytearray(real["last"].read_bytes())
    with zipfile.ZipFile(real["last"]) as archive:
        info = archive.getinfo("train.m.npy")
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    data = info.header_offset + 30 + name_length + extra_length
    raw[data + 9] ^= 1  # the header length's high byte (magic 6, version 2, length 2 little-endian)
    path = tmp_path / "header.npz"
    path.write_bytes(bytes(raw))
    assert_refused(path)


# ----------------------------------------------------------------------- keys and arrays


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_dropped_key(real, tmp_path, key):
    path = rewrite(real["best"], tmp_path / "dropped.npz", lambda m: m.pop(key))
    assert_refused(path)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
@pytest.mark.parametrize("new_name", ["{}.bak", "{}x", "../{}", "/abs/{}", "{}/"])
def test_renamed_key(real, tmp_path, key, new_name):
    def rename(members):
        members[new_name.format(key)] = members.pop(key)

    assert_refused(rewrite(real["best"], tmp_path / "renamed.npz", rename))


def test_member_that_is_not_an_array(real, tmp_path):
    members = read_members(real["best"])
    path = tmp_path / "extra.npz"
    write_zip(path, members)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("README.txt", b"hello")
    assert_refused(path, "unexpected member")


CHANGED_DTYPES = ["<f8", "<f2", "<i4", ">f4", "<c8", "|b1", "<u1"]


@pytest.mark.parametrize("key", PARAM_KEYS)
@pytest.mark.parametrize("dtype", CHANGED_DTYPES)
def test_parameter_with_another_dtype(real, tmp_path, key, dtype):
    def change(members):
        members[key] = array_of(members, key).astype(dtype)

    assert_refused(rewrite(real["best"], tmp_path / "dtype.npz", change))


@pytest.mark.parametrize(
    "key, value",
    [
        ("vocab", lambda v: np.array([c.encode() for c in v.tolist()])),
        ("vocab", lambda v: v.astype("<U2")),
        ("vocab", lambda v: np.array([ord(c) for c in v.tolist()], dtype=np.int32)),
        ("vocab", lambda v: v[::-1].copy()),  # unsorted
        ("vocab", lambda v: np.concatenate([v[:1], v[:-1]])),  # a repeat
        ("vocab", lambda v: np.concatenate([np.array(["\0"]), v[1:]])),  # NUL
        ("vocab", lambda v: v.reshape(1, -1)),
        ("vocab", lambda v: v[:-1].copy()),  # one short of vocab_size
        ("format", lambda v: np.array(b"charlstm/1")),
        ("format", lambda v: np.array(["charlstm/1"])),
        ("format", lambda v: np.array(1)),
        ("format", lambda v: np.array("charlstm/" + "9" * 100_000)),
        ("config", lambda v: np.array(str(v).encode())),
        ("config", lambda v: np.array([str(v)])),
        ("config", lambda v: np.array(3.5)),
    ],
)
def test_text_arrays_with_the_wrong_type(real, tmp_path, key, value):
    def change(members):
        members[key] = value(array_of(members, key))

    assert_refused(rewrite(real["best"], tmp_path / "text.npz", change))


@pytest.mark.parametrize("key", PARAM_KEYS)
@pytest.mark.parametrize(
    "reshape",
    [
        lambda a: a.T.copy() if a.ndim == 2 and a.shape[0] != a.shape[1] else a[None],
        lambda a: a.reshape(-1) if a.ndim == 2 else a.reshape(1, -1, 1),
        lambda a: a[..., None],
        lambda a: np.float32(a.flat[0]),
        lambda a: a[:0],
        lambda a: np.concatenate([a, a]),
    ],
)
def test_parameter_with_another_shape(real, tmp_path, key, reshape):
    def change(members):
        members[key] = np.asarray(reshape(array_of(members, key)), dtype=np.float32)

    assert_refused(rewrite(real["best"], tmp_path / "shape.npz", change))


@pytest.mark.parametrize("key", PARAM_KEYS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(real, tmp_path, key, bad):
    def change(members):
        array = array_of(members, key).copy()
        array.flat[array.size // 2] = bad
        members[key] = array

    assert_refused(rewrite(real["best"], tmp_path / "nonfinite.npz", change), "NaN or infinite")


# ----------------------------------------------------------------------- hostile configs

BIG = 10**9


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden": BIG},
        {"hidden": 10**400},
        {"layers": BIG},
        {"embed": BIG},
        {"vocab_size": BIG},
        {"hidden": 0},
        {"layers": 0},
        {"hidden": -8},
        {"embed": -1},
        {"hidden": "8"},
        {"hidden": 8.0},
        {"hidden": True},
        {"hidden": None},
        {"hidden": [8]},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"dropout": "0.1"},
        {"dropout": True},
        {"hidden": 16384, "layers": 1},  # within the limits, but the file holds nothing that large
        {"hidden": 16384, "layers": 64},  # over the parameter limit
        {"vocab_size": 3},  # disagrees with the vocab array
        {"hidden": 16},  # disagrees with every weight's shape
        {"embed": 0},  # one-hot claimed, but an embedding is stored
    ],
)
def test_hostile_config_values(real, tmp_path, changes):
    path = rewrite(real["best"], tmp_path / "config.npz", lambda m: with_config(m, **changes))
    assert_refused(path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '"a string"',
        "[" * 100_000 + "]" * 100_000,  # deep nesting: RecursionError inside json
        '{"layers": 2, "hidden": NaN}',
        '{"layers": 2, "hidden": Infinity}',
        '{"layers": 2, "dropout": NaN, "hidden": 8, "embed": 4, "vocab_size": 18}',
        '{"hidden": 1' + "0" * 5000 + "}",  # past Python's int-digits limit
        '{"hidden": "\ud800"}',  # a lone surrogate in a str
    ],
)
def test_config_that_is_not_a_config(real, tmp_path, text):
    def change(members):
        members["config"] = np.array(text)

    assert_refused(rewrite(real["best"], tmp_path / "config.npz", change))


def test_config_string_too_large_to_read(real, tmp_path):
    def change(members):
        members["config"] = np.array(" " * 400_000 + json.dumps(config_of(members)))

    assert_refused(rewrite(real["best"], tmp_path / "config.npz", change), "more than it may hold")


# ------------------------------------------------------------------ headers that lie


@pytest.mark.parametrize(
    "header",
    [
        npy_header((10**12,)),  # a trillion floats
        npy_header((2**62, 2**62)),
        npy_header((-1, 32)),  # numpy's header reader accepts negative sizes
        npy_header((-(2**40),)),
        npy_header((10**9, 0)),
        npy_header((8, 32), descr="<U100000000"),
        npy_header((8, 32), descr="|O"),
        npy_header((8, 32), descr=[("a", "<f4"), ("b", "|O")]),
        npy_header((8, 32), version=2),
        b"\x93NUMPY\x09\x00" + b"\x00" * 20,  # an unknown .npy version
        b"\x93NUMPY\x01\x00\xff\xff" + b" " * 70_000,  # a header longer than allowed
        b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}   \n",
        b"\x93NUMPY\x01\x00\x20\x00__import__('os').system('x') \n",
        b"not numpy at all",
        b"",
    ],
)
def test_lying_npy_header(real, tmp_path, header):
    def change(members):
        members["lstm.0.Wh"] = header + bytes(64)  # no data worth the claim

    assert_refused(rewrite(real["best"], tmp_path / "header.npz", change))


# ----------------------------------------------------------------------------- zip bombs


def deflated(header: bytes, zeros: int) -> tuple[bytes, int, int]:
    """Raw deflate of `header` then `zeros` zero bytes (about 1000:1 for the zeros):
    (the stream, its inflated size, the CRC-32 of what it inflates to)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [packer.compress(header)]
    crc = zlib.crc32(header)
    block, left = bytes(1 << 20), zeros
    while left > 0:
        piece = block[: min(left, len(block))]
        parts.append(packer.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    parts.append(packer.flush())
    return b"".join(parts), len(header) + zeros, crc


def add_member(
    archive: zipfile.ZipFile, name: str, payload: bytes, size: int, crc: int, method: int, packed: int = -1
) -> None:
    """Append a member whose data is `payload` as is, declared as `size` bytes inflated and
    `packed` bytes stored (default: the truth) with `crc`. zipfile's writer would compute
    honest values; a hostile file need not."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = method
    info.file_size, info.compress_size, info.CRC = size, len(payload) if packed < 0 else packed, crc
    info.header_offset = archive.fp.tell()
    archive.fp.write(info.FileHeader(zip64=size >= zipfile.ZIP64_LIMIT))
    archive.fp.write(payload)
    archive.start_dir = archive.fp.tell()
    archive.filelist.append(info)
    archive.NameToInfo[name] = info


def bomb_checkpoint(path: Path, hidden: int, weights: Callable[[tuple[int, ...]], tuple]):
    """A checkpoint of a 1-layer, 2-character model of width `hidden`, honest but for its
    weights: `weights(shape)` gives add_member's (payload, size, crc, method[, packed])."""
    config = ModelConfig(vocab_size=2, layers=1, hidden=hidden, embed=0, dropout=0.0)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("format.npy", npy(np.array(FORMAT)))
        archive.writestr("config.npy", npy(np.array(json.dumps(config.to_dict()))))
        archive.writestr("vocab.npy", npy(np.array(["a", "b"])))
        for name, shape in config.param_shapes():
            add_member(archive, name + ".npy", *weights(shape))
    return path, config


def test_zip_bomb_of_zeros(tmp_path):
    # honest sizes and checksums: the members really inflate to a 1x2048 model's 64 MB
    def weights(shape):
        stream, size, crc = deflated(npy_header(shape), math.prod(shape) * 4)
        return stream, size, crc, zipfile.ZIP_DEFLATED

    path, config = bomb_checkpoint(tmp_path / "bomb.npz", 2048, weights)
    assert path.stat().st_size * 200 < config.n_params * 4  # it inflates 200-fold or more
    assert_refused(path)


@pytest.mark.parametrize("packed", ["honest", "lying"])
def test_declared_sizes_larger_than_the_file(tmp_path, packed):
    # stored members whose zip headers claim a 1x8192 model (1 GB) while holding 64 bytes each
    def weights(shape):
        header = npy_header(shape)
        stored = header + bytes(64)
        size = len(header) + math.prod(shape) * 4
        return stored, size, zlib.crc32(stored), zipfile.ZIP_STORED, size if packed == "lying" else -1

    path, _ = bomb_checkpoint(tmp_path / "liar.npz", 8192, weights)
    assert_refused(path)


def test_compressed_member_with_negative_shape(real, tmp_path):
    # a header of shape (-1, 4H) would have a naive reader call read(-1): all of a bomb
    members = read_members(real["best"])
    four_h = array_of(members, "lstm.0.Wh").shape[1]
    stream, size, crc = deflated(npy_header((-1, four_h)), 64 << 20)
    path = tmp_path / "negative.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, raw in members.items():
            if name != "lstm.0.Wh":
                archive.writestr(name + ".npy", raw)
        add_member(archive, "lstm.0.Wh.npy", stream, size, crc, zipfile.ZIP_DEFLATED)
    assert_refused(path)


def test_compressed_checkpoint_is_refused(real, tmp_path):
    # np.savez_compressed of a real checkpoint: charlstm writes members stored, and a
    # compressed member's size no longer bounds what reading it allocates
    members = read_members(real["best"])
    path = write_zip(tmp_path / "compressed.npz", dict(members), zipfile.ZIP_DEFLATED)
    assert_refused(path, "compressed")


@pytest.mark.parametrize("extra", [900, 3000])
def test_many_members(real, tmp_path, extra):
    # hundreds or thousands of tiny training-state members: each one costs a read
    members: dict[str, bytes | np.ndarray] = dict(read_members(real["last"]))
    for i in range(extra):
        members[f"{TRAIN_PREFIX}junk{i}"] = np.zeros(1, np.float32)
    path = write_zip(tmp_path / "many.npz", members)
    outcome = measured_load(path)
    check_bounds(path, outcome)
    if extra > 1000:
        assert "more than a checkpoint holds" in str(outcome.error)


# ------------------------------------------------------------------------ no unpickling


class Detonator:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def no_pickle(monkeypatch):
    """Every door to unpickling, armed to fail the test if opened."""

    def explode(*args, **kwargs):
        raise AssertionError("the loader unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, explode)
    real_load = np.load

    def guarded_np_load(*args, **kwargs):
        if kwargs.get("allow_pickle"):
            raise AssertionError("np.load with allow_pickle=True")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", guarded_np_load)
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name in ("pickle", "_pickle", "dill", "cloudpickle", "joblib"):
            raise AssertionError(f"the loader imported {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded_import)


@pytest.mark.parametrize("key", [*REQUIRED_KEYS, "train.m", "train.counters"])
def test_object_arrays_are_never_unpickled(real, tmp_path, key, no_pickle):
    marker = tmp_path / "unpickled"
    bomb = np.empty(3, dtype=object)
    bomb[:] = [Detonator(marker), Detonator(marker), Detonator(marker)]

    def change(members):
        members[key] = npy_raw_object(bomb)

    path = rewrite(real["last"], tmp_path / "objects.npz", change)
    assert_refused(path, "Python objects")
    assert not marker.exists()


def npy_raw_object(array: np.ndarray) -> bytes:
    # written with the real pickle, before the no_pickle fixture's patches matter
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_a_good_checkpoint_loads_without_any_pickle(real, no_pickle):
    assert load_checkpoint(real["last"], with_train_state=True).train_state


@pytest.mark.parametrize("field, value", [("flags", 0x1), ("method", 99), ("method", 12), ("method", 14)])
def test_zip_entry_oddities(real, tmp_path, field, value):
    # encrypted flag; an unknown method; bzip2 and lzma (bombs of their own) on a stored member
    raw = bytearray(real["best"].read_bytes())
    central = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"head.b.npy"))  # head.b's directory entry
    local = raw.rfind(b"PK\x03\x04", 0, raw.find(b"head.b.npy"))  # and its local header
    for start, offset in ((central, 8), (local, 6)):
        at = start + offset + (0 if field == "flags" else 2)
        (old,) = struct.unpack_from("<H", raw, at)
        struct.pack_into("<H", raw, at, old | value if field == "flags" else value)
    path = tmp_path / "odd.npz"
    path.write_bytes(bytes(raw))
    assert_refused(path)
