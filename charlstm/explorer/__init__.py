"""The gate explorer: one self-contained interactive HTML page (data, code and styles inside,
no request but its own file) showing a model's gates over a text, its unit rankings,
saturation, LSTMVis-style select-and-match and the reach of its predictions.

`explore(...)` runs everything from Python and returns a `Page` (`.html`, `.save(path)`, and
inline display in Jupyter); `inspect-gates --save page.html` builds the same page from the
trace it has already computed (`build_page`). No Typer here.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from .. import features, gates, reach
from ..checkpoint import Checkpoint, default_model_path, load_checkpoint
from ..data import atomic_file
from ..errors import CharLSTMError, ConfigError
from ..signals import signals_of
from .payload import SignalRecorder, build_payload

__all__ = ["Page", "SignalRecorder", "build_page", "explore"]


class Page:
    """An explorer page. In Jupyter it shows inline, in an iframe whose srcdoc is the page."""

    def __init__(self, html_text: str):
        self.html = html_text

    def save(self, path: Path | str) -> Path:
        """Write the page atomically (a temporary file beside it, then a rename)."""
        path = Path(path)
        try:
            with atomic_file(path) as out:
                out.write(self.html.encode("utf-8"))
        except OSError as exc:
            raise CharLSTMError(f"{path}: cannot write ({exc.strerror or exc})") from None
        return path

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:900px;border:0" '
            'sandbox="allow-scripts"></iframe>'
        )

    def __len__(self) -> int:
        return len(self.html.encode("utf-8"))


def _json_for_script(document: dict) -> str:
    """JSON that a <script> element holds literally: no '<', '>' or '&' survives as itself, so
    no text of the document can close the element or start markup."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def build_page(
    trace: gates.Trace,
    recorder: SignalRecorder,
    ranking: gates.Ranking,
    reach_result: reach.Reach,
    *,
    model_name: str,
    feature: str | None = None,
    chosen: list[gates.Unit] | None = None,
    curves: dict | None = None,
) -> Page:
    payload = build_payload(
        trace, recorder, ranking, reach_result,
        model_name=model_name, feature=feature, chosen=chosen, curves=curves,
    )  # fmt: skip
    data = [f'<script type="application/json" id="meta">{_json_for_script(payload.meta)}</script>']
    for name, text in payload.blocks.items():
        data.append(f'<script type="application/octet-stream" id="data-{name}">{text}</script>')
    page = _asset("page.html")
    page = page.replace("/*CSS*/", _asset("page.css"), 1)
    page = page.replace("<!--DATA-->", "\n".join(data), 1)
    page = page.replace("/*JS*/", _asset("page.js"), 1)
    return Page(page)


def training_window(checkpoint: Checkpoint) -> int | None:
    """The BPTT window (seq_len) the checkpoint was trained with, when its config says."""
    training = checkpoint.config.get("training")
    window = training.get("seq_len") if isinstance(training, dict) else None
    return window if isinstance(window, int) and window > 0 else None


def curves_of(path: Path) -> dict | None:
    """The loss curves `charlstm info` shows for the checkpoint, or None when unreadable."""
    from ..info import describe

    try:
        return describe(path)["curves"]
    except CharLSTMError:
        return None


def explore(
    text: str,
    *,
    model: Path | str | None = None,
    warmup: str = "",
    max_chars: int = gates.DEFAULT_MAX_CHARS,
    feature: str | None = None,
    pick: str = "variance",
    signal: str | None = None,
    targets: int | None = None,
    lags: int = reach.DEFAULT_LAGS,
    thresholds: gates.Thresholds | None = None,
) -> Page:
    """The explorer page for `text` (its first `max_chars` characters) read by a checkpoint
    (default: the newest in ./models/, else the shipped one)."""
    path = Path(model) if model is not None else default_model_path()
    checkpoint = load_checkpoint(path)
    text = text[:max_chars]
    if not text:
        raise ConfigError("nothing to inspect: the text is empty")
    if feature is not None:
        features.check_feature(text, feature)
    config = checkpoint.model_config
    recorder = SignalRecorder(config.layers, len(text), config.hidden, signals_of(config.cell))
    count = reach.target_count(targets, len(text))
    trace = gates.compute_trace(
        checkpoint.params, checkpoint.vocab, text, warmup=warmup, show=count, signal=signal,
        thresholds=thresholds, observe=recorder, guess_everywhere=True,
    )  # fmt: skip
    ranking = gates.rank_units(trace, pick, feature)
    reached = reach.compute_reach(
        checkpoint.params, trace, targets=count, lags=lags, window=training_window(checkpoint)
    )
    return build_page(
        trace, recorder, ranking, reached,
        model_name=path.name, feature=feature, curves=curves_of(path),
    )  # fmt: skip
