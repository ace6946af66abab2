"""Checkpoint round trip and the refusal of broken, tampered or hostile files."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from charlstm.checkpoint import FORMAT, default_model_path, load_checkpoint, save_checkpoint
from charlstm.data import Vocab
from charlstm.errors import CheckpointError
from charlstm.model import ModelConfig, init_params

VOCAB = Vocab(sorted("\nabcé漢😀"))


def make_checkpoint(folder: Path, embed: int = 3, name: str = "model.npz", **train_state) -> Path:
    config = ModelConfig(vocab_size=VOCAB.size, layers=2, hidden=4, embed=embed, dropout=0.1)
    params = init_params(config, np.random.default_rng(0))
    return save_checkpoint(folder / name, params, VOCAB, {"lr": 0.002}, train_state or None)


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the .npz archive member by member, letting `change(arrays)` edit the dict."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    change(arrays)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("embed", [0, 3])
def test_round_trip_is_bitwise(tmp_path, embed):
    moments = np.arange(10, dtype=np.float32)
    path = make_checkpoint(tmp_path, embed=embed, m=moments, step=np.array(7))
    config = ModelConfig(vocab_size=VOCAB.size, layers=2, hidden=4, embed=embed, dropout=0.1)
    original = init_params(config, np.random.default_rng(0))

    loaded = load_checkpoint(path, with_train_state=True)

    assert loaded.model_config == config
    assert loaded.params.flat.tobytes() == original.flat.tobytes()
    assert loaded.vocab == VOCAB
    assert loaded.config["lr"] == 0.002
    assert np.array_equal(loaded.train_state["m"], moments)
    assert int(loaded.train_state["step"]) == 7
    assert load_checkpoint(path).train_state == {}  # not read unless asked for


def test_layout_matches_documented_keys(tmp_path):
    path = make_checkpoint(tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["format"]) == FORMAT
        config = json.loads(str(npz["config"]))
        assert {"layers", "hidden", "embed", "vocab_size", "dropout"} <= set(config)
        assert npz["vocab"].dtype == np.dtype("<U1") and npz["vocab"].shape == (VOCAB.size,)
        assert npz["embed"].shape == (VOCAB.size, 3)
        assert npz["lstm.0.Wx"].shape == (3, 16)
        assert npz["lstm.1.Wx"].shape == (4, 16)
        assert npz["lstm.1.Wh"].shape == (4, 16)
        assert npz["lstm.0.b"].shape == (16,)
        assert np.all(npz["lstm.0.b"][4:8] == 1.0)  # forget-gate bias starts at 1
        assert npz["head.W"].shape == (4, VOCAB.size)
        assert npz["head.b"].shape == (VOCAB.size,)
        assert all(npz[k].dtype == np.float32 for k in npz.files if k.startswith(("lstm", "head", "embed")))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    good = make_checkpoint(tmp_path)
    before = good.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        make_checkpoint(tmp_path)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_save_removes_temp_files_of_writes_killed_midway(tmp_path):
    """A SIGKILL mid-write leaves `.NAME.PID.XXXX.tmp`; the next save of NAME deletes those
    whose writer is gone, and nothing else."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(done.stdout)  # that process has exited
    live_pid = os.getppid()  # a process that is still running: a write may be under way there
    leftovers = {
        f".model.npz.{dead_pid}.k2j_x9.tmp": False,  # stale: removed
        f".model.npz.{live_pid}.a8b7c6.tmp": True,  # someone else's write: kept
        f".other.npz.{dead_pid}.k2j_x9.tmp": True,  # another checkpoint's: kept
        "notes.tmp": True,
    }
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    make_checkpoint(tmp_path)
    expected = {name for name, kept in leftovers.items() if kept} | {"model.npz"}
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_unwritable_folder_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        make_checkpoint(blocker)  # its "folder" is a file


def expect_refusal(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match or None) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_and_not_a_zip(tmp_path):
    expect_refusal(tmp_path / "absent.npz", "no such checkpoint")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"hello, not a zip")
    expect_refusal(junk, "not a readable")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated(tmp_path, fraction):
    data = make_checkpoint(tmp_path).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    expect_refusal(cut, "")


def test_tampered_bytes_fail_the_zip_checksum(tmp_path):
    path = make_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("lstm.0.Wh.npy")
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # inside that array's data
    bad = tmp_path / "tampered.npz"
    bad.write_bytes(bytes(data))
    expect_refusal(bad, "")


def test_wrong_format_version(tmp_path):
    bad = rewrite(
        make_checkpoint(tmp_path), tmp_path / "v2.npz", lambda a: a.update(format=np.array("charlstm/2"))
    )
    expect_refusal(bad, "unsupported format")


def test_object_array_is_refused_without_unpickling(tmp_path):
    src = make_checkpoint(tmp_path)
    bad = tmp_path / "object.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if item.filename == "head.b.npy":
                buffer = io.BytesIO()
                np.save(buffer, np.array([object()] * VOCAB.size, dtype=object), allow_pickle=True)
                zout.writestr(item.filename, buffer.getvalue())
            else:
                zout.writestr(item.filename, zin.read(item.filename))
    expect_refusal(bad, "Python objects")


def test_nan_weights(tmp_path):
    def poison(arrays):
        arrays["lstm.1.Wh"] = arrays["lstm.1.Wh"].copy()
        arrays["lstm.1.Wh"][0, 0] = np.nan

    expect_refusal(rewrite(make_checkpoint(tmp_path), tmp_path / "nan.npz", poison), "NaN")


def test_shape_dtype_and_key_faults(tmp_path):
    src = make_checkpoint(tmp_path)
    cases = {
        "shape": (lambda a: a.update({"head.b": np.zeros(3, np.float32)}), "shape"),
        "dtype": (lambda a: a.update({"head.b": a["head.b"].astype(np.float64)}), "float32"),
        "missing": (lambda a: a.pop("lstm.1.b"), "missing"),
        "extra": (lambda a: a.update({"surprise": np.zeros(1)}), "unexpected"),
        "vocab": (lambda a: a.update(vocab=np.array(list("aabcde\n"))), "distinct"),
    }
    for name, (change, match) in cases.items():
        expect_refusal(rewrite(src, tmp_path / f"{name}.npz", change), match)


def test_hostile_config_is_refused_before_allocating(tmp_path):
    def huge(arrays):
        config = json.loads(str(arrays["config"]))
        config["hidden"] = 10**9
        arrays["config"] = np.array(json.dumps(config))

    def lying(arrays):
        config = json.loads(str(arrays["config"]))
        config["hidden"] = 4096  # valid range, but the file holds nothing that large
        arrays["config"] = np.array(json.dumps(config))

    src = make_checkpoint(tmp_path)
    expect_refusal(rewrite(src, tmp_path / "huge.npz", huge), "hidden")
    expect_refusal(rewrite(src, tmp_path / "lying.npz", lying), "too small")


def test_default_model_is_the_newest_best_checkpoint(tmp_path):
    older = make_checkpoint(tmp_path, name="old.npz")
    newer = make_checkpoint(tmp_path, name="new.npz")
    make_checkpoint(tmp_path, name="new.last.npz")  # training state, never chosen
    import os

    os.utime(older, ns=(1, 1_000_000_000))
    os.utime(newer, ns=(1, 2_000_000_000))
    assert default_model_path(tmp_path) == newer
    os.utime(older, ns=(1, 3_000_000_000))
    assert default_model_path(tmp_path) == older
