"""Evaluation plots (ROC, reliability diagram, NE by day, metric by slice) and a Markdown / HTML report.

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas directly (no pyplot global state, no
display needed), so they are safe in worker processes and threads. Input is the report dict of
:meth:`recpipe.metrics.report.EvalAccumulator.report` and the blessing of :func:`recpipe.metrics.gate.decide`.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FIGSIZE = (5.5, 4.0)
DPI = 100
REPORT_METRICS = ("auc", "ne", "logloss", "calibration", "mean_pred", "label_rate", "count")


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def roc_figure(curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """ROC curve of every model that has one (``curves[model]["roc"]`` with fpr / tpr lists)."""
    fig, ax = _figure()
    for model, c in curves.items():
        if "roc" in c:
            ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=model)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return fig


def calibration_figure(curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Reliability diagram: observed label rate vs mean prediction per bin, log-log (CTRs span decades)."""
    fig, ax = _figure()
    lo = 1.0
    for model, c in curves.items():
        cal = c.get("calibration")
        if not cal:
            continue
        pts = [(p, r) for p, r in zip(cal["mean_pred"], cal["label_rate"]) if p > 0 and r > 0]
        if pts:
            ax.plot([p for p, _ in pts], [r for _, r in pts], marker="o", label=model)
            lo = min(lo, *(v for pt in pts for v in pt))
    lo = max(lo / 2, 1e-6)
    ax.plot([lo, 1], [lo, 1], linestyle=":", color="grey", label="perfect")
    ax.set(xscale="log", yscale="log", xlabel="mean prediction", ylabel="observed label rate",
           title="calibration (reliability)")
    ax.legend(loc="upper left")
    return fig


def _slice_series(report: Mapping[str, Any], model: str, dim: str, metric: str
                  ) -> tuple[list[str], list[float], list[tuple[float, float] | None]]:
    values = report["metrics"][model]["slices"].get(dim, {})
    ivs = ((report.get("intervals") or {}).get("slices") or {}).get(dim, {})
    names, ys, errs = [], [], []
    for v, summ in values.items():
        names.append(v)
        ys.append(summ.get(metric, math.nan))
        iv = (ivs.get(v) or {}).get(model, {}).get(metric)
        errs.append((iv["low"], iv["high"]) if iv and not math.isnan(iv["low"]) else None)
    return names, ys, errs


def metric_by_day_figure(report: Mapping[str, Any], metric: str = "ne", dim: str = "day") -> Figure:
    """``metric`` per day for every model, days in calendar order, bootstrap intervals as error bars."""
    fig, ax = _figure()
    for model in report["models"]:
        names, ys, errs = _slice_series(report, model, dim, metric)
        order = sorted(range(len(names)), key=lambda i: names[i])
        xs = [names[i] for i in order]
        y = [ys[i] for i in order]
        lo = [y[j] - errs[i][0] if errs[i] else 0.0 for j, i in enumerate(order)]
        hi = [errs[i][1] - y[j] if errs[i] else 0.0 for j, i in enumerate(order)]
        ax.errorbar(xs, y, yerr=[lo, hi], marker="o", capsize=3, label=model)
    ax.set(xlabel=dim, ylabel=metric, title=f"{metric} by {dim}")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    fig.tight_layout()
    return fig


def metric_history_figure(history: Sequence[Mapping[str, Any]], metric: str = "eval/ne",
                          series: Mapping[str, str] | None = None) -> Figure:
    """``metric`` of the served model across evaluation runs (oldest first), one point per run at its last
    evaluated day — NE by day over the last N daily runs, not only the days this run scored.

    Args:
        history: rows as :func:`recpipe.tracking.registry.evaluation_history` returns them (the current run
            appended last), each with ``days`` and ``metrics``.
        metric: key in every row's ``metrics``.
        series: optional extra lines, legend label → metric key (e.g. ``{"champion": "eval/champion/ne"}``);
            runs lacking that key are skipped for that line.
    """
    fig, ax = _figure()
    lines = {"challenger": metric, **(series or {})}
    for label, key in lines.items():
        pts = [(row["days"][-1] if row.get("days") else str(i), row["metrics"][key])
               for i, row in enumerate(history) if key in row.get("metrics", {})]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
    short = metric.split("/")[-1]
    ax.set(xlabel="last evaluated day of the run", ylabel=short, title=f"{short} over the last {len(history)} runs")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    fig.tight_layout()
    return fig


def metric_by_slice_figure(report: Mapping[str, Any], dim: str, metric: str = "auc") -> Figure:
    """Grouped horizontal bars: ``metric`` per reported slice of ``dim`` for every model, with intervals."""
    fig, ax = _figure()
    models = list(report["models"])
    height = 0.8 / max(len(models), 1)
    names: list[str] = []
    for k, model in enumerate(models):
        names, ys, errs = _slice_series(report, model, dim, metric)
        pos = [i + k * height for i in range(len(names))]
        xerr = [[y - e[0] if e else 0.0 for y, e in zip(ys, errs)], [e[1] - y if e else 0.0 for y, e in zip(ys, errs)]]
        ax.barh(pos, ys, height=height, xerr=xerr, capsize=2, label=model)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.set(xlabel=metric, ylabel=dim, title=f"{metric} by {dim}")
    ax.legend()
    fig.tight_layout()
    return fig


def evaluation_figures(report: Mapping[str, Any]) -> dict[str, Figure]:
    """Every standard figure for a report, keyed by artifact file name."""
    figs = {"roc.png": roc_figure(report["curves"]), "calibration.png": calibration_figure(report["curves"])}
    first = report["models"][0]
    for dim in report["metrics"][first]["slices"]:
        if dim == "day":
            figs["ne_by_day.png"] = metric_by_day_figure(report, "ne", dim)
        else:
            figs[f"auc_by_{dim}.png"] = metric_by_slice_figure(report, dim, "auc")
    return figs


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.0f}" if v.is_integer() and abs(v) >= 100 else f"{v:.5g}")
    return str(v)


def _metric_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", *REPORT_METRICS]
    overall = (report.get("intervals") or {}).get("overall") or {}
    rows = []
    for m in report["models"]:
        cells = [m]
        for k in REPORT_METRICS:
            v = report["metrics"][m]["overall"].get(k, math.nan)
            iv = (overall.get(m) or {}).get(k)
            cells.append(_fmt(v) + (f" [{_fmt(iv['low'])}, {_fmt(iv['high'])}]" if iv else ""))
        rows.append(cells)
    for m, deltas in (overall.get("delta") or {}).items():
        cells = [f"Δ {m} − {report.get('baseline')}"]
        for k in REPORT_METRICS:
            iv = deltas.get(k)
            cells.append(f"{iv['estimate']:+.5g} [{iv['low']:+.5g}, {iv['high']:+.5g}]" if iv else "")
        rows.append(cells)
    return header, rows


def report_markdown(report: Mapping[str, Any], blessing: Mapping[str, Any] | None = None) -> str:
    """A Markdown summary: gate decision and reasons, overall metrics with intervals and deltas, slices."""
    lines = ["# Evaluation report", "", f"Rows evaluated: {report['rows']}", ""]
    if blessing is not None:
        lines += [f"## Gate: **{blessing['decision'].upper()}** ({blessing['rule']})", ""]
        lines += [f"- {r}" for r in blessing["reasons"]] or ["- all checks passed"]
        lines.append("")
    header, rows = _metric_rows(report)
    lines += ["## Overall", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    first = report["models"][0]
    for dim, values in report["metrics"][first]["slices"].items():
        lines += ["", f"## By {dim}", "", "| model | " + dim + " | auc | ne | calibration | count |",
                  "|---|---|---|---|---|---|"]
        for m in report["models"]:
            for v, s in report["metrics"][m]["slices"][dim].items():
                lines.append(f"| {m} | {v} | {_fmt(s['auc'])} | {_fmt(s['ne'])} | {_fmt(s['calibration'])} | "
                             f"{_fmt(s['count'])} |")
    return "\n".join(lines) + "\n"


def report_html(report: Mapping[str, Any], blessing: Mapping[str, Any] | None = None,
                images: Mapping[str, bytes | Figure] | None = None) -> str:
    """A self-contained HTML page for KFP's HTML artifact viewer.

    Args:
        report: the evaluation report.
        blessing: the gate decision, shown on top when given.
        images: name → PNG bytes (or a Figure, rendered here), inlined as base64 ``<img>``.
    """
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>",
             "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px}.pass{color:green}.fail{color:#b00}</style></head><body>",
             f"<h1>Evaluation report</h1><p>Rows evaluated: {report['rows']}</p>"]
    if blessing is not None:
        cls = "pass" if blessing["blessed"] else "fail"
        parts.append(f"<h2 class='{cls}'>Gate: {esc(blessing['decision'].upper())} ({esc(blessing['rule'])})</h2>")
        parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in blessing["reasons"]) + "</ul>")
    header, rows = _metric_rows(report)
    parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    parts.append("</table>")
    for name, img in (images or {}).items():
        data = base64.b64encode(img if isinstance(img, bytes) else figure_png(img)).decode("ascii")
        parts.append(f"<h3>{esc(name)}</h3><img alt='{esc(name)}' src='data:image/png;base64,{data}'/>")
    parts.append("</body></html>")
    return "\n".join(parts)
