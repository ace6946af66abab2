"""Tests for the register tiles (charlstm.kernels.tiles) on every geometry, whatever the host.

Each ISA's geometry is built here as numba code for this machine (tiles.build): the AVX2 and
NEON shapes run as 8- and 4-wide vectors on an AVX-512 host, the same IR an AVX2 or ARM build
would be given. Their products are checked against float64 products of a packing written out
here from the layout's definition, with tails of rows, narrower tiles of columns, strided
weights and column slices. The compile target's own build is checked through the kernels that
pack for it (kernels.pack_*, tiled_matmul). Then the training tests run once more in a
subprocess compiled for an AVX2 CPU (NUMBA_CPU_NAME=haswell), and the band kernels with the
NEON and AVX2 geometries forced.
"""

import functools
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from test_engine import numba_threads

from charlstm import kernels
from charlstm.kernels import tiles

ISAS = sorted(tiles.GEOMETRIES)


def test_each_tile_fits_its_register_file():
    """Accumulators, the row of x and the broadcast weight in registers: no spills by design."""
    for g in tiles.GEOMETRIES.values():
        assert g.registers_used <= g.registers, g.isa
        assert g.tail_rows <= g.rows, g.isa


def test_the_compile_target_is_read_as_numba_compiles():
    """The host's ISA from its features; a CPU named with no features (numba's "CPU defaults")
    from what LLVM makes of the name; a generic x86 target has no FMA, so no tiles."""
    import llvmlite.binding as ll

    if "x86" not in ll.get_process_triple():
        pytest.skip("x86 CPU names")
    assert tiles.isa_of("haswell", "") == "avx2"
    assert tiles.isa_of("znver3", "") == "avx2"
    assert tiles.isa_of("skylake-avx512", "") == "avx512"
    assert tiles.isa_of("sandybridge", "") == "none"  # AVX without FMA
    assert tiles.isa_of("generic", "") == "none"
    assert tiles.isa_of("znver4", "-avx512f") == "avx2"  # features win over the name
    if not {"NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "CHARLSTM_TILES"} & set(os.environ):
        host = tiles.isa_of(ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten())
        assert tiles.GEOMETRY.isa == host


def test_the_plan_covers_every_row_once():
    for g in tiles.GEOMETRIES.values():
        for M in range(g.tail_rows, 200, g.tail_rows):
            full, tails = tiles.tile_count(g, M)
            assert full * g.rows + tails * g.tail_rows == M
            assert tails < g.rows, (g.isa, M)  # the fewest: rows tails of T would be T full tiles
            assert tiles.fits(g, M, g.lanes)
        assert not tiles.fits(g, g.tail_rows + 1, g.lanes) or g.tail_rows == 1
        assert not tiles.fits(g, g.tail_rows, g.lanes + 1) or g.lanes == 1


def packed_reference(W, g):
    """W (M, K) packed as the layout says: tile p holds rows first(p) .. first(p) + height - 1,
    W_packed[p, k, i] = W[first(p) + i, k]; the tails' unused slots are zero."""
    M, K = W.shape
    full, tails = tiles.tile_count(g, M)
    out = np.zeros((full + tails, K, g.rows), dtype=W.dtype)
    for p in range(full + tails):
        first = p * g.rows if p < full else full * g.rows + (p - full) * g.tail_rows
        height = g.rows if p < full else g.tail_rows
        out[p, :, :height] = W[first : first + height].T
    return out


@functools.cache
def products_of(isa):
    """njit callers of geometry isa's product, add_product and product_of_panels."""
    built = tiles.build(tiles.GEOMETRIES[isa])
    product, add_product, product_of_panels = built.product, built.add_product, built.product_of_panels

    @numba.njit
    def run_product(out, W_packed, x):
        product(out, W_packed, x)

    @numba.njit
    def run_add_product(out, W, x):
        add_product(out, W, x)

    @numba.njit
    def run_product_of_panels(out, W_steps, x_panels, first, last):
        product_of_panels(out, W_steps, x_panels, first, last)

    return run_product, run_add_product, run_product_of_panels


def within(out, expected, scale, rtol):
    """|out - expected| <= rtol * scale elementwise (scale: the product of the magnitudes)."""
    return bool(np.all(np.abs(out - expected) <= rtol * scale))


def shapes(g):
    """(M, N): rows with and without tails; columns of whole tiles, with narrower tiles after."""
    rows = sorted({g.rows, 2 * g.rows + g.tail_rows, 5 * g.tail_rows, 8 * g.tail_rows})
    columns = sorted({g.lanes, g.vectors * g.lanes, 16, 32, 48})
    return [(M, N) for M in rows for N in columns if N % g.lanes == 0]


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-13)], ids=["tiles", "loop"])
@pytest.mark.parametrize("isa", ISAS)
def test_every_geometry_multiplies_like_the_formula(isa, dtype, rtol):
    """tiles.product from the documented packing: float32 on the register tiles, float64 on the
    plain loop of the same meaning; out and x column slices of wider arrays."""
    g = tiles.GEOMETRIES[isa]
    run_product, _, _ = products_of(isa)
    rng = np.random.default_rng(len(isa))
    for M, N in shapes(g):
        K = 37
        W = rng.normal(size=(M, K)).astype(dtype)
        x_wide = rng.normal(size=(K, N + 8)).astype(dtype)
        out_wide = np.full((M, N + 8), np.nan, dtype=dtype)
        run_product(out_wide[:, 4 : 4 + N], packed_reference(W, g), x_wide[:, 4 : 4 + N])
        W64, x64 = W.astype(np.float64), x_wide[:, 4 : 4 + N].astype(np.float64)
        assert within(out_wide[:, 4 : 4 + N], W64 @ x64, np.abs(W64) @ np.abs(x64), rtol), (M, N)
        assert np.all(np.isnan(out_wide[:, :4])) and np.all(np.isnan(out_wide[:, 4 + N :])), (M, N)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-13)], ids=["tiles", "loop"])
@pytest.mark.parametrize("isa", ISAS)
def test_every_geometry_adds_a_product_of_weights_read_in_place(isa, dtype, rtol):
    """tiles.add_product: out += W · x with W every other row of a bigger array (as the
    backward reads a band's gate rows of a step's dz) and out, x column slices."""
    g = tiles.GEOMETRIES[isa]
    _, run_add_product, _ = products_of(isa)
    rng = np.random.default_rng(3)
    for M, N in shapes(g):
        K = 24
        W = rng.normal(size=(2 * M, K)).astype(dtype)[::2]
        x = rng.normal(size=(K, N + g.lanes)).astype(dtype)[:, g.lanes :]
        start = rng.normal(size=(M, N + g.lanes)).astype(dtype)
        out = start.copy()
        run_add_product(out[:, :N], W, x)
        W64, x64 = W.astype(np.float64), x.astype(np.float64)
        scale = np.abs(start[:, :N]) + np.abs(W64) @ np.abs(x64)
        assert within(out[:, :N], start[:, :N] + W64 @ x64, scale, rtol), (M, N)
        assert np.array_equal(out[:, N:], start[:, N:]), (M, N)  # nothing written past the slice


def panels_reference(x, width):
    """x (K, N) in panels (J, K, width) as pack_panels lays out x.T: panel j holds columns
    j*width .. of x, the last one those left (its other columns NaN, never read)."""
    K, N = x.shape
    J = -(-N // width)
    out = np.full((J, K, width), np.nan, dtype=x.dtype)
    for j in range(J):
        n = min(width, N - j * width)
        out[j, :, :n] = x[:, j * width : j * width + n]
    return out


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-13)], ids=["tiles", "loop"])
@pytest.mark.parametrize("isa", ISAS)
def test_every_geometry_multiplies_x_in_panels_over_a_long_k(isa, dtype, rtol):
    """tiles.product_of_panels: tiles first .. last-1 of out = W · x from W step-major, read in
    place (K = T*B, W[m, t*B + b] = W_steps[t, m, b], as the backward's dz_steps) and x in
    panels of the tile's width (the last one narrower where the width does not divide N),
    over a K longer than one block of tiles reads at a time; the other rows untouched. More
    tiles than PANEL_BLOCK, so that the blocks and the tails meet; steps of 32 columns (two
    cache lines a row, as training's) and of 15 (less than one); W_steps contiguous and with
    room between its steps (the first M rows of a taller array: the step stride is read)."""
    g = tiles.GEOMETRIES[isa]
    _, _, run_product_of_panels = products_of(isa)
    rng = np.random.default_rng(4)
    width = g.vectors * g.lanes
    M = (tiles.PANEL_BLOCK + 3) * g.rows + 2 * g.tail_rows  # tails where rows != tail_rows
    full, tails = tiles.tile_count(g, M)
    P, last_height = full + tails, g.tail_rows if tails else g.rows
    for N in sorted({g.lanes, width, 2 * width + g.lanes, 3 * width}):
        for T, B in ((5, 15), (3, 32)):
            K = T * B
            W = rng.normal(size=(M, K)).astype(dtype)
            taller = np.full((T, M + 3, B), np.nan, dtype=dtype)
            taller[:, :M] = W.reshape(M, T, B).transpose(1, 0, 2)
            x = rng.normal(size=(K, N)).astype(dtype)
            W64, x64 = W.astype(np.float64), x.astype(np.float64)
            for (first, last), W_steps in zip(
                ((0, P), (1, P - 1)), (np.ascontiguousarray(taller[:, :M]), taller[:, :M]), strict=True
            ):
                out = np.full((M, N), np.nan, dtype=dtype)
                run_product_of_panels(out, W_steps, panels_reference(x, width), first, last)
                lo, hi = first * g.rows, M if last == P else M - last_height
                assert within(out[lo:hi], W64[lo:hi] @ x64, np.abs(W64[lo:hi]) @ np.abs(x64), rtol), (
                    N,
                    B,
                    first,
                )
                assert np.all(np.isnan(out[:lo])) and np.all(np.isnan(out[hi:])), (N, B, first)


def test_the_targets_packing_is_the_documented_layout():
    """kernels.pack_rows, pack_bands and pack_into_bands give packed_reference's layout for the
    compile target's geometry, of W's rows (and of a transposed view's), of each band's rows, of
    each band's gate rows: whole tiles of consecutive rows and tiles that gather across gates."""
    g = tiles.GEOMETRY
    rng = np.random.default_rng(5)
    H, U = 8 * g.tail_rows, 2
    Hu = H // U
    W = rng.normal(size=(H, 4 * H)).astype(np.float32)  # an Wh (H, 4H)
    P = sum(tiles.tile_count(g, H))
    out = np.full((P, 4 * H, g.rows), np.nan, np.float32)
    kernels.pack_rows(out, W, H, 2)
    assert np.array_equal(out, packed_reference(W, g))
    columns = np.full((sum(tiles.tile_count(g, 4 * H)), H, g.rows), np.nan, np.float32)
    kernels.pack_rows(columns, W.T, 4 * H, 2)  # a transposed view, as the model packs Wx.T
    assert np.array_equal(columns, packed_reference(W.T, g))
    bands = np.full((U, sum(tiles.tile_count(g, Hu)), 4 * H, g.rows), np.nan, np.float32)
    kernels.pack_bands(bands, W)
    for u in range(U):
        assert np.array_equal(bands[u], packed_reference(W[u * Hu : (u + 1) * Hu], g)), u
    gates = np.full((U, sum(tiles.tile_count(g, 4 * Hu)), H, g.rows), np.nan, np.float32)
    kernels.pack_into_bands(gates, W)
    for u in range(U):
        stacked = np.concatenate([W[:, q * H + u * Hu : q * H + (u + 1) * Hu].T for q in range(4)])
        assert np.array_equal(gates[u], packed_reference(stacked, g)), u


@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_matmul_pads_the_rows_and_cuts_the_columns_into_bands(threads):
    """kernels.tiled_matmul on the target's tiles: W's 13 rows padded with zeros to whole tiles
    (pack_rows), 48 columns cut into bands of whole vectors (tiles on column slices)."""
    rng = np.random.default_rng(threads)
    R = tiles.ROWS
    M, K, N = 13, 40, 48
    W = rng.normal(size=(K, M)).astype(np.float32).T  # a transposed view, as head.W.T
    x = rng.normal(size=(K, N)).astype(np.float32)
    P = -(-M // R)
    W_packed = np.full((P, K, R), np.nan, dtype=np.float32)
    kernels.pack_rows(W_packed, W, P * R, threads)
    assert np.all(W_packed[-1, :, M - (P - 1) * R :] == 0.0)  # the padding rows
    out = np.full((P * R, N), np.nan, dtype=np.float32)
    with numba_threads(threads):
        kernels.tiled_matmul(out, W_packed, x, threads)
    W64, x64 = W.astype(np.float64), x.astype(np.float64)
    assert within(out[:M], W64 @ x64, np.abs(W64) @ np.abs(x64), 1e-5)
    assert np.all(out[M:] == 0.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_window_products_on_tiles_in_bands_of_whole_tiles(threads):
    """kernels.tiled_steps_product (x·Wx and Wx·dz over a window, step-major) and
    add_tiled_weight_gradient (dW from dz step-major, read in place, and x packed in panels by
    pack_panels) on the target's tiles: rows in `threads` bands of whole tiles, the tails (AVX2)
    in the last; the packers give the documented layouts."""
    g = tiles.GEOMETRY
    rng = np.random.default_rng(20 + threads)
    T, B, K = 5, 2 * g.lanes, 24
    M = 6 * g.rows + 2 * g.tail_rows  # tails on AVX2
    W = rng.normal(size=(K, M)).astype(np.float32).T  # a transposed view, as Wx.T
    x = rng.normal(size=(T, K, B)).astype(np.float32)
    W_packed = np.full((sum(tiles.tile_count(g, M)), K, g.rows), np.nan, np.float32)
    kernels.pack_rows(W_packed, W, M, threads)
    out = np.full((T, M, B), np.nan, np.float32)
    with numba_threads(threads):
        kernels.tiled_steps_product(out, W_packed, x, threads)
    W64, x64 = W.astype(np.float64), x.astype(np.float64)
    assert within(out, W64 @ x64, np.abs(W64) @ np.abs(x64), 1e-5)

    inputs = tiles.COLUMNS + g.lanes  # the gradient's columns: a narrower last panel
    dz = rng.normal(size=(T, M, B)).astype(np.float32)  # dz_steps (T, G, B), G = M
    dz64 = dz.astype(np.float64).transpose(1, 0, 2).reshape(M, T * B)  # feature-major
    x = rng.normal(size=(inputs, T * B)).astype(np.float32)  # feature-major, as h_prev and x_drop
    panels = np.full((2, T * B, tiles.COLUMNS), np.nan, np.float32)
    with numba_threads(threads):
        kernels.pack_panels(panels, x, threads)
    assert np.array_equal(panels, panels_reference(x.T, tiles.COLUMNS), equal_nan=True)
    start = rng.normal(size=(inputs, M)).astype(np.float32)
    dW, work = start.copy(), np.full((M, inputs), np.nan, np.float32)
    with numba_threads(threads):
        kernels.add_tiled_weight_gradient(dW, dz, panels, work, threads)
    x64 = x.astype(np.float64)
    scale = np.abs(start) + np.abs(x64) @ np.abs(dz64.T)
    assert within(dW, start + x64 @ dz64.T, scale, 1e-5)


def run_tests_in_subprocess(tmp_path, env, *pytest_args):
    """pytest on tests/ in a fresh interpreter with `env` added and numba's cache in tmp_path
    (a geometry forced by CHARLSTM_TILES is unknown to numba's own cache keys)."""
    environment = {**os.environ, **env, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    tests = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *pytest_args],
        cwd=tests, env=environment, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "test_the_expected_isa PASSED" in result.stdout  # the build has the geometry asked for
    assert " skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
    return result.stdout


BAND_TESTS = (  # the LSTM's step kernels on the tiles, both band paths
    "test_engine.py::test_float32_training_on_register_tiles_matches_the_reference",
    "test_engine.py::test_bands_on_one_thread_or_two_give_the_same_bits",
    "test_engine.py::test_three_windows_equal_one_long_window",
)
TRAINING_TESTS = (
    *BAND_TESTS,
    "test_cells.py::test_float32_step_products_on_register_tiles_match_float64",  # GRU, RNN
    "test_engine.py::test_gradients_match_finite_differences",
    "test_engine.py::test_units_in_bands_train_like_the_reference",
    "test_tiles.py::test_the_targets_packing_is_the_documented_layout",
    "test_tiles.py::test_tiled_matmul_pads_the_rows_and_cuts_the_columns_into_bands",
    "test_tiles.py::test_window_products_on_tiles_in_bands_of_whole_tiles",
    "test_torch_parity.py",
)


@pytest.mark.slow
def test_training_compiled_for_avx2(tmp_path):
    """Training's float32 tests on the tiles, the gradient checks and PyTorch parity, built for
    an AVX2 CPU: NUMBA_CPU_NAME alone would keep the host's features (AVX-512 here), so the
    features are emptied to the CPU's own, as numba documents for a named CPU."""
    env = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "CHARLSTM_EXPECT_ISA": "avx2"}
    run_tests_in_subprocess(tmp_path, env, *TRAINING_TESTS, "test_tiles.py::test_the_expected_isa")


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["neon", "avx2"])
def test_band_kernels_on_a_forced_geometry(tmp_path, isa):
    """The training kernels (both band paths, the head, dWh in the steps) with another ISA's
    tile shape forced on this machine: NEON's 8 x 12 as 4-wide vectors, AVX2's 6 x 16 with its
    tails on an AVX-512 host. On a host whose own build has that geometry the suite has just run
    these tests natively, so the forced build would repeat them."""
    if isa == tiles.GEOMETRY.isa and not {"CHARLSTM_TILES", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"} & set(
        os.environ
    ):
        pytest.skip(f"this host's own build has the {isa} geometry: the suite ran these tests on it")
    env = {"CHARLSTM_TILES": isa, "CHARLSTM_EXPECT_ISA": isa}
    run_tests_in_subprocess(tmp_path, env, *BAND_TESTS, "test_tiles.py::test_the_expected_isa")


def test_the_expected_isa():
    """In the subprocesses above: the build really has the geometry asked for."""
    expected = os.environ.get("CHARLSTM_EXPECT_ISA")
    if expected is None:
        pytest.skip("run by the subprocess tests")
    assert tiles.GEOMETRY.isa == expected


def test_every_geometry_gives_the_same_bits():
    """Each output sums its K products in order with one fused multiply-add each, whatever the
    tile's shape: the geometries differ in speed only (the README's determinism across ISAs)."""
    g = tiles.GEOMETRIES["avx2"]
    rng = np.random.default_rng(11)
    M, K, N = 56, 64, 48  # whole tiles of every geometry, with AVX2's tails (56 = 6 * 8 + 2 * 4)
    W, x = rng.normal(size=(M, K)).astype(np.float32), rng.normal(size=(K, N)).astype(np.float32)
    results = {}
    for isa in ISAS:
        out = np.empty((M, N), np.float32)
        products_of(isa)[0](out, packed_reference(W, tiles.GEOMETRIES[isa]), x)
        results[isa] = out
    assert sum(tiles.tile_count(g, M)) > M // g.rows  # tails in play
    for isa in ISAS:
        assert np.array_equal(results[isa], results["avx512"]), isa


@pytest.mark.slow
def test_sampling_writes_the_same_text_when_built_for_avx2(tmp_path):
    """The sampler sums in a fixed order with no fused multiply-adds and no BLAS: a random
    seed gives the same text from the AVX-512 (or host) build and the AVX2 one."""
    code = (
        "import sys; from charlstm.sample import load_model; "
        "[text] = load_model().generate('ROMEO:', 400, temperature=0.8, random_seed=3); "
        "sys.stdout.write(text)"
    )
    texts = []
    for env in ({}, {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, **env},
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        texts.append(done.stdout)
    assert len(texts[0]) == 400 and texts[0] == texts[1]
