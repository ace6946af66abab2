"""Checkpoints: a documented `.npz` of plain arrays (see the README's table), written
atomically and read back without unpickling, validating every header before any data is
allocated, so a corrupt, tampered or hostile file fails fast with `CheckpointError`.

Which checkpoint a command uses when none is named also lives here (`default_model_path`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import tokenize
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .data import Vocab
from .errors import CheckpointError
from .model import CELLS, ModelConfig, Params

FORMAT = "charlstm/1"
SHIPPED = "shipped"  # the name that stands for the model installed with charlstm
TRAIN_PREFIX = "train."  # optimizer moments, step, RNG and data position of a resumable run

# Bounds on what a config may claim, so a hostile file cannot make us allocate terabytes.
MAX_LAYERS = 64
MAX_WIDTH = 16384  # hidden and embedding sizes
MAX_VOCAB = 0x110000  # every Unicode code point
MAX_PARAMS = 2_000_000_000
MAX_HEADER_BYTES = 1 << 16
MAX_TEXT_BYTES = 1 << 20  # format and config strings
MAX_MEMBERS = 1024  # a 64-layer model with its training state has ~210 arrays


@dataclass
class Checkpoint:
    path: Path
    config: dict  # the JSON config: model shape plus the training settings that made it
    params: Params  # float32 weights
    vocab: Vocab
    train_state: dict[str, np.ndarray] = field(default_factory=dict)  # keys without "train."

    @property
    def model_config(self) -> ModelConfig:
        return self.params.config


def save_checkpoint(
    path: Path | str,
    params: Params,
    vocab: Vocab,
    config: Mapping,
    train_state: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint to `path` atomically: a temporary file in the same folder, flushed
    to disk, then renamed over the target, so a crash never leaves a half-written file where
    a good one stood. `config` is stored as JSON after the model's own fields."""
    path = Path(path)
    full_config = {**dict(config), **params.config.to_dict()}
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "config": np.array(json.dumps(full_config, sort_keys=True)),
        "vocab": vocab.to_array(),
    }
    for name, view in params.views.items():
        arrays[name] = np.ascontiguousarray(view, dtype=np.float32)
    for key, value in (train_state or {}).items():
        arrays[TRAIN_PREFIX + key] = np.asarray(value)

    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The writer's PID in the name tells a later save which leftovers are stale.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
            out.flush()
            os.fchmod(out.fileno(), _new_file_mode())  # mkstemp's 0600 -> what open() would give
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:  # includes KeyboardInterrupt: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from None
        raise
    _fsync_folder(folder)
    _remove_stale_temp_files(path)
    return path


def _remove_stale_temp_files(path: Path) -> None:
    """Delete the temporary files of earlier writes of `path` that were killed midway (their
    writer's process is gone); a write still under way elsewhere is left alone."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^.]+\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent if str(path.parent) else "."):
            match = pattern.fullmatch(entry.name)
            if match and not _process_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True  # someone else's process, or a PID we cannot ask about: keep its file
    return True


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path | str, *, with_train_state: bool = False) -> Checkpoint:
    """Read and validate a checkpoint. Raises CheckpointError naming the file and the fault."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_archive(path, archive, with_train_state)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable charlstm checkpoint ({_describe(exc)})") from None
    except (SyntaxError, tokenize.TokenError) as exc:  # numpy parses a .npy header as a literal
        raise CheckpointError(f"{path}: an array's header is corrupt ({_describe(exc)})") from None
    except (MemoryError, OverflowError, RuntimeError, NotImplementedError) as exc:
        # zlib and zipfile raise these on some corruptions (e.g. unsupported compression).
        raise CheckpointError(f"{path}: corrupt checkpoint ({_describe(exc)})") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Members:
    """The .npy members of the archive, headers checked before any data is read."""

    def __init__(self, path: Path, archive: zipfile.ZipFile):
        self.path, self.archive = path, archive
        self.infos: dict[str, zipfile.ZipInfo] = {}
        # A damaged length in one directory entry (its comment's, say) makes zipfile read the
        # entries after it as part of that one, and they vanish without an error: the count
        # in the directory's end record says how many there are.
        end = zipfile._EndRecData(archive.fp)  # zipfile's own reader of that record
        listed = end[zipfile._ECD_ENTRIES_TOTAL] if end else -1
        if listed != len(archive.infolist()):
            held = len(archive.infolist())
            raise CheckpointError(f"{path}: the zip directory holds {held} arrays; its end record: {listed}")
        if len(archive.infolist()) > MAX_MEMBERS:
            raise CheckpointError(
                f"{path}: {len(archive.infolist()):,} arrays is more than a checkpoint holds"
            )
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"{path}: unexpected member {info.filename!r}")
            # Sizes in the zip directory are claims; only stored (uncompressed) members make them
            # checkable against the file's real size. A deflated member can inflate a few KB into
            # gigabytes (a zip bomb), so compressed archives are refused (np.savez never compresses).
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    f"{path}: array {info.filename!r} is compressed "
                    "(charlstm checkpoints are stored uncompressed)"
                )
            if info.compress_size != info.file_size:
                raise CheckpointError(f"{path}: array {info.filename!r} has inconsistent sizes")
            self.infos[info.filename[: -len(".npy")]] = info
        if sum(info.file_size for info in self.infos.values()) > path.stat().st_size:
            raise CheckpointError(f"{path}: the archive claims more data than the file holds")

    def names(self) -> list[str]:
        return list(self.infos)

    def read(self, key: str, max_bytes: int, expected_dtype: np.dtype | None = None) -> np.ndarray:
        info = self.infos.get(key)
        if info is None:
            raise CheckpointError(f"{self.path}: missing array {key!r}")
        with self.archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                    stream, max_header_size=MAX_HEADER_BYTES
                )
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                    stream, max_header_size=MAX_HEADER_BYTES
                )
            else:
                raise CheckpointError(f"{self.path}: array {key!r} has an unknown .npy version {version}")
            if any(n < 0 for n in shape):  # numpy's header reader lets them through; read(-1) reads all
                raise CheckpointError(f"{self.path}: array {key!r} has a negative size {shape}")
            if dtype.hasobject:
                raise CheckpointError(
                    f"{self.path}: array {key!r} holds Python objects (refused: no unpickling)"
                )
            if expected_dtype is not None and dtype != expected_dtype:
                raise CheckpointError(f"{self.path}: array {key!r} is {dtype}, expected {expected_dtype}")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > max_bytes:
                raise CheckpointError(
                    f"{self.path}: array {key!r} claims {nbytes:,} bytes, more than it may hold"
                )
            if nbytes > info.file_size:
                raise CheckpointError(f"{self.path}: array {key!r} is truncated")
            data = stream.read(nbytes)
            if len(data) != nbytes:
                raise CheckpointError(f"{self.path}: array {key!r} is truncated")
        array = np.frombuffer(data, dtype=dtype)
        order = "F" if fortran else "C"
        return array.reshape(shape, order=order).copy(order="C")


def _read_archive(path: Path, archive: zipfile.ZipFile, with_train_state: bool) -> Checkpoint:
    members = _Members(path, archive)
    fmt = _read_text(members, "format")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: unsupported format {fmt[:40]!r} (this charlstm reads {FORMAT!r})")
    config = _parse_config(path, _read_text(members, "config"))
    model_config = ModelConfig(
        vocab_size=config["vocab_size"],
        layers=config["layers"],
        hidden=config["hidden"],
        embed=config["embed"],
        dropout=config["dropout"],
        cell=config["cell"],
    )
    expected = dict(model_config.param_shapes())
    unexpected = [
        k
        for k in members.names()
        if k not in expected and k not in ("format", "config", "vocab") and not k.startswith(TRAIN_PREFIX)
    ]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected array {sorted(unexpected)[0]!r}")

    # A config claiming a huge model in a small file is lying: refuse before allocating.
    stored = sum(info.file_size for info in members.infos.values())
    if model_config.n_params * 4 > stored:
        raise CheckpointError(
            f"{path}: config claims {model_config.n_params:,} parameters but the file is too small"
        )

    vocab_array = members.read("vocab", max_bytes=4 * model_config.vocab_size)
    if (
        vocab_array.dtype.kind != "U"
        or vocab_array.dtype.itemsize != 4
        or vocab_array.shape != (model_config.vocab_size,)
    ):
        raise CheckpointError(f"{path}: vocab must be {model_config.vocab_size} single characters")
    try:
        vocab = Vocab.from_array(vocab_array)
    except Exception:
        raise CheckpointError(f"{path}: vocab is not a list of distinct characters") from None
    if vocab.size != model_config.vocab_size:
        raise CheckpointError(
            f"{path}: vocab has {vocab.size} distinct characters, config says {model_config.vocab_size}"
        )

    params = Params.zeros(model_config, np.float32)
    for name, shape in expected.items():
        array = members.read(name, max_bytes=4 * math.prod(shape), expected_dtype=np.dtype(np.float32))
        if array.shape != shape:
            raise CheckpointError(f"{path}: array {name!r} has shape {array.shape}, expected {shape}")
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: array {name!r} holds NaN or infinite values")
        params[name][...] = array

    train_state: dict[str, np.ndarray] = {}
    if with_train_state:
        limit = 8 * model_config.n_params + (1 << 20)  # moments are parameter-sized
        for key in members.names():
            if key.startswith(TRAIN_PREFIX):
                train_state[key[len(TRAIN_PREFIX) :]] = members.read(key, max_bytes=limit)
    return Checkpoint(path=path, config=config, params=params, vocab=vocab, train_state=train_state)


def _read_text(members: _Members, key: str) -> str:
    array = members.read(key, max_bytes=MAX_TEXT_BYTES)
    if array.shape != () or array.dtype.kind != "U":
        raise CheckpointError(f"{members.path}: {key!r} must be a scalar string")
    return str(array[()])


def _parse_config(path: Path, text: str) -> dict:
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: config is not valid JSON") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    limits = {
        "layers": (1, MAX_LAYERS),
        "hidden": (1, MAX_WIDTH),
        "embed": (0, MAX_WIDTH),
        "vocab_size": (1, MAX_VOCAB),
    }
    for key, (low, high) in limits.items():
        value = config.get(key)
        if type(value) is not int or not low <= value <= high:
            raise CheckpointError(
                f"{path}: config {key!r} must be an integer in [{low}, {high}], got {value!r}"
            )
    dropout = config.get("dropout", 0.0)
    if type(dropout) not in (int, float) or not 0.0 <= dropout < 1.0:
        raise CheckpointError(f"{path}: config 'dropout' must be a number in [0, 1), got {dropout!r}")
    config["dropout"] = float(dropout)
    cell = config.setdefault("cell", "lstm")  # written before the GRU and RNN: an LSTM
    if cell not in CELLS:
        raise CheckpointError(f"{path}: config 'cell' must be one of {', '.join(CELLS)}, got {cell!r}"[:200])
    shape = ModelConfig(config["vocab_size"], config["layers"], config["hidden"], config["embed"], cell=cell)
    n_params = shape.n_params
    if n_params > MAX_PARAMS:
        raise CheckpointError(f"{path}: config claims {n_params:,} parameters")
    return config


# --------------------------------------------------------------------------------------------
# Which model a command uses when none is named


def named_model_path(spec: Path | str) -> Path:
    """The checkpoint a MODEL argument names: a path, or `shipped` for the installed model."""
    if str(spec) == SHIPPED:
        shipped = shipped_model_path()
        if shipped is None:
            raise CheckpointError("shipped: this installation has no shipped model")
        return shipped
    return Path(spec)


def shipped_model_path() -> Path | None:
    """The Shakespeare model installed with charlstm (package data), if present."""
    try:
        folder = resources.files("charlstm.shipped")
    except (ModuleNotFoundError, TypeError):
        return None
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".npz") and not entry.name.endswith(".last.npz"):
            return Path(str(entry))
    return None


def default_model_path(models_dir: Path | str = "models") -> Path:
    """The best checkpoint most recently written in `models_dir` (not a `.last.npz` training
    state), else the shipped model. Raises CheckpointError when there is neither."""
    folder = Path(models_dir)
    candidates = []
    if folder.is_dir():
        candidates = [p for p in folder.glob("*.npz") if not p.name.endswith(".last.npz") and p.is_file()]
    if candidates:
        return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))
    shipped = shipped_model_path()
    if shipped is not None:
        return shipped
    raise CheckpointError(
        f"no model given, none in {folder}/ and no shipped model; train one or pass --model"
    )
