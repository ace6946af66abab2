"""Tests for the explorer page (charlstm.explorer): its data and safety without a browser, then
in a real one: Debian's chromium driven by Playwright (the `browser` extra), never a
downloaded browser. Without chromium or playwright the browser tests skip and say why.

The page's contract for tests: every character cell has `data-pos` (its index in the text),
the tooltip is the element with role="tooltip", its signal rows carry data-signal and
data-value, and <body data-ready="true"> marks the end of loading.
"""

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charlstm import explorer
from charlstm.checkpoint import save_checkpoint
from charlstm.cli import app
from charlstm.data import Vocab
from charlstm.explorer import payload
from charlstm.model import ModelConfig, init_params
from charlstm.signals import LSTM

HOSTILE = '</script><img src=x onerror="window.pwned=1">&lt; <b>bold</b>\n'
TEXT = ('"Is it so?" she said.\n\tAnd then (he said) "no".\n' * 12) + HOSTILE + "the end."
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
UNIT = "L2:3"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-layer model, the page and the --json export of the same run, made by the CLI."""
    folder = tmp_path_factory.mktemp("explorer")
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=vocab.size, layers=2, hidden=8, embed=4)
    params = init_params(config, np.random.default_rng(7))
    params.flat[:] *= 3.0  # livelier gates than at initialisation
    model = save_checkpoint(folder / "tiny.npz", params, vocab, {"training": {"seq_len": 16}})
    text = folder / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    page, export = folder / "page.html", folder / "out.json"
    result = CliRunner().invoke(
        app,
        ["inspect-gates", "--model", str(model), "--file", str(text), "--units", UNIT,
         "--show", str(len(TEXT)), "--feature", "said", "--lags", "30",
         "--save", str(page), "--json", str(export)],
        env={"COLUMNS": "100"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"model": model, "page": page, "json": json.loads(export.read_text(encoding="utf-8"))}


# --------------------------------------------------------------------------------------------
# Without a browser


def test_quantisation_error_is_within_half_a_step():
    values = np.linspace(-1, 1, 1001)
    for signal, bound in (
        ("i", 1 / 510),
        ("f", 1 / 510),
        ("o", 1 / 510),
        ("g", 1 / 255),
        ("c", 1 / 255),
        ("h", 1 / 255),
    ):
        x = (values + 1) / 2 if signal in payload.UNIT_SCALE else values
        back = payload.dequantise(payload.quantise(x, signal), signal)
        assert np.abs(back - x).max() <= bound + 1e-12


def test_the_page_is_self_contained_and_its_text_is_inert(files):
    html = files["page"].read_text(encoding="utf-8")
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert policy.startswith("default-src 'none';") and "img-src data: blob:" in policy
    assert "unsafe-eval" not in policy
    assert not re.search(
        r"https?://(?!www\.w3\.org/2000/svg)", html
    )  # the SVG namespace is a name, not a request
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html.split("<script")[0])
    # The hostile text closes no element and starts no markup: it lives, escaped, in the JSON.
    assert html.count("</script>") == html.count("<script")
    assert "<img src=x" not in html and "&lt;" not in html.split('id="meta">')[1].split("</script>")[0]
    meta = json.loads(
        re.search(r'<script type="application/json" id="meta">(.*?)</script>', html, re.S).group(1)
    )
    assert meta["text"] == TEXT  # exactly, once parsed


def test_the_page_holds_every_unit_when_small_and_the_top_units_when_large(files, monkeypatch):
    meta = json.loads(
        re.search(r'id="meta">(.*?)</script>', files["page"].read_text(encoding="utf-8"), re.S).group(1)
    )
    assert meta["kept"] == [list(range(8)), list(range(8))]
    assert set(meta["rankings"]) == {"variance", "integrator", "quote", "line-pos", "indent", "depth", "said"}
    assert meta["rankings"]["said"]["custom"] and meta["rankings"]["quote"]["available"]
    assert meta["reach"]["window"] == 16 and meta["reach"]["lags"] == 30
    monkeypatch.setattr(payload, "ALL_UNITS_BUDGET", 100)
    monkeypatch.setattr(payload, "TOP_UNITS", 5)
    page = explorer.explore(TEXT, model=files["model"], targets=50, lags=10)
    small = json.loads(re.search(r'id="meta">(.*?)</script>', page.html, re.S).group(1))
    ranked = [(r[0], r[1]) for r in small["rankings"]["variance"]["rows"][:5]]
    assert sorted((layer, u) for layer, units in enumerate(small["kept"]) for u in units) == sorted(ranked)


def test_a_feature_absent_from_the_text_is_explained_not_fatal(files):
    page = explorer.explore("abc abc abc abc abc abc abc", model=files["model"])
    meta = json.loads(re.search(r'id="meta">(.*?)</script>', page.html, re.S).group(1))
    assert not meta["rankings"]["quote"]["available"]
    assert "nothing to correlate" in meta["rankings"]["quote"]["reason"]


def test_jupyter_shows_the_page_in_an_iframe(files, tmp_path):
    page = explorer.explore("some text to read", model=files["model"])
    shown = page._repr_html_()
    assert shown.startswith('<iframe srcdoc="') and "&lt;script" in shown and "<script" not in shown
    saved = page.save(tmp_path / "p.html")
    assert saved.read_text(encoding="utf-8") == page.html and not list(tmp_path.glob(".*tmp"))


# --------------------------------------------------------------------------------------------
# In a real browser

try:
    from playwright import sync_api
except ImportError:  # the browser extra is not installed
    sync_api = None
browser_only = pytest.mark.skipif(
    CHROMIUM is None or sync_api is None,
    reason="needs Debian's chromium (apt-get install chromium) and playwright (pip install -e '.[browser]')",
)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def open_page(browser, path: Path, hash_part: str = ""):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    events = {"requests": [], "console": []}
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("console", lambda m: events["console"].append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: events["console"].append(f"pageerror: {e}"))
    page.goto(path.as_uri() + hash_part)
    page.wait_for_selector("body[data-ready]", state="attached", timeout=20_000)
    assert page.get_attribute("body", "data-ready") == "true", events["console"]
    return page, events


def hash_of(page) -> dict:
    return dict(part.split("=", 1) for part in page.url.split("#", 1)[1].split("&"))


@browser_only
def test_no_request_but_its_own_file_and_no_console_error(browser, files):
    page, events = open_page(browser, files["page"])
    page.hover('[data-pos="5"]')
    page.select_option("#colour-mode", "reach")
    page.hover('[data-pos="40"]')
    assert events["requests"] == [files["page"].as_uri()]
    assert [m for m in events["console"] if m.startswith(("error", "pageerror"))] == []
    page.close()


@browser_only
def test_hovering_shows_the_json_values_to_quantisation_error(browser, files):
    page, _ = open_page(browser, files["page"], f"#unit={UNIT}")
    export = next(u for u in files["json"]["units"] if u["unit"] == UNIT)["shown"]
    for pos in (0, 17, 333, len(TEXT) - 1):
        page.hover(f'[data-pos="{pos}"]')
        tip = page.locator('[role="tooltip"]')
        assert tip.is_visible()
        assert f"at position {pos}" in tip.inner_text() and f"unit {UNIT}" in tip.inner_text()
        for signal in ("i", "f", "g", "o", "c", "h"):
            shown = float(tip.locator(f'tr[data-signal="{signal}"]').get_attribute("data-value"))
            expected = np.tanh(export[signal][pos]) if signal == "c" else export[signal][pos]
            step = 1 / 510 if signal in ("i", "f", "o") else 1 / 255
            assert shown == pytest.approx(expected, abs=step + 1e-6), (pos, signal)
        assert "best guesses" in tip.inner_text() and ("bits" in tip.inner_text() or pos == 0)
    page.focus("#text")
    page.keyboard.press("Escape")
    assert not page.locator('[role="tooltip"]').is_visible()
    page.close()


@browser_only
def test_unit_rows_arrow_keys_and_the_hash(browser, files):
    page, _ = open_page(browser, files["page"], "#unit=L1:2&pos=10")
    assert hash_of(page)["unit"] == "L1:2"
    page.click('#unit-table tr[data-unit="L2:5"]')
    assert hash_of(page)["unit"] == "L2:5"
    assert page.locator("#unit-table tr.selected").get_attribute("data-unit") == "L2:5"
    page.focus("#text")
    page.keyboard.press("ArrowRight")
    assert hash_of(page)["pos"] == "11"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert hash_of(page)["pos"] == "9"
    page.keyboard.press("End")
    assert hash_of(page)["pos"] == str(len(TEXT) - 1)
    page.keyboard.press("Home")
    assert hash_of(page)["pos"] == "0"
    page.keyboard.press("ArrowDown")  # the next line, same column
    assert hash_of(page)["pos"] == str(TEXT.index("\n") + 1)
    assert page.locator(".cursor").get_attribute("data-pos") == str(TEXT.index("\n") + 1)  # one cursor
    # A shared view reopens where it was.
    again, _ = open_page(browser, files["page"], "#" + page.url.split("#", 1)[1])
    assert hash_of(again) == hash_of(page)
    page.close()
    again.close()


@browser_only
def test_the_brush_lists_the_units_on_across_the_range(browser, files):
    page, _ = open_page(browser, files["page"])
    a, b = 1, 14  # inside the first quotation
    page.hover(f'[data-pos="{a}"]')
    page.mouse.down()
    page.hover(f'[data-pos="{b}"]')
    page.mouse.up()
    page.wait_for_selector(f"#brush-note:has-text('range {a}–{b}')")
    listed = page.locator("#match-units button").all_inner_texts()
    # The same selection from the quantised data: last layer, the ranked signal (tanh c), 0.5.
    vocab = Vocab.from_text(TEXT)
    from charlstm import gates
    from charlstm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(files["model"])
    recorder = payload.SignalRecorder(2, len(TEXT), 8, LSTM)
    gates.compute_trace(ckpt.params, vocab, TEXT, observe=recorder)
    tanh_c = payload.dequantise(recorder.codes[1, LSTM.names.index("c")], "c")  # (N, H)
    on = tanh_c >= 0.5
    expected = [
        f"L2:{j}" for j in range(8)
        if on[a : b + 1, j].all() and not on[a - 1, j] and not on[b + 1, j]
    ]  # fmt: skip
    assert listed == expected
    bars = page.locator("#threshold-chart rect")
    assert bars.count() == 19
    if expected:
        assert page.locator("#matches li").count() >= 1
    page.close()


@browser_only
def test_hostile_text_is_shown_literally_and_never_runs(browser, files):
    page, _ = open_page(browser, files["page"])
    start = TEXT.index(HOSTILE)
    shown = "".join(page.locator("#text span[data-pos]").all_inner_texts())
    visible = TEXT.replace(" ", "·").replace("\n", "⏎").replace("\t", "→")
    assert shown == visible
    assert page.locator(f'[data-pos="{start}"]').inner_text() == "<"
    assert page.locator("#text img, #text b").count() == 0
    page.hover(f'[data-pos="{start + 14}"]')
    assert page.locator("img").count() == 0
    page.close()
    # A page that could run the text would have set window.pwned; look without the page's
    # own policy in the way of the probe.
    context = browser.new_context(bypass_csp=True)
    probe = context.new_page()
    probe.goto(files["page"].as_uri())
    probe.wait_for_selector("body[data-ready]", state="attached")
    assert probe.evaluate("() => window.pwned === undefined")
    context.close()


def _png_size_and_colours(data: bytes) -> tuple[int, int, int]:
    """Width, height and the number of distinct pixel rows of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, at = b"", 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        if data[at + 4 : at + 8] == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    rows = {raw[r * stride + 1 : (r + 1) * stride] for r in range(height)}
    return width, height, len(rows)


@browser_only
def test_the_screenshot_is_not_blank(browser, files):
    context = browser.new_context(bypass_csp=True, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.goto(files["page"].as_uri())
    page.wait_for_selector("body[data-ready]", state="attached")
    width, height, rows = _png_size_and_colours(page.screenshot(full_page=True))
    assert width == 1300 and height > 900 and rows > 200
    heatmap = page.evaluate(
        """() => { const c = document.getElementById('hm-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   const seen = new Set();
                   for (let i = 0; i < d.length; i += 4) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
                   return [c.width, c.height, seen.size]; }"""
    )
    assert heatmap[0] > 100 and heatmap[1] >= 16 and heatmap[2] > 20
    context.close()
