"""charlstm.kernels.fresh_cache: numba's cached kernels are dropped when any source of the
kernels package changes (numba itself checks only each kernel's own file)."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import charlstm.kernels
from charlstm.kernels import fresh_cache

PACKAGE = Path(charlstm.kernels.__file__).parent


def test_a_new_digest_drops_the_cached_kernels_and_keeps_everything_else(tmp_path):
    for name in ("lstm.f-10.py311.nbi", "lstm.f-10.py311.1.nbc", "lstm.cpython-311.pyc"):
        (tmp_path / name).write_bytes(b"x")
    assert fresh_cache.drop_if_sources_changed(tmp_path, "one")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh_cache.STAMP, "lstm.cpython-311.pyc"]

    (tmp_path / "lstm.f-10.py311.nbi").write_bytes(b"x")  # cached again under the same sources
    assert not fresh_cache.drop_if_sources_changed(tmp_path, "one")
    assert (tmp_path / "lstm.f-10.py311.nbi").exists()

    assert fresh_cache.drop_if_sources_changed(tmp_path, "two")  # the sources changed
    assert not (tmp_path / "lstm.f-10.py311.nbi").exists()
    assert (tmp_path / fresh_cache.STAMP).read_text().strip() == "two"
    assert not list(tmp_path.glob("*.tmp"))


def test_the_digest_follows_any_source_of_the_package(tmp_path):
    copy = tmp_path / "kernels"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = fresh_cache.sources_digest(copy)
    assert before == fresh_cache.sources_digest(PACKAGE)
    lstm = copy / "lstm.py"
    lstm.write_text(lstm.read_text() + "\n# an edit\n")
    assert fresh_cache.sources_digest(copy) != before


def test_the_stamp_lies_where_numba_caches_the_kernels(tmp_path):
    """In a process of its own with its own NUMBA_CACHE_DIR: importing the kernels stamps the
    directory, and a kernel called afterwards caches itself in that same directory."""
    script = textwrap.dedent(
        """
        import numpy as np
        from charlstm import kernels
        from charlstm.kernels import fresh_cache
        directory = fresh_cache.cache_directory(kernels.lstm_train_forward)
        print(directory)
        assert (directory / fresh_cache.STAMP).exists()
        assert not list(directory.glob("*.nbi"))
        kernels.global_norm(np.ones(8, np.float32))
        print(len(list(directory.glob("*.nbi"))))
        """
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    directory, cached = result.stdout.split()
    assert Path(directory).is_relative_to(tmp_path)
    assert int(cached) >= 1
