"""One self-contained HTML file per run or comparison, with its PNG plots written beside it.

The page opens offline: no script, no stylesheet or font from elsewhere, plots and image thumbnails
inline as base64 data URIs, and a Content-Security-Policy that forbids loading anything else.
Every string taken from data (labels, file names, notes, warnings) is HTML-escaped: labels and
file names are user input.

Reads the run from the ledger and image bytes from the blobs; never imports torch.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate2model.errors import InputError, InvalidImage, NotFoundError, TrainingError
from annotate2model.fsutil import atomic_write_bytes
from annotate2model.judging import plots

if TYPE_CHECKING:
    from annotate2model.judging.records import (
        CompareRow,
        Comparison,
        ImageChange,
        LearningCurve,
        PairTest,
    )
    from annotate2model.store import Store
    from annotate2model.store.runs import EvaluationRecord, PredictionRecord, RunRecord
    from annotate2model.training.context import RunContext

REPORT_FILE = "report.html"
# Thumbnails: the longer side in pixels, JPEG quality. Small: a gallery of 60 stays under 1 MB.
THUMB_SIZE = 128
THUMB_QUALITY = 80
# At most this many images per gallery; the page says how many more there are.
GALLERY_LIMIT = 60
# Splits whose mistakes the gallery shows (the training split's say little about the model).
JUDGED_SPLITS = ("val", "test")


@dataclass(frozen=True)
class ReportFiles:
    """What a report wrote: the HTML page and its plots (name -> PNG path, beside the page)."""

    html: Path
    plots: dict[str, Path] = field(default_factory=dict)


# Building blocks of the page.

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0.2em; }
.lead { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
.scroll { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td { overflow-wrap: anywhere; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { overflow-wrap: normal; }  /* broken at spaces only: "0.775 [0.675, 0.895]" */
caption { caption-side: top; text-align: left; color: #555; padding: 0 0 0.4em; }
thead th { background: #f0f3f7; }
table.confusion td.diag { background: #e3f1e3; font-weight: bold; }
table.confusion td.off { background: #fbe9e7; }
.plot { display: block; max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.5em 0; }
.warnings { border: 2px solid #d9822b; background: #fff4e5; padding: 0.6em 1em; margin: 1em 0; }
.warnings h2 { margin: 0 0 0.3em; font-size: 1.1em; color: #a35200; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 150px; border: 1px solid #ddd; padding: 5px;
                  font-size: 0.8em; background: #fafafa; }
.gallery img { display: block; margin: 0 auto 4px; max-width: 140px; max-height: 140px; }
.gallery .name { overflow-wrap: anywhere; color: #555; }
.gallery .missing { height: 90px; display: flex; align-items: center; justify-content: center;
                    color: #999; }
.wrong { color: #b00020; }
.right { color: #1b7a1b; }
.more { color: #555; font-style: italic; }
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}f}"


def _page(title: str, body: Iterable[str]) -> str:
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            # Nothing but this file and its inline images: the page works offline and cannot
            # reach out even if a label smuggled markup past the escaping.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "img-src data:; style-src 'unsafe-inline'\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            f'<p class="more">Written by annotate2model on '
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    id: str | None = None,
    numeric: Sequence[int] = (),
    caption: str = "",
) -> str:
    """A table of already-escaped cells; `numeric`: column indexes aligned right; `caption`
    (escaped HTML): what the table's rows share, said once above it."""
    attrs = f' id="{_e(id)}"' if id else ""
    head = "".join(
        f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>"
        for i, h in enumerate(headers)
    )
    body = [
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        + "</tr>"
        for cells in rows
    ]
    return (
        f'<div class="scroll"><table{attrs}>'
        + (f"<caption>{caption}</caption>" if caption else "")
        + f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _png(path: Path, alt: str, id: str, points: int | None = None) -> str:
    """The plot inline; `points`: how many it marks (data-points, for whoever checks the page)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    count = f' data-points="{points}"' if points is not None else ""
    return (
        f'<img class="plot" id="{_e(id)}"{count} alt="{_e(alt)}" width="{plots.WIDTH}" '
        f'height="{plots.HEIGHT}" src="data:image/png;base64,{data}">'
    )


def thumbnail_uri(path: Path, max_pixels: int, size: int = THUMB_SIZE) -> str | None:
    """A small JPEG of the image as a data URI, or None when the image cannot be read."""
    from annotate2model.imaging import decode_rgb

    try:
        # JPEGs decode at a power-of-two fraction of their size (draft mode): much faster.
        img = decode_rgb(path, max_pixels, draft_size=(size, size))
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=THUMB_QUALITY)
    except (InvalidImage, OSError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _figure(thumb: str | None, name: str, lines: Sequence[str]) -> str:
    """One gallery card: thumbnail, the name a person knows the image by, then escaped lines."""
    picture = (
        f'<img src="{thumb}" alt="{_e(name)}">'
        if thumb
        else '<div class="missing">image unavailable</div>'
    )
    caption = "".join(f"<div>{line}</div>" for line in lines)
    return (
        f'<figure>{picture}<figcaption><div class="name">{_e(name)}</div>{caption}'
        "</figcaption></figure>"
    )


def _more(shown: int, total: int, what: str) -> str:
    if total <= shown:
        return ""
    return f'<p class="more">{total - shown} more {_e(what)} not shown.</p>'


def _plot_path(out: Path, name: str) -> Path:
    """A plot's file beside the page: `history.png` beside report.html, else `<page>-history.png`
    (two reports written to one folder keep their own plots)."""
    prefix = "" if out.name == REPORT_FILE else f"{out.stem}-"
    return out.with_name(f"{prefix}{name}.png")


def _write(out: Path, html: str) -> Path:
    atomic_write_bytes(out, html.encode("utf-8"), mode=0o644)
    return out


# The report of one run.


@dataclass(frozen=True)
class _RunData:
    run: RunRecord
    predictions: list[PredictionRecord]
    names: dict[str, str]
    # The run judged since (evaluate, compare), as the ledger keeps it.
    evaluations: list[EvaluationRecord]


def _read_run(store: Store, run_id: int | str, ctx: RunContext) -> _RunData:
    from annotate2model.store import runs as store_runs

    with store.read() as session:
        run = store_runs.get_run(session, run_id)
        if run.status != "succeeded":
            why = f": {run.error}" if run.error else ""
            raise TrainingError(
                f"run {run.id} is {run.status}{why}; only a succeeded run has a report.",
                hint="`a2m runs` lists the runs and their status.",
            )
        predictions = [
            p
            for p in store_runs.read_predictions(session, run.id, run.version)
            if p.split in JUDGED_SPLITS
        ]
        evaluations = store_runs.list_evaluations(session, run.id)
    if not predictions:
        raise NotFoundError(
            f"run {run.id} has no predictions recorded on the validation or test images of "
            f"version {run.version}: there is nothing to show.",
            hint=f"`a2m evaluate {run.id} --split val` judges it and records them.",
        )
    wrong = [p.image_sha256 for p in predictions if p.predicted != p.label]
    return _RunData(
        run=run, predictions=predictions, names=ctx.image_names(wrong), evaluations=evaluations
    )


def _split_metrics(run: RunRecord) -> dict[str, dict[str, Any]]:
    splits = run.metrics.get("splits") or {}
    return {
        name: m
        for name in ("train", "val", "test")
        if isinstance(m := splits.get(name), dict) and m.get("n")
    }


def _labels(run: RunRecord, predictions: Sequence[PredictionRecord]) -> list[str]:
    for m in _split_metrics(run).values():
        if m.get("per_class"):
            return list(m["per_class"])
    return sorted({p.label for p in predictions} | {p.predicted for p in predictions})


def _config_rows(run: RunRecord) -> list[tuple[str, str]]:
    m = run.metrics
    rows = [
        ("run", str(run.id)),
        ("kind", run.kind),
        ("dataset version", str(run.version)),
        ("status", run.status),
        ("device", run.device or "-"),
        ("started", run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("wall time (s)", _num(run.wall_seconds, 1)),
        ("images/s", _num(run.images_per_second, 0)),
        ("val accuracy", _num(m.get("val_accuracy"))),
        ("test accuracy", _num(m.get("test_accuracy"))),
    ]
    probe = run.config.get("mode") == "probe"
    for key, value in sorted(run.config.items()):
        if (probe and key in FINETUNE_ONLY) or value in (None, "", {}, []):
            continue
        if key == "rotation" and probe and run.config.get("views", 1) == 1:
            continue  # a probe rotates only its augmented extra views
        shown = _weights_meaning(run.config) if key == "weights" else _config_value(value)
        rows.append((key, shown))
    return rows


# Settings a probe never reads: its head is a logistic regression fitted by L-BFGS on cached
# features (training/fit/head.py), with no optimiser, schedule, epochs or augmentation of its own
# (a probe's extra `views` are its augmentation). Its report leaves them out.
FINETUNE_ONLY = frozenset(
    {
        "unfreeze",
        "optimizer",
        "schedule",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "label_smoothing",
        "early_stopping",
        "block_lr_scale",
        "warmup_epochs",
        "head_init",
        "augment",
    }
)


def _ignored_settings(run: RunRecord) -> str:
    """A probe's fine-tuning-only settings that were given a value of their own (unused)."""
    if run.config.get("mode") != "probe":
        return ""
    from annotate2model.training.config import RunConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    given = [
        f"{key}={_config_value(value)}"
        for key, value in sorted(run.config.items())
        if key in FINETUNE_ONLY and key != "augment" and value != defaults.get(key, value)
    ]
    if not given:
        return ""
    return (
        '<p class="more" id="ignored-settings">Set, but a probe does not use them: '
        f"{_e(', '.join(given))}.</p>"
    )


def _weights_meaning(config: dict[str, Any]) -> str:
    """The weights setting with what it means: "none" alone reads like a missing value."""
    weights = str(config.get("weights", "-"))
    if weights == "none":
        return (
            f"none: random initial weights (seed {config.get('seed', 0)}), nothing pretrained; "
            "expect far lower accuracy than from pretrained weights"
        )
    if weights == "imagenet":
        return "imagenet: torchvision's ImageNet-pretrained weights"
    return f"{weights}: a state dict file of pretrained weights"


def _model(run: RunRecord) -> str:
    c = run.config
    if run.kind == "ensemble":
        members = ", ".join(str(m) for m in c.get("members", []))
        return f"An ensemble of runs {members} (their probabilities averaged)"
    mode = c.get("mode", "-")
    what = {
        "probe": "probe run (a linear head on frozen features)",
        "finetune": "fine-tuning run",
    }.get(mode, f"{mode} run")
    weights = c.get("weights")
    start = {"none": " from random weights", "imagenet": " from ImageNet weights"}.get(
        str(weights), " from a weights file" if weights else ""
    )
    return f"A {c.get('backbone', '-')} {what}{start}"


def _config_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _history_table(history: Sequence[dict[str, Any]]) -> str:
    # A probe's history has a row per C its head was fitted with; fine-tuning's, per epoch.
    probe = any("C" in row for row in history)
    rate = "C" if probe else "lr"
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", rate, "seconds")
    rows = [
        [_e(str(row.get("epoch", i + 1)) + (" (kept)" if row.get("kept") else ""))]
        + [_num(row.get(k), 6 if k == rate else (2 if k == "seconds" else 3)) for k in keys]
        for i, row in enumerate(history)
    ]
    first = "fit" if probe else "epoch"
    headers = [first, "train loss", "train acc", "val loss", "val acc", rate, "seconds"]
    return _table(headers, rows, id="history-table", numeric=range(7))


def _per_class_table(split: str, m: dict[str, Any]) -> str:
    rows = [
        [_e(label), _num(c.get("precision")), _num(c.get("recall")), _num(c.get("f1")),
         _e(c.get("support", "-"))]
        for label, c in (m.get("per_class") or {}).items()
    ]  # fmt: skip
    return _table(
        ["label", "precision", "recall (accuracy)", "F1", "images"],
        rows,
        id=f"per-class-{split}",
        numeric=(1, 2, 3, 4),
    )


def _confusion_table(split: str, labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    rows = []
    for i, (label, row) in enumerate(zip(labels, matrix, strict=False)):
        cells = [f"<th>{_e(label)}</th>"]
        for j, value in enumerate(row):
            cls = "diag" if i == j else ("off" if value else "")
            cells.append(f'<td class="num {cls}">{int(value)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{_e(label)}</th>" for label in labels)
    return (
        f'<table class="confusion" id="confusion-{_e(split)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}


# Up to this many classes the confusion matrix is a table (exact counts, readable); beyond, a
# plot (a table that wide is not read). Either way the page shows each split's matrix once.
CONFUSION_TABLE_MAX = 12


def _split_section(
    split: str, m: dict[str, Any], labels: Sequence[str], plot: Path | None = None
) -> str:
    macro = m.get("macro") or {}
    top = ", ".join(f"{k} {_num(v)}" for k, v in (m.get("top_k") or {}).items())
    summary = (
        f"{_e(m.get('n'))} images: accuracy <b>{_num(m.get('accuracy'))}</b>, macro F1 "
        f"{_num(macro.get('f1'))}, loss {_num(m.get('loss'))}" + (f", {_e(top)}" if top else "")
    )
    matrix = m.get("confusion") or []
    return "\n".join(
        [
            f'<section id="split-{_e(split)}">',
            f"<h2>{_SPLIT_NAMES[split]} split</h2>",
            f"<p>{summary}.</p>",
            "<h3>Per class</h3>",
            _per_class_table(split, m),
            "<h3>Confusion matrix (rows: true label, columns: predicted)</h3>",
            _png(plot, f"confusion matrix of the {split} split", "confusion-plot")
            if plot is not None
            else _confusion_table(split, labels, matrix),
            "</section>",
        ]
    )


def _evaluations_section(evaluations: Sequence[EvaluationRecord]) -> str:
    if not evaluations:
        return ""
    rows = [
        [_e(e.created_at.strftime("%Y-%m-%d %H:%M")), str(e.version), _e(e.split), str(e.n),
         _num(e.accuracy), _num(e.macro_f1), _e(e.source)]
        for e in evaluations
    ]  # fmt: skip
    return (
        '<section id="evaluations"><h2>Judged since</h2>'
        '<p class="lead">The run judged on other images (a2m evaluate, a2m compare), as the '
        "ledger keeps it; accuracies on different images are not comparable.</p>"
        + _table(
            ["when (UTC)", "version", "images", "n", "accuracy", "macro F1", "by"],
            rows,
            id="evaluations-table",
            numeric=(1, 3, 4, 5),
        )
        + "</section>"
    )


def _gallery(
    data: _RunData, labels: Sequence[str], ctx: RunContext, limit: int = GALLERY_LIMIT
) -> str:
    wrong = [p for p in data.predictions if p.predicted != p.label]
    # Worst first: the most confident mistakes.
    wrong.sort(key=lambda p: (-p.confidence, p.split, p.image_sha256))
    index = {label: i for i, label in enumerate(labels)}
    cards = []
    for p in wrong[:limit]:
        i = index.get(p.label)
        true_p = p.probs[i] if i is not None and i < len(p.probs) else None
        lines = [
            f"true: <b>{_e(p.label)}</b>" + (f" ({_num(true_p, 2)})" if true_p is not None else ""),
            f'predicted: <b class="wrong">{_e(p.predicted)}</b> ({_num(p.confidence, 2)})',
            f"{_e(_SPLIT_NAMES[p.split].lower())} split",
        ]
        name = data.names.get(p.image_sha256, f"image {p.image_sha256[:12]}")
        cards.append(
            _figure(thumbnail_uri(ctx.blob_path(p.image_sha256), ctx.max_pixels), name, lines)
        )
    judged = len(data.predictions)
    heading = (
        f"<h2>Misclassified images ({len(wrong)} of {judged} validation and test images)</h2>"
        '<p class="lead">Worst first: the most confident mistakes. Probabilities in brackets.</p>'
    )
    if not wrong:
        return f'<section id="gallery">{heading}<p>None: every image was right.</p></section>'
    return (
        f'<section id="gallery">{heading}<div class="gallery">{"".join(cards)}</div>'
        f"{_more(min(limit, len(wrong)), len(wrong), 'misclassified images')}</section>"
    )


def run_report(
    store: Store,
    run_id: int | str,
    out: Path | None = None,
    context: RunContext | None = None,
    *,
    gallery_limit: int = GALLERY_LIMIT,
) -> ReportFiles:
    """Write the report of one succeeded run (default: report.html in the run's folder) and its
    plots (history, confusion) beside it."""
    from annotate2model.training.context import RunContext

    ctx = context or RunContext.from_store(store)
    data = _read_run(store, run_id, ctx)
    run = data.run
    out = out if out is not None else ctx.run_dir(run.id) / REPORT_FILE
    splits = _split_metrics(run)
    labels = _labels(run, data.predictions)
    # The confusion plot shows the test split where there is one (validation picks the model).
    judged = "test" if "test" in splits else ("val" if "val" in splits else None)
    written: dict[str, Path] = {}
    # An ensemble trains nothing itself (no epochs), and under MIN_POINTS epochs the table says
    # it better: no plot then, and none left from an earlier page.
    if plots.history_points(run.history) >= plots.MIN_POINTS:
        written["history"] = plots.history_plot(run.history, _plot_path(out, "history"))
    else:
        _plot_path(out, "history").unlink(missing_ok=True)
    # The judged split's confusion matrix as a plot only where a table would be too wide.
    if judged is not None and len(labels) > CONFUSION_TABLE_MAX:
        matrix = splits[judged].get("confusion") or []
        written["confusion"] = plots.confusion_plot(labels, matrix, _plot_path(out, "confusion"))
    else:
        _plot_path(out, "confusion").unlink(missing_ok=True)

    title = f"Run {run.id} on version {run.version}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="lead">{_e(_model(run))} on {len(labels)} classes: '
        f"{', '.join(_e(label) for label in labels)}.</p>",
        '<section id="configuration"><h2>Configuration</h2>',
        _table(
            ["setting", "value"],
            ([_e(k), _e(v)] for k, v in _config_rows(run)),
            id="config",
        ),
        _ignored_settings(run),
        "</section>",
    ]
    if run.history:
        probe = any("C" in row for row in run.history)
        per = "per fit of the head (one per regularisation strength C)" if probe else "per epoch"
        body += [
            f'<section id="history"><h2>Loss and accuracy {per}</h2>',
            _png(
                written["history"],
                f"loss and accuracy {per}",
                "history-plot",
                plots.history_points(run.history),
            )
            if "history" in written
            else "",
            _history_table(run.history),
            "</section>",
        ]
    body += [
        _split_section(s, splits[s], labels, written.get("confusion") if s == judged else None)
        for s in ("test", "val", "train")
        if s in splits
    ]
    body.append(_evaluations_section(data.evaluations))
    body.append(_gallery(data, labels, ctx, gallery_limit))
    return ReportFiles(html=_write(out, _page(title, body)), plots=written)


# The report of a comparison.


def _interval(row: CompareRow) -> str:
    return f"{_num(row.accuracy)} [{_num(row.interval.low)}, {_num(row.interval.high)}]"


def _weights(weights: str) -> str:
    """A weights file by its name (the whole path on hover), imagenet or none as they are."""
    name = weights.replace("\\", "/").rsplit("/", 1)[-1]
    return f'<span title="{_e(weights)}">{_e(name)}</span>' if name != weights else _e(weights)


def _weights_note(weights: str) -> str:
    """What a weights value means, for the comparison's caption ("" for a file: its name says)."""
    return {
        "none": "none: random initial weights, nothing pretrained",
        "imagenet": "imagenet: torchvision's ImageNet-pretrained weights",
    }.get(weights, "")


def _compare_table(comparison: Comparison) -> str:
    """The runs, a row each. A column every row holds the same value in (the model, the weights,
    the device, often) moves into the caption: twelve columns at 1100 px wrap every header."""
    rows = comparison.rows
    level = round(rows[0].interval.level * 100) if rows else 95
    # (header, cells, numeric, may move to the caption)
    columns: list[tuple[str, list[str], bool, bool]] = [
        ("run", [str(r.run) for r in rows], True, False),
        ("version", [str(r.version) for r in rows], True, True),
        (
            "train/val/test",
            ["/".join(str(r.counts.get(s, 0)) for s in ("train", "val", "test")) for r in rows],
            False,
            False,
        ),
        (
            "per class",
            ["<br>".join(f"{_e(k)}: {v}" for k, v in r.balance.items()) for r in rows],
            False,
            False,
        ),
        ("model", [_e(f"{r.backbone} {r.mode}") for r in rows], False, True),
        ("weights", [_weights(r.weights) for r in rows], False, True),
        ("val accuracy", [_num(r.val_accuracy) for r in rows], True, False),
        ("test accuracy", [_interval(r) for r in rows], True, False),
        ("macro F1", [_num(r.macro_f1) for r in rows], True, False),
        ("time (s)", [_num(r.wall_seconds, 1) for r in rows], True, False),
        ("images/s", [_num(r.images_per_second, 0) for r in rows], True, False),
        ("device", [_e(r.device or "-") for r in rows], False, True),
    ]
    shared = [c for c in columns if c[3] and len(rows) > 1 and len(set(c[1])) == 1]
    kept = [c for c in columns if c not in shared]
    said = [f"{header} {cells[0]}" for header, cells, _, _ in shared]
    notes = sorted({n for r in rows if (n := _weights_note(r.weights))})
    caption = (
        (
            f"{'Both' if len(rows) == 2 else f'All {len(rows)}'} runs: {'; '.join(said)}. "
            if said
            else ""
        )
        + "Per class: training images of each label. Val accuracy: on each run's own "
        "validation split. Test accuracy: on the common test images, then its "
        f"{level}% interval in brackets; macro F1 on them too. Time: the run's wall time."
        + (f" Weights {'; '.join(_e(n) for n in notes)}." if notes else "")
    )
    return _table(
        [header for header, _, _, _ in kept],
        [[cells[i] for _, cells, _, _ in kept] for i in range(len(rows))],
        id="comparison",
        numeric=[k for k, c in enumerate(kept) if c[2]],
        caption=caption,
    )


def _per_class_runs(comparison: Comparison) -> str:
    """Accuracy per true class on the common test images, one column per run."""
    labels = list(dict.fromkeys(label for r in comparison.rows for label in r.per_class))
    support: dict[str, int] = {}
    for label in comparison.test_set.labels:
        support[label] = support.get(label, 0) + 1
    rows = [
        [_e(label), str(support.get(label, 0))]
        + [_num(r.per_class.get(label)) for r in comparison.rows]
        for label in labels
    ]
    headers = ["label", "images", *(f"run {r.run} (v{r.version})" for r in comparison.rows)]
    return _table(headers, rows, id="per-class", numeric=range(1, len(headers)))


def _direction(delta: float) -> str:
    return "right" if delta > 0 else ("wrong" if delta < 0 else "")


def _delta_table(pair: PairTest, index: int) -> str:
    rows = [
        [_e(label), f'<span class="{_direction(d)}">{d:+.3f}</span>']
        for label, d in pair.per_class_delta.items()
    ]
    return _table(
        ["label", f"accuracy change, run {pair.after} − run {pair.before}"],
        rows,
        id=f"per-class-delta-{index}",
        numeric=(1,),
    )


def _changes(
    changes: Sequence[ImageChange], ctx: RunContext | None, limit: int, what: str, id: str
) -> str:
    if not changes:
        return ""
    cards = []
    for c in changes[:limit]:
        thumb = thumbnail_uri(ctx.blob_path(c.image_sha256), ctx.max_pixels) if ctx else None
        lines = [
            f"true: <b>{_e(c.label)}</b>",
            f'before: <b class="{"right" if c.before == c.label else "wrong"}">{_e(c.before)}</b>',
            f'after: <b class="{"right" if c.after == c.label else "wrong"}">{_e(c.after)}</b>',
        ]
        cards.append(_figure(thumb, c.name, lines))
    return (
        f'<h4>{_e(what.capitalize())} ({len(changes)})</h4><div class="gallery" id="{_e(id)}">'
        f"{''.join(cards)}</div>{_more(min(limit, len(changes)), len(changes), what)}"
    )


def _pair_section(pair: PairTest, index: int, ctx: RunContext | None, limit: int) -> str:
    fixed = [c for c in pair.changes if c.after == c.label]
    broken = [c for c in pair.changes if c.after != c.label]
    return "\n".join(
        [
            f'<section class="pair" id="pair-{index}">',
            f"<h3>Run {pair.before} → run {pair.after}</h3>",
            f'<p class="sentence"><b>{_e(pair.sentence)}</b></p>',
            _delta_table(pair, index),
            _changes(fixed, ctx, limit, "images fixed (wrong to right)", f"fixed-{index}"),
            _changes(broken, ctx, limit, "images broken (right to wrong)", f"broken-{index}"),
            "</section>",
        ]
    )


def _curve_section(curve: LearningCurve, plot: Path | None) -> str:
    rows = [
        [_num(s.fraction, 2), str(s.train_images), _num(s.mean), _num(s.std), _num(s.low),
         _num(s.high)]
        for s in sorted(curve.summary, key=lambda s: s.fraction)
    ]  # fmt: skip
    return "\n".join(
        [
            '<section id="learning-curve">',
            f"<h2>Learning curve of version {curve.version}</h2>",
            f'<p class="lead">On {_e(curve.test_description)}.</p>',
            f'<p class="sentence" id="curve-verdict"><b>{_e(curve.verdict)}</b></p>',
            _png(
                plot,
                f"learning curve of version {curve.version}",
                "learning-curve-plot",
                plots.curve_points(curve),
            )
            if plot is not None
            else "",
            _table(
                ["fraction", "training images", "mean accuracy", "std", "low", "high"],
                rows,
                id="curve-table",
                numeric=range(6),
            ),
            "</section>",
        ]
    )


def compare_report(
    comparison: Comparison,
    curve: LearningCurve | None,
    out: Path,
    context: RunContext | None = None,
    *,
    gallery_limit: int = GALLERY_LIMIT,
) -> ReportFiles:
    """Write the report of a comparison (and the learning curve, when there is one) to `out`, with
    its plots beside it. `context` finds the images for thumbnails (without it: names only)."""
    if not comparison.rows:
        raise InputError("the comparison has no runs to report.")
    # A plot of fewer than MIN_POINTS points says less than the table beside it: none is drawn
    # then (and none is left from an earlier page).
    written: dict[str, Path] = {}
    wanted: dict[str, tuple[int, Callable[[Path], Path]]] = {
        "accuracy_vs_images": (
            plots.comparison_points(comparison, "images"),
            lambda path: plots.accuracy_vs_images_plot(comparison, path),
        ),
        "accuracy_vs_time": (
            plots.comparison_points(comparison, "time"),
            lambda path: plots.accuracy_vs_time_plot(comparison, path),
        ),
    }
    if curve is not None:
        wanted["learning_curve"] = (
            plots.curve_points(curve),
            lambda path: plots.learning_curve_plot(curve, path),
        )
    for name, (points, draw) in wanted.items():
        if points >= plots.MIN_POINTS:
            written[name] = draw(_plot_path(out, name))
        else:
            _plot_path(out, name).unlink(missing_ok=True)
    runs = ", ".join(f"{r.run} (v{r.version})" for r in comparison.rows)
    title = f"Comparison of runs {runs}"
    test = comparison.test_set
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="lead" id="test-set">Every run judged on {_e(test.description)}.</p>',
    ]
    if comparison.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in comparison.warnings)
        body.append(
            f'<div class="warnings" id="warnings" role="alert"><h2>Warnings</h2><ul>{items}</ul>'
            "</div>"
        )
    body += [
        '<section id="table"><h2>Runs</h2>',
        _compare_table(comparison),
        "<h3>Accuracy per class on the common test images</h3>",
        _per_class_runs(comparison),
        "</section>",
    ]
    if comparison.pairs:
        body.append('<section id="pairs"><h2>Is the difference real?</h2>')
        body += [
            _pair_section(p, i, context, gallery_limit) for i, p in enumerate(comparison.pairs)
        ]
        body.append("</section>")
    shown = [
        _png(written[name], alt, id, wanted[name][0])
        for name, alt, id in (
            ("accuracy_vs_images", "accuracy against training images", "acc-images"),
            ("accuracy_vs_time", "accuracy against training time", "acc-time"),
        )
        if name in written
    ]
    if shown:
        body += [
            '<section id="plots"><h2>Accuracy against training images and time</h2>',
            *shown,
            "</section>",
        ]
    if curve is not None:
        body.append(_curve_section(curve, written.get("learning_curve")))
    return ReportFiles(html=_write(out, _page(title, body)), plots=written)
