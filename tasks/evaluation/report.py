"""The report of scored runs: what each run found (events, alarms per hour, timelines, thumbnails),
metrics where labels exist, the Pareto sweep, as Markdown and a self-contained HTML page.

    <root>/reports/<name>/metrics.parquet    micro/macro AUC, EER, AP of each run, small-only and routed
                                              (over the labelled videos only; NaN where none has labels)
    <root>/reports/<name>/alarms.parquet     events and events per hour of footage of each run
    <root>/reports/<name>/per_video.parquet  the per-video view (one-class videos marked undefined)
    <root>/reports/<name>/pareto.parquet     the whole budget sweep, when a run scored every clip with both models
    <root>/reports/<name>/*.png, report.md, report.html (its images embedded, so it stands alone)

Footage without labels (label -1, stored as null) gets everything but the metrics, the ROC and the
sweep; a mix is evaluated on its labelled videos, and the report names them. The folder is built
under a temporary name beside its final place and takes that place whole when complete
(`storage.atomic_folder`): a failed or interrupted build leaves the previous report as it was.
"""

from __future__ import annotations

import base64
import html
import math
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402
from vad.storage import ClipStore, atomic_folder, read_manifest, read_table, run_dir  # noqa: E402
from vad.tasks.inference.events import EventSettings, run_events  # noqa: E402
from vad.tasks.evaluation.metrics import Protocol, evaluate  # noqa: E402
from vad.tasks.evaluation.pareto import sweep  # noqa: E402
from vad.tasks.records import package_versions  # noqa: E402

from vad.errors import ParameterError, PipelineError  # noqa: E402

TIMELINE_VIDEOS = 12  # timelines of every video up to this many, else of this many with the highest peaks
TOP_EVENTS = 5  # thumbnail strips per run, the highest peaks first
STRIP_FRAMES = 5  # frames per strip, centred on the peak
GRID_COLUMNS = 3
PLOT_POINTS = 3000  # longer timelines are drawn as the maximum of each bin (a peak never disappears)


@dataclass(frozen=True)
class RunRef:
    dataset: str
    run_id: str
    sweep_run_id: str | None = None  # a run with every clip escalated, for the Pareto sweep


@dataclass
class _Run:
    """One run's tables and manifest, as the report reads them."""

    ref: RunRef
    frames: pd.DataFrame
    clips: pd.DataFrame
    manifest: dict[str, Any]
    events: pd.DataFrame
    threshold: float
    footage_s: float
    labelled: list[str] = field(default_factory=list)  # videos with at least one known label
    pareto: pd.DataFrame | None = None

    @property
    def videos(self) -> list[str]:
        return [str(v) for v in pd.unique(self.frames["video"])]

    @property
    def has_metrics(self) -> bool:
        """Labelled frames of both classes: AUC and the rest are defined."""
        known = self.frames["label"].dropna()
        return known.nunique() == 2


def read_headline(folder: str | Path) -> pd.DataFrame:
    """The headline metrics table of a built report."""
    return pd.read_parquet(Path(folder) / "metrics.parquet")


def _load(root: str | Path, ref: RunRef) -> _Run:
    frames = read_table(root, "frames", dataset=ref.dataset, run_id=ref.run_id)
    clips = read_table(root, "clips", dataset=ref.dataset, run_id=ref.run_id)
    manifest = read_manifest(root, ref.dataset, ref.run_id)
    recorded = manifest.get("events") or {}
    threshold = float(recorded.get("threshold", 0.95))
    folder = run_dir(root, "events", ref.dataset, ref.run_id)
    footage = recorded.get("footage_s")
    if folder.exists():
        events = pd.read_parquet(folder)
    else:  # a run scored before events were written: find them now with the default settings
        try:
            events, seconds = run_events(manifest["store"], frames, clips, threshold, EventSettings())
            footage = sum(seconds.values())
        except (PipelineError, KeyError, OSError):
            events, footage = pd.DataFrame(columns=["video", "event", "start_frame", "end_frame", "peak_frame", "peak_score"]), None
    labelled = sorted(str(v) for v in frames.loc[frames["label"].notna(), "video"].unique())
    return _Run(ref, frames, clips, manifest, events, threshold, float(footage) if footage else float("nan"), labelled)


def _metric_rows(run: _Run, protocol: Protocol) -> tuple[list[dict], pd.DataFrame]:
    rows, per_video = [], []
    for view, column in (("small only", "small_score"), ("routed", "score")):
        summary, videos = evaluate(run.frames, column, protocol)
        rows.append({"dataset": run.ref.dataset, "run": run.ref.run_id, "scores": view, **summary})
        per_video.append(videos.assign(dataset=run.ref.dataset, run=run.ref.run_id, scores=view))
    return rows, pd.concat(per_video, ignore_index=True)


# The protocol variants papers report (per-video min-max normalisation, temporal smoothing), added
# to every report as labelled extra rows so its figures can be set beside published ones; the
# headline stays on the report's own protocol (the standard one unless asked otherwise).
PAPER_VARIANTS = (Protocol(minmax=True), Protocol(smooth_sigma=5.0), Protocol(smooth_sigma=5.0, minmax=True))


def _variant_rows(run: _Run, protocol: Protocol) -> list[dict]:
    rows = []
    for variant in PAPER_VARIANTS:
        if variant == protocol:
            continue
        for view, column in (("small only", "small_score"), ("routed", "score")):
            summary, _ = evaluate(run.frames, column, variant)
            rows.append({"dataset": run.ref.dataset, "run": run.ref.run_id, "protocol": variant.label, "scores": view,
                         **{k: summary[k] for k in ("micro_auc", "micro_eer", "micro_ap", "macro_auc")}})
    return rows


def _alarm_row(run: _Run) -> dict[str, Any]:
    hours = run.footage_s / 3600
    return {"dataset": run.ref.dataset, "run": run.ref.run_id, "videos": len(run.videos), "labelled_videos": len(run.labelled),
            "footage_h": hours, "events": len(run.events), "events_per_hour": len(run.events) / hours if hours > 0 else float("nan"),
            "threshold": run.threshold}


# ---------------------------------------------------------------------------------------------- figures


def _save(fig: plt.Figure, path: Path, dpi: int = 100) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _plot_roc(path: Path, frames: pd.DataFrame, title: str) -> Path:
    known = frames[frames.label.notna()]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for view, column in (("small model only", "small_score"), ("routed", "score")):
        fpr, tpr, _ = roc_curve(known.label.astype(int), known[column])
        ax.plot(fpr, tpr, label=view)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    return _save(fig, path, 110)


def _plot_pareto(path: Path, table: pd.DataFrame, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    batch = table[table.policy == "batch"].sort_values("escalation_rate")
    ax.plot(batch.escalation_rate, batch.micro_auc, "-o", ms=3, label="routed (batch budget)")
    buckets = table[table.policy == "token bucket"]
    if len(buckets):
        ax.plot(buckets.escalation_rate, buckets.micro_auc, "s", label="routed (token bucket)")
    for policy, style in (("small only", "v"), ("large only", "^")):
        row = table[table.policy == policy]
        ax.plot(row.escalation_rate, row.micro_auc, style, ms=9, label=policy)
    front = table[table.pareto].sort_values("escalation_rate")
    ax.plot(front.escalation_rate, front.micro_auc, "o", mfc="none", mec="red", ms=9, label="Pareto front")
    ax.set(xlabel="escalation rate (large-model calls / clips)", ylabel="frame-level micro AUC", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path, 110)


def _binned_max(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most about PLOT_POINTS points: the maximum of each bin, at the bin's first x."""
    step = math.ceil(len(y) / PLOT_POINTS)
    if step <= 1:
        return x, y
    starts = np.arange(0, len(y), step)
    return x[starts], np.maximum.reduceat(y, starts)


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def timeline_videos(frames: pd.DataFrame, limit: int = TIMELINE_VIDEOS) -> tuple[list[str], bool]:
    """The videos whose timelines are drawn, in order, and whether they are only the top `limit` by peak score."""
    videos = [str(v) for v in pd.unique(frames["video"])]
    if len(videos) <= limit:
        return videos, False
    peaks = frames.groupby("video", observed=True)["score"].max().sort_values(ascending=False, kind="stable")
    return [str(v) for v in peaks.index[:limit]], True


def _plot_timelines(path: Path, run: _Run, videos: list[str]) -> Path:
    """One small plot per video in a grid: small-model and routed scores, the threshold, the events
    (shaded red), the labelled anomalous frames (an orange band) and the escalated clips (black ticks)."""
    cols = min(GRID_COLUMNS, len(videos))
    rows = math.ceil(len(videos) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.3 * rows), sharey=True, squeeze=False)
    frames = run.frames.sort_values(["video", "frame"], kind="stable")
    by_video = dict(tuple(frames.groupby("video", sort=False, observed=True)))
    for ax, vid in zip(axes.ravel(), videos):
        f = by_video[vid]
        x = f.frame.to_numpy()
        ax.plot(*_binned_max(x, f.small_score.to_numpy(float)), lw=0.8, color="0.55", label="small model")
        ax.plot(*_binned_max(x, f.score.to_numpy(float)), lw=1.2, color="tab:blue", label="routed (final)")
        ax.axhline(run.threshold, color="red", ls="--", lw=0.9, label=f"threshold {run.threshold:g}")
        for e in run.events[run.events.video == vid].itertuples():
            ax.axvspan(e.start_frame, e.end_frame + 1, color="red", alpha=0.15, lw=0)
        labels = f.label.to_numpy(dtype="float64", na_value=np.nan)
        for a, b in _spans(labels == 1):
            ax.axvspan(x[a], x[b] + 1, ymin=0, ymax=0.06, color="orange", lw=0)
        esc = run.clips[(run.clips.video == vid) & run.clips.escalated]
        if len(esc):
            ax.plot(esc.start_frame, np.full(len(esc), 1.04), "|", color="black", ms=4)
        tag = "" if np.isfinite(labels).any() else " (no labels)"
        ax.set_title(f"{vid}{tag}", fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(videos):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("calibrated score", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("frame", fontsize=8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / rows / 2.3))
    fig.savefig(path, dpi=95)
    plt.close(fig)
    return path


def strip_frames(peak: int, start: int, end: int, n_frames: int, count: int = STRIP_FRAMES) -> list[int]:
    """`count` frame numbers centred on the peak, spread over the event (at least one frame apart), inside the video."""
    step = max(1, (end - start + 1) // (count - 1)) if count > 1 else 1
    picks = [min(max(peak + k * step, 0), n_frames - 1) for k in range(-(count // 2), count - count // 2)]
    return list(dict.fromkeys(picks))


def _plot_thumbnails(path: Path, run: _Run, top: pd.DataFrame) -> Path | None:
    """One strip of frames around each top event's peak, read from the run's clip store; the box
    drawn where the event has one. None when the store no longer holds the videos."""
    try:
        store = ClipStore.open(run.manifest["store"])
    except Exception:  # noqa: BLE001 - no store (an archive run drops its frames): the report stands without
        return None
    strips = []
    for e in top.itertuples():
        try:
            video = store.video(e.video)
        except Exception:  # noqa: BLE001
            return None
        picks = strip_frames(int(e.peak_frame), int(e.start_frame), int(e.end_frame), video.n_frames)
        strips.append((e, picks, [np.asarray(video.read(i, i + 1))[0] for i in picks]))
    if not strips:
        return None
    cols = max(len(p) for _, p, _ in strips)
    fig, axes = plt.subplots(len(strips), cols, figsize=(1.9 * cols, 1.7 * len(strips)), squeeze=False)
    for r, (e, picks, images) in enumerate(strips):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(images):
                continue
            img = images[c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
            peak = picks[c] == int(e.peak_frame)
            ax.set_title(f"frame {picks[c]}" + (" (peak)" if peak else ""), fontsize=7, color="red" if peak else "black")
            box = [getattr(e, k, None) for k in ("x0", "y0", "x1", "y1")]
            if peak and all(v is not None and not pd.isna(v) for v in box):
                x0, y0, x1, y1 = (float(v) for v in box)
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", lw=1.2))
        axes[r, 0].text(-0.05, 0.5, f"{e.video}\n{e.start_s:.1f}-{e.end_s:.1f} s\npeak {e.peak_score:.3f}", fontsize=7,
                        ha="right", va="center", transform=axes[r, 0].transAxes)
    return _save(fig, path, 90)


# ---------------------------------------------------------------------------------------------- text


def _choice_rows(m: dict[str, Any]) -> pd.DataFrame | None:
    """The run's models' validation tables (`choices.selection_rows`); None when neither recorded one."""
    from vad.tasks.evaluation.choices import selection_rows
    from vad.tasks.runtime.checkpoint import load_checkpoint

    rows = []
    for role in ("small", "large"):
        try:
            rows += selection_rows(load_checkpoint(m[role]["path"])) if m.get(role) else []
        except Exception:  # a moved or deleted checkpoint: the report still stands without its table
            continue
    return pd.DataFrame(rows).assign(chosen=lambda t: t.chosen.map({True: "*", False: ""})) if rows else None


def _parameters(checkpoint_path: str) -> str:
    from vad.tasks.runtime.checkpoint import load_checkpoint

    try:
        return f"{load_checkpoint(checkpoint_path).training.get('parameters', 0):,}"
    except Exception:  # a moved or deleted checkpoint: the report still stands without the count
        return "unknown"


def _md_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def setting_lines(record: Any, prefix: str = "") -> list[str]:
    """A nested settings record as `key: value` lines (nested keys joined with dots)."""
    if isinstance(record, dict):
        return [line for k, v in record.items() for line in setting_lines(v, f"{prefix}{k}.")]
    if isinstance(record, (list, tuple)):
        value = ", ".join(str(v) for v in record) or "none"
    elif isinstance(record, float):
        value = f"{record:.4g}"
    else:
        value = "none" if record is None else str(record)
    return [f"{prefix.rstrip('.')}: {value}"]


def _models(m: dict[str, Any]) -> str:
    return ", ".join(f"{role} {m[role]['arch']}" for role in ("small", "large") if m.get(role)) or "models not recorded"


def _budget_text(budget: dict[str, Any]) -> str:
    if budget.get("policy") == "token-bucket":
        return f"a token bucket (capacity {budget['capacity']:g}, refill {budget['refill']:g} per clip)"
    return f"{budget.get('fraction', 0):.0%}"


def routing_sentence(small_auc: float, routed_auc: float, m: dict[str, Any], *, large_auc: float | None = None,
                     large_all_s: float | None = None) -> str:
    """What routing did, in one sentence from the run's numbers, e.g. "routing at 20% raised micro AUC
    from 0.910 to 0.954 at 0.28 of the large model's time". The large model's time is that of a
    large-only pass (the budget-1 run's pass 2 when given, else this run's pass 2 scaled up to every clip)."""
    seconds = m.get("seconds") or {}
    rate = float(m.get("escalation_rate", 0.0))
    if large_all_s is None and rate > 0:
        large_all_s = seconds.get("pass2", 0.0) / rate
    verb = "raised" if routed_auc > small_auc else "lowered" if routed_auc < small_auc else "left"
    change = f"{verb} micro AUC from {small_auc:.3f} to {routed_auc:.3f}" if verb != "left" else f"left micro AUC at {small_auc:.3f}"
    text = f"routing at {_budget_text(m.get('budget') or {})} ({rate:.1%} of clips escalated) {change}"
    spent = seconds.get("pass1", 0.0) + seconds.get("routing", 0.0) + seconds.get("pass2", 0.0)
    if large_all_s:
        text += f" at {spent / large_all_s:.2f} of the large model's time"
    if large_auc is not None and np.isfinite(large_auc):
        text += f" (the large model alone: {large_auc:.3f})"
    return text + "."


def trim_pareto(table: pd.DataFrame, asked: list[float]) -> pd.DataFrame:
    """The rows a reader needs: both baselines, the Pareto front and the budgets asked for."""
    batch = table.policy == "batch"
    keep = table.pareto | table.policy.isin(["small only", "large only"])
    keep |= batch & table.setting.astype(str).isin([f"{b:g}" for b in asked])
    return table[keep]


def _report_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class _Document:
    """The Markdown and HTML of the report side by side; figures are linked from the Markdown and
    embedded (base64) in the HTML, so report.html stands alone."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def lines(self, lines: list[str]) -> None:
        self.md += ["```", *lines, "```", ""]
        self.html.append("<pre>" + html.escape("\n".join(lines)) + "</pre>")

    def table(self, frame: pd.DataFrame, na: str = "") -> None:
        self.md += [_md_table(frame), ""]
        self.html.append(frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep=na or "NaN"))

    def figure(self, path: Path | None, alt: str) -> None:
        if path is None:
            return
        self.md.append(f"![{alt}]({path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def write(self, folder: Path, title: str) -> None:
        (folder / "report.md").write_text("\n".join(self.md))
        (folder / "report.html").write_text(
            f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1300px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
            "pre{background:#f6f6f6;padding:6px;font-size:12px}</style>\n" + "\n".join(self.html))


# The packages that compute the report's own figures (metrics, the sweep, the tables).
REPORT_PACKAGES = ("video-anomaly-router", "numpy", "pandas", "scikit-learn", "scipy", "pyarrow")


def _versions_text(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items()) or "not recorded"


def _environment(runs: list[_Run]) -> list[str]:
    """Lines of the report's environment section: the versions each run recorded in its run.json
    (runs with the same set share a line) and those this report was computed with."""
    by_set: dict[str, list[str]] = {}
    for r in runs:
        text = _versions_text(dict(r.manifest.get("versions") or {}))
        by_set.setdefault(text, []).append(f"{r.ref.dataset} run {r.ref.run_id}")
    here = package_versions(REPORT_PACKAGES)
    lines = [f"Scored with {text} ({', '.join(names)})." for text, names in by_set.items()]
    lines.append(f"Report computed with Python {platform.python_version()} on {platform.system()} {platform.machine()}; "
                 f"{_versions_text(here)}.")
    lines.append("The README's figures come from the versions pinned in constraints.txt; other versions can give other figures.")
    return lines


HEADLINE = ["dataset", "run", "scores", "micro_auc", "micro_eer", "micro_ap", "macro_auc", "videos_defined", "videos"]
SETTING_KEYS = ("budget", "router", "frame_mode", "fusion", "clip_len", "stride", "events", "compute")


def build_report(root: str | Path, refs: list[RunRef], *, name: str, protocol: Protocol = Protocol(), overwrite: bool = True) -> Path:
    """Write the report of the given runs to `<root>/reports/<name>/` and return that folder."""
    if not refs:
        raise ParameterError("a report needs at least one scored run")
    final = Path(root) / "reports" / name
    if final.exists() and not overwrite:
        raise ParameterError(f"report {final} exists")
    with atomic_folder(final, purpose=f"build report {name!r}") as tmp:
        runs, metrics, per_video, variants, pareto = [], [], [], [], []
        for ref in refs:
            run = _load(root, ref)
            rows, videos = _metric_rows(run, protocol)
            metrics += rows
            per_video.append(videos)
            variants += _variant_rows(run, protocol)
            if ref.sweep_run_id and run.has_metrics:
                # the run's own folder: a read across runs keeps only the columns of one of them
                s_frames, s_clips = (pd.read_parquet(run_dir(root, t, ref.dataset, ref.sweep_run_id)) for t in ("frames", "clips"))
                s_manifest = read_manifest(root, ref.dataset, ref.sweep_run_id)
                table = sweep(s_clips, s_frames, clip_len=int(s_manifest["clip_len"]), buckets=[(3, 0.1), (3, 0.2), (5, 0.2)],
                              protocol=protocol, frame_mode=s_manifest.get("frame_mode", "clip"),
                              fusion=run.manifest.get("fusion", "replace"))  # replayed with the rule the run used
                table.insert(0, "dataset", ref.dataset)
                table.insert(1, "run", ref.run_id)
                pareto.append(table)
                run.pareto = table
                run.manifest = {**run.manifest, "_sweep": s_manifest}
            runs.append(run)
        metrics_df = pd.DataFrame(metrics)
        per_video_df = pd.concat(per_video, ignore_index=True)
        variants_df = pd.DataFrame(variants)
        alarms = pd.DataFrame([_alarm_row(r) for r in runs])
        metrics_df.to_parquet(tmp / "metrics.parquet", index=False)
        variants_df.to_parquet(tmp / "variants.parquet", index=False)
        per_video_df.to_parquet(tmp / "per_video.parquet", index=False)
        alarms.to_parquet(tmp / "alarms.parquet", index=False)
        if pareto:
            pd.concat(pareto, ignore_index=True).to_parquet(tmp / "pareto.parquet", index=False)
        _write_documents(tmp, runs, metrics_df, per_video_df, variants_df, alarms, protocol)
    return final


def _title(runs: list[_Run]) -> str:
    parts = [f"{r.ref.dataset} run {r.ref.run_id} ({_models(r.manifest)})" for r in runs]
    return f"Video anomaly report: {'; '.join(parts)}; {_report_date()}"


def _write_documents(folder: Path, runs: list[_Run], metrics: pd.DataFrame, per_video: pd.DataFrame, variants: pd.DataFrame,
                     alarms: pd.DataFrame, protocol: Protocol) -> None:
    doc = _Document()
    title = _title(runs)
    doc.heading(1, title)
    doc.heading(2, "Headline: alarms per hour of footage")
    doc.para("Events are runs of frames whose final (routed) calibrated score is above the shipped threshold (the "
             "calibration quantile of the small model's normal clips), after the run's merge gap and minimum duration.")
    for row in alarms.itertuples():
        doc.para(f"{row.dataset} run {row.run}: {row.events} events in {row.footage_h:.2f} h of footage, "
                 f"{row.events_per_hour:.1f} alarms per hour at the shipped threshold {row.threshold:.2f}.")
    doc.table(alarms)
    labelled = [r for r in runs if r.has_metrics]
    if labelled:
        doc.heading(2, "Headline: detection metrics (labelled videos only)")
        doc.para(f"Frame-level metrics; protocol: {protocol.label}. Micro: all labelled frames pooled; macro: mean over "
                 "videos with both classes; per video: one-class videos are undefined (listed, not dropped).")
        for r in runs:
            unlabelled = sorted(set(r.videos) - set(r.labelled))
            which = "all videos" if not unlabelled else (f"{len(r.labelled)} of {len(r.videos)} videos ("
                                                         f"{', '.join(r.labelled) or 'none'}); no labels: {', '.join(unlabelled)}")
            doc.para(f"{r.ref.dataset} run {r.ref.run_id}: labels for {which}.")
        doc.table(metrics[HEADLINE][metrics.dataset.isin({r.ref.dataset for r in labelled})])
    else:
        doc.para("No video has labels (of both classes): no detection metrics, ROC or cost-quality curve; "
                 "the timelines and events below are what the models found.")
    for r in runs:
        _run_section(doc, folder, r, metrics, per_video)
    if labelled and len(variants):
        doc.heading(2, "Protocol variants (labelled, not the headline)")
        doc.para("Not the standard protocol: the normalisation and smoothing many papers apply, computed on the same "
                 "scores so that these figures can be set beside published ones. Per-video min-max uses each test "
                 "video's own score range, which a deployment does not know in advance.")
        doc.table(variants)
    doc.heading(2, "Environment")
    doc.lines(_environment(runs))
    doc.write(folder, title)


def _run_section(doc: _Document, folder: Path, r: _Run, metrics: pd.DataFrame, per_video: pd.DataFrame) -> None:
    ref, m = r.ref, r.manifest
    stem = f"{ref.dataset}-{ref.run_id}"
    doc.heading(2, f"{ref.dataset}, run {ref.run_id}: {_models(m)}")
    mine = metrics_of(per_video, ref)
    if r.has_metrics and len(mine):
        auc = metrics[(metrics.dataset == ref.dataset) & (metrics.run == ref.run_id)].set_index("scores")["micro_auc"]
        small_auc, routed_auc = float(auc["small only"]), float(auc["routed"])
        large_auc = large_s = None
        if r.pareto is not None:
            large_auc = float(r.pareto.loc[r.pareto.policy == "large only", "micro_auc"].iloc[0])
            large_s = (m["_sweep"].get("seconds") or {}).get("pass2") or None
        doc.para(routing_sentence(small_auc, routed_auc, m, large_auc=large_auc, large_all_s=large_s))
    params = "; ".join(f"{role} {m[role]['arch']}: {_parameters(m[role]['path'])} trainable parameters"
                       for role in ("small", "large") if m.get(role))
    doc.para(f"{params}. {m.get('escalated', 0)} of {m.get('clips', 0)} clips escalated; large-model calls "
             f"{m.get('large_calls', 0)}; {len(r.events)} event{'' if len(r.events) == 1 else 's'} in {r.footage_s / 60:.1f} minutes of footage.")
    doc.heading(3, "Settings")
    settings = {k: m[k] for k in SETTING_KEYS if k in m}
    if "events" in settings:  # the settings, not what the run found
        settings["events"] = {k: v for k, v in settings["events"].items() if k in ("min_event_s", "merge_gap_s", "threshold")}
    settings["seconds_per_1000_frames"] = m.get("seconds_per_1000_frames", {})
    doc.lines(setting_lines(settings))
    choices = _choice_rows(m)
    if choices is not None:
        doc.heading(3, "Choices on validation")
        doc.para("Chosen at training on a validation set made from this camera's own normal videos (synthetic anomalies; "
                 "no test label): micro AUC with a 95% bootstrap interval over videos; `vad validate` prints the same.")
        doc.table(choices)
    videos, top = timeline_videos(r.frames)
    doc.heading(3, "Timelines")
    note = (f"the {len(videos)} of {len(r.videos)} videos with the highest peak score" if top else f"every video ({len(videos)})")
    doc.para(f"Scores of {note}: the small model (grey) and the final routed score (blue), the threshold (dashed), events "
             "(shaded red), labelled anomalous frames (orange band at the bottom) and escalated clips (ticks at the top).")
    doc.figure(_plot_timelines(folder / f"timelines-{stem}.png", r, videos), "timelines")
    doc.heading(3, "Top events")
    events = r.events.sort_values("peak_score", ascending=False, kind="stable").head(TOP_EVENTS)
    if events.empty:
        doc.para("No event: no frame stayed above the threshold long enough.")
    else:
        shown = [c for c in ("video", "event", "start_s", "end_s", "start_frame", "end_frame", "peak_frame", "peak_score",
                             "mean_score", "escalated_share") if c in events]
        doc.table(events[shown])
        strips = _plot_thumbnails(folder / f"events-{stem}.png", r, events)
        if strips is None:
            doc.para("No thumbnails: the run's clip store no longer holds these videos.")
        doc.figure(strips, "frames around each top event's peak")
    if r.has_metrics:
        doc.heading(3, "ROC and per-video metrics")
        doc.figure(_plot_roc(folder / f"roc-{stem}.png", r.frames, f"{ref.dataset}: ROC"), "ROC")
        doc.table(mine, na="undefined")
    if r.pareto is not None:
        doc.heading(3, "Cost against quality")
        asked = [float(m["budget"]["fraction"])] if (m.get("budget") or {}).get("policy") == "batch" else []
        doc.para(f"Simulated offline from run {ref.sweep_run_id}, which scored every clip with both models (the routing and "
                 "frame assembly of a real run, replayed); the table shows the baselines, the Pareto front and the budget "
                 "asked for; pareto.parquet holds every budget.")
        doc.figure(_plot_pareto(folder / f"pareto-{ref.dataset}.png", r.pareto, f"{ref.dataset}: cost against quality"), "Pareto")
        doc.table(trim_pareto(r.pareto, asked).drop(columns=["dataset", "run", "protocol"]))


def metrics_of(per_video: pd.DataFrame, ref: RunRef) -> pd.DataFrame:
    """The per-video metrics of one run, labelled videos only, one row per video with both views side by side."""
    mine = per_video[(per_video.dataset == ref.dataset) & (per_video.run == ref.run_id) & (per_video.frames > 0)]
    if mine.empty:
        return mine
    # unstack, not pivot_table(dropna=False): that one crosses every index level's values (videos x frame counts)
    wide = mine.set_index(["video", "frames", "anomalous_frames", "defined", "scores"])[["auc", "ap"]].unstack("scores")
    wide.columns = [f"{metric} ({view})" for metric, view in wide.columns]
    return wide.reset_index()
