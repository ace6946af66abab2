"""The training buffers start on a cache line (charlstm.buffers)."""

import numpy as np
import pytest

from charlstm import model
from charlstm.buffers import CACHE_LINE, aligned_empty


@pytest.mark.parametrize("shape", [(3, 5), (1000, 33), (2, 7, 11), (0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_aligned_empty_is_a_contiguous_writable_array_on_a_cache_line(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % CACHE_LINE == 0
    a[...] = 7
    assert np.all(a == 7)


def test_every_training_buffer_starts_on_a_cache_line():
    config = model.ModelConfig(vocab_size=11, layers=2, hidden=64, embed=8)
    buffers = model._TrainBuffers(config, T=5, B=32, U=1, dtype=np.dtype(np.float32))
    arrays = {name: a for name, a in vars(buffers).items() if isinstance(a, np.ndarray) and a.size > 0}
    assert len(arrays) > 15
    misaligned = [name for name, a in arrays.items() if a.ctypes.data % CACHE_LINE]
    assert misaligned == []
