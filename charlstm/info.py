"""What a checkpoint holds, as one JSON-ready dict: `charlstm info` prints it as a table (or as
JSON), with the loss curves from the metrics log beside the file or, without one, from the
checkpoint's own validation record. Reading never changes the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import FORMAT, Checkpoint, load_checkpoint, named_model_path
from .data import escape
from .metrics import Curves, MetricsError, metrics_path_for, read_curves
from .train import best_path_beside


def describe(spec: Path | str) -> dict[str, Any]:
    """Everything `charlstm info` shows about the checkpoint `spec` (a path or `shipped`).
    Raises CheckpointError as `eval` does; an unreadable metrics log is only a warning."""
    path = named_model_path(spec)
    ckpt = load_checkpoint(path, with_train_state=True)
    config, model = ckpt.config, ckpt.model_config
    record = config.get("record") if isinstance(config.get("record"), dict) else {}
    counters = _counters(ckpt)
    progress = {**record, **counters}  # a training state's own counters are the latest
    chars = ckpt.vocab.chars
    info: dict[str, Any] = {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "format": FORMAT,
        "kind": "training state" if ckpt.train_state else "weights",
        "cell": config.get("cell", "lstm"),
        "layers": model.layers,
        "hidden": model.hidden,
        "embed": model.embed,
        "dropout": model.dropout,
        "parameters": model.n_params,
        "vocab_size": len(chars),
        "vocab": "".join(chars),
        "vocab_escaped": escape("".join(chars)),
        "training": config.get("training"),
        "corpus": config.get("corpus"),
        "init_from": config.get("init_from"),
        "step": progress.get("step", config.get("step")),
        "epoch": record.get("epoch"),
        "chars_seen": progress.get("chars_seen"),
        "elapsed": progress.get("elapsed"),
        "val_loss": config.get("val_loss"),
        "best_val_loss": progress.get("best_val_loss", config.get("best_val_loss")),
        "best_step": progress.get("best_step"),
        "warnings": [],
    }
    info["curves"], elapsed = _curves(path, progress, info["warnings"], info["step"])
    if info["elapsed"] is None:  # best weights hold no clock (same seed, same bytes): the log's
        info["elapsed"] = elapsed
    info["resume"] = _resume_plan(ckpt, info) if ckpt.train_state else None
    return info


def _counters(ckpt: Checkpoint) -> dict[str, Any]:
    """The counters of a `.last.npz` (step, characters, time, best), {} for best weights."""
    if "counters" not in ckpt.train_state:
        return {}
    try:
        counters = json.loads(str(ckpt.train_state["counters"][()]))
    except (ValueError, TypeError, IndexError):
        return {}
    return counters if isinstance(counters, dict) else {}


def _resume_plan(ckpt: Checkpoint, info: dict) -> dict[str, Any]:
    """What `charlstm train --resume FILE` would do with this training state."""
    training = info["training"] or {}
    step = info["step"] or 0
    corpus = [str(p) for p in (info["corpus"] or [])]
    missing = [p for p in corpus if not Path(p).is_file()]
    if training.get("steps") is not None:
        left = max(0, training["steps"] - step)
        budget = f"{left:,} more steps, to step {training['steps']:,}"
    elif training.get("epochs") is not None:
        budget = f"on to {training['epochs']:g} epochs in all"
    else:
        minutes = training.get("minutes") or 0.0
        spent = (info["elapsed"] or 0.0) / 60
        budget = f"{max(0.0, minutes - spent):.1f} more minutes, to {minutes:g} in all"
    out = best_path_beside(ckpt.path, ckpt.config)
    done = training.get("steps") is not None and step >= training["steps"]
    return {
        "command": f"charlstm train --resume {ckpt.path}",
        "from_step": step,
        "budget": "nothing: the budget is spent (give a larger --steps, --epochs or --minutes)"
        if done
        else budget,
        "corpus_missing": missing,
        "best_weights": str(out),
    }


def _curves(
    path: Path, progress: dict, warnings: list[str], step: int | None
) -> tuple[dict[str, Any], float | None]:
    """The loss curves, from the metrics log beside the file, else the validation record; and
    the run's elapsed seconds at `step` when the log has them."""
    log = metrics_path_for(path)
    if log.exists():
        try:
            curves = read_curves(log)
            if curves.skipped:
                warnings.append(f"{log}: {curves.skipped} unreadable row(s) skipped")
            return _as_series(curves, str(log)), curves.elapsed.get(step) if step is not None else None
        except MetricsError as exc:
            warnings.append(f"{exc}; using the checkpoint's record")
    validations = progress.get("validations") or []
    curves = Curves()
    for entry in validations:
        readable = isinstance(entry, list) and len(entry) >= 2 and isinstance(entry[1], int | float)
        if readable and math.isfinite(entry[1]):
            curves.val_steps.append(int(entry[0]))
            curves.val_loss.append(float(entry[1]))
    return _as_series(curves, "checkpoint record" if validations else None), None


def _as_series(curves: Curves, source: str | None) -> dict[str, Any]:
    best = curves.best()
    return {
        "source": source,
        "train": [[s, v] for s, v in zip(curves.steps, curves.train_loss, strict=True)],
        "validation": [[s, v] for s, v in zip(curves.val_steps, curves.val_loss, strict=True)],
        "best": list(best) if best else None,
    }
