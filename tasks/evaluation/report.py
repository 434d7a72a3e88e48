"""The report of scored runs: metric tables, the Pareto sweep, PNG plots, Markdown and HTML.

    <root>/reports/<name>/metrics.parquet    micro/macro AUC, EER, AP of each run, small-only and routed
    <root>/reports/<name>/per_video.parquet  the per-video view (one-class videos marked undefined)
    <root>/reports/<name>/pareto.parquet     the budget sweep, when a run scored every clip with both models
    <root>/reports/<name>/*.png, report.md, report.html

The folder is built under a temporary name beside its final place and takes that place whole when
complete (`storage.atomic_folder`): a failed or interrupted build leaves the previous report as it was.
"""

from __future__ import annotations

import html
import platform
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402
from vad.storage import atomic_folder, read_manifest, read_table  # noqa: E402
from vad.tasks.evaluation.metrics import Protocol, evaluate  # noqa: E402
from vad.tasks.evaluation.pareto import sweep  # noqa: E402
from vad.tasks.records import package_versions  # noqa: E402

from vad.errors import ParameterError  # noqa: E402


@dataclass(frozen=True)
class RunRef:
    dataset: str
    run_id: str
    sweep_run_id: str | None = None  # a run with every clip escalated, for the Pareto sweep


def _metric_rows(ref: RunRef, frames: pd.DataFrame, protocol: Protocol) -> tuple[list[dict], pd.DataFrame]:
    rows, per_video = [], []
    for view, column in (("small only", "small_score"), ("routed", "score")):
        summary, videos = evaluate(frames, column, protocol)
        rows.append({"dataset": ref.dataset, "run": ref.run_id, "scores": view, **summary})
        per_video.append(videos.assign(dataset=ref.dataset, run=ref.run_id, scores=view))
    return rows, pd.concat(per_video, ignore_index=True)


# The protocol variants papers report (per-video min-max normalisation, temporal smoothing), added
# to every report as labelled extra rows so its figures can be set beside published ones; the
# headline stays on the report's own protocol (the standard one unless asked otherwise).
PAPER_VARIANTS = (Protocol(minmax=True), Protocol(smooth_sigma=5.0), Protocol(smooth_sigma=5.0, minmax=True))


def _variant_rows(ref: RunRef, frames: pd.DataFrame, protocol: Protocol) -> list[dict]:
    rows = []
    for variant in PAPER_VARIANTS:
        if variant == protocol:
            continue
        for view, column in (("small only", "small_score"), ("routed", "score")):
            summary, _ = evaluate(frames, column, variant)
            rows.append({"dataset": ref.dataset, "run": ref.run_id, "protocol": variant.label, "scores": view,
                         **{k: summary[k] for k in ("micro_auc", "micro_eer", "micro_ap", "macro_auc")}})
    return rows


def _plot_roc(path: Path, frames: pd.DataFrame, title: str) -> None:
    known = frames[frames.label.notna()]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for view, column in (("small only", "small_score"), ("routed", "score")):
        fpr, tpr, _ = roc_curve(known.label.astype(int), known[column])
        ax.plot(fpr, tpr, label=view)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pareto(path: Path, table: pd.DataFrame, title: str) -> None:
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_timelines(path: Path, frames: pd.DataFrame, clips: pd.DataFrame, title: str, max_videos: int = 6) -> None:
    videos = list(pd.unique(frames.video))[:max_videos]
    fig, axes = plt.subplots(len(videos), 1, figsize=(8, 1.6 * len(videos)), sharey=True, squeeze=False)
    for ax, vid in zip(axes[:, 0], videos):
        f = frames[frames.video == vid]
        lab = f.label.fillna(0).astype(int).to_numpy()
        for start in np.flatnonzero(np.diff(np.r_[0, lab]) == 1):
            stop = start + np.argmax(np.r_[lab[start:], 0] == 0)
            ax.axvspan(start, stop, color="orange", alpha=0.3, lw=0)
        ax.plot(f.frame, f.small_score, lw=0.8, color="grey", label="small only")
        ax.plot(f.frame, f.score, lw=1.2, label="routed")
        for _, c in clips[(clips.video == vid) & clips.escalated].iterrows():
            ax.plot([c.start_frame, c.end_frame - 1], [1.03, 1.03], color="red", lw=2)
        ax.set_ylabel(str(vid), fontsize=8)
        ax.set_ylim(0, 1.08)
    axes[0, 0].set_title(f"{title}: scores (anomalous frames shaded, escalated clips in red)", fontsize=9)
    axes[-1, 0].set_xlabel("frame")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parameters(checkpoint_path: str) -> str:
    from vad.tasks.learning.checkpoint import load_checkpoint

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


# The packages that compute the report's own figures (metrics, the sweep, the tables).
REPORT_PACKAGES = ("video-anomaly-router", "numpy", "pandas", "scikit-learn", "scipy", "pyarrow")


def _versions_text(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items()) or "not recorded"


def _environment(sections: list[dict]) -> list[str]:
    """Lines of the report's environment section: the versions each run recorded in its run.json
    (runs with the same set share a line) and those this report was computed with."""
    by_set: dict[str, list[str]] = {}
    for s in sections:
        text = _versions_text(dict(s["manifest"].get("versions") or {}))
        by_set.setdefault(text, []).append(f"{s['ref'].dataset} run {s['ref'].run_id}")
    here = package_versions(REPORT_PACKAGES)
    lines = [f"Scored with {text} ({', '.join(runs)})." for text, runs in by_set.items()]
    lines.append(f"Report computed with Python {platform.python_version()} on {platform.system()} {platform.machine()}; "
                 f"{_versions_text(here)}.")
    lines.append("The README's figures come from the versions pinned in constraints.txt; other versions can give other figures.")
    return lines


HEADLINE = ["dataset", "run", "scores", "micro_auc", "micro_eer", "micro_ap", "macro_auc", "videos_defined", "videos"]


def build_report(root: str | Path, refs: list[RunRef], *, name: str, protocol: Protocol = Protocol(), overwrite: bool = True) -> Path:
    """Write the report of the given runs to `<root>/reports/<name>/` and return that folder."""
    if not refs:
        raise ParameterError("a report needs at least one scored run")
    final = Path(root) / "reports" / name
    if final.exists() and not overwrite:
        raise ParameterError(f"report {final} exists")
    with atomic_folder(final, purpose=f"build report {name!r}") as tmp:
        metrics, per_video, pareto, sections, variants = [], [], [], [], []
        for ref in refs:
            frames = read_table(root, "frames", dataset=ref.dataset, run_id=ref.run_id)
            clips = read_table(root, "clips", dataset=ref.dataset, run_id=ref.run_id)
            manifest = read_manifest(root, ref.dataset, ref.run_id)
            rows, videos = _metric_rows(ref, frames, protocol)
            metrics += rows
            variants += _variant_rows(ref, frames, protocol)
            per_video.append(videos)
            stem = f"{ref.dataset}-{ref.run_id}"
            _plot_roc(tmp / f"roc-{stem}.png", frames, f"{ref.dataset}: ROC ({ref.run_id})")
            _plot_timelines(tmp / f"timelines-{stem}.png", frames, clips, ref.dataset)
            section = {"ref": ref, "manifest": manifest, "stem": stem, "pareto": None}
            if ref.sweep_run_id:
                s_frames = read_table(root, "frames", dataset=ref.dataset, run_id=ref.sweep_run_id)
                s_clips = read_table(root, "clips", dataset=ref.dataset, run_id=ref.sweep_run_id)
                table = sweep(s_clips, s_frames, clip_len=int(manifest["clip_len"]),
                              buckets=[(3, 0.1), (3, 0.2), (5, 0.2)], protocol=protocol)
                table.insert(0, "dataset", ref.dataset)
                pareto.append(table)
                _plot_pareto(tmp / f"pareto-{ref.dataset}.png", table, f"{ref.dataset}: cost against quality")
                section["pareto"] = table
            sections.append(section)
        metrics_df = pd.DataFrame(metrics)
        per_video_df = pd.concat(per_video, ignore_index=True)
        metrics_df.to_parquet(tmp / "metrics.parquet", index=False)
        variants_df = pd.DataFrame(variants)
        variants_df.to_parquet(tmp / "variants.parquet", index=False)
        per_video_df.to_parquet(tmp / "per_video.parquet", index=False)
        if pareto:
            pd.concat(pareto, ignore_index=True).to_parquet(tmp / "pareto.parquet", index=False)
        _write_documents(tmp, metrics_df, per_video_df, sections, protocol, variants_df)
    return final


def _write_documents(folder: Path, metrics: pd.DataFrame, per_video: pd.DataFrame, sections: list[dict], protocol: Protocol,
                     variants: pd.DataFrame) -> None:
    headline = metrics[HEADLINE]
    note = ("Not the standard protocol: the normalisation and smoothing many papers apply, computed on the same "
            "scores so that these figures can be set beside published ones. Per-video min-max uses each test "
            "video's own score range, which a deployment does not know in advance.")
    md = [f"# Report\n\nFrame-level metrics; protocol: **{protocol.label}**. Micro: all labelled frames pooled; "
          "macro: mean over videos with both classes; per video: one-class videos are undefined (listed, not dropped).\n",
          "## Headline\n", _md_table(headline), "", "## Protocol variants (labelled, not the headline)\n", note + "\n",
          _md_table(variants) if len(variants) else "none", ""]
    body = [f"<h1>Report</h1><p>Frame-level metrics; protocol: <b>{html.escape(protocol.label)}</b>.</p>",
            "<h2>Headline</h2>", headline.to_html(index=False, float_format=lambda v: f"{v:.3f}"),
            "<h2>Protocol variants (labelled, not the headline)</h2>", f"<p>{html.escape(note)}</p>",
            variants.to_html(index=False, float_format=lambda v: f"{v:.3f}")]
    for s in sections:
        ref, m = s["ref"], s["manifest"]
        title = f"{ref.dataset}, run {ref.run_id}"
        params = "; ".join(f"{role} {m[role]['arch']}: {_parameters(m[role]['path'])} trainable parameters"
                           for role in ("small", "large") if m.get(role))
        cost = (f"{params}; budget {m['budget']}; {m['escalated']} of {m['clips']} clips escalated ({m['escalation_rate']:.1%}); "
                f"large-model calls {m['large_calls']}; seconds per 1,000 frames: "
                + ", ".join(f"{k} {v:.2f}" for k, v in m["seconds_per_1000_frames"].items()))
        videos = per_video[(per_video.dataset == ref.dataset) & (per_video.run == ref.run_id)].drop(columns=["dataset", "run"])
        md += [f"## {title}\n", cost + "\n", f"![ROC](roc-{s['stem']}.png)\n", f"![timelines](timelines-{s['stem']}.png)\n",
               "### Per video\n", _md_table(videos), ""]
        body += [f"<h2>{html.escape(title)}</h2><p>{html.escape(cost)}</p>", f'<img src="roc-{s["stem"]}.png">',
                 f'<img src="timelines-{s["stem"]}.png">', "<h3>Per video</h3>",
                 videos.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="undefined")]
        if s["pareto"] is not None:
            note = (f"Simulated offline from run {ref.sweep_run_id}, which scored every clip with both models; "
                    "the production score flow runs the large model on escalated clips only.")
            table = s["pareto"].drop(columns=["dataset", "protocol"])
            md += [f"### Cost against quality ({ref.dataset})\n", note + "\n", f"![Pareto](pareto-{ref.dataset}.png)\n",
                   _md_table(table), ""]
            body += [f"<h3>Cost against quality ({html.escape(ref.dataset)})</h3><p>{html.escape(note)}</p>",
                     f'<img src="pareto-{ref.dataset}.png">', table.to_html(index=False, float_format=lambda v: f"{v:.3f}")]
    environment = _environment(sections)
    md += ["## Environment\n", *(f"- {line}" for line in environment), ""]
    body += ["<h2>Environment</h2><ul>", *(f"<li>{html.escape(line)}</li>" for line in environment), "</ul>"]
    (folder / "report.md").write_text("\n".join(md))
    (folder / "report.html").write_text("<!doctype html><meta charset=utf-8><title>Report</title>"
                                        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
                                        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
                                        "</style>" + "\n".join(body))
