"""Run records: what a scoring run writes beside its tables (run.json), the summary it prints, and
the package versions every checkpoint, manifest and report records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

from vad.storage import SCORE_RUN_LOCK_WAIT_S, delete_manifest, run_lock, write_manifest, write_table
from vad.tasks.inference.events import EventSettings, run_events
from vad.tasks.runtime.compute import Compute
from vad.tasks.inference.routing import Budget, budget_record
from vad.tasks.runtime.checkpoint import Checkpoint
from vad.tasks.workspace import store_url as workspace_store_url

if TYPE_CHECKING:
    from vad.tasks.inference.scoring import FrameMode, ScoreResult


def package_versions(names: tuple[str, ...] = ("video-anomaly-router", "torch", "zarr", "numpy")) -> dict[str, str]:
    """The installed versions of `names` ("unknown" where absent); by default the packages every
    checkpoint, run.json and archive row records."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def run_manifest(result: ScoreResult, small: Checkpoint, large: Checkpoint | None, budget: Budget,
                 frame_mode: str) -> dict:
    """What run.json records beside the tables (the caller adds ids, paths and versions)."""
    n_clips = len(result.clips)
    return {
        "small": {"path": small.path, "arch": small.arch, "fingerprint": small.fingerprint, "dataset": small.dataset},
        "large": None if large is None else {"path": large.path, "arch": large.arch, "fingerprint": large.fingerprint, "dataset": large.dataset},
        "budget": budget_record(budget), "router": result.router.record(),
        "frame_mode": frame_mode, "fusion": result.fusion, "clip_len": small.input.clip_len, "stride": small.input.stride,
        "videos": result.videos, "clips": n_clips, "frames": result.n_frames,
        "escalated": int(result.routing.escalated.sum()), "escalation_rate": float(result.routing.escalated.mean()) if n_clips else 0.0,
        "small_calls": result.small.calls, "large_calls": result.large.calls, "seconds": result.seconds,
        "seconds_per_1000_frames": {k: 1000 * v / max(result.n_frames, 1) for k, v in result.seconds.items()},
    }


@dataclass
class ScoreSummary:
    dataset: str
    run_id: str
    clips: int
    frames: int
    escalated: int
    large_calls: int
    seconds: dict[str, float]
    paths: dict[str, str]
    events: int = 0

    @property
    def escalation_rate(self) -> float:
        return self.escalated / max(self.clips, 1)

    def record(self) -> dict[str, Any]:
        """The run's counts and times as one flat row (the Prefect table artifact)."""
        return {
            "dataset": self.dataset, "run": self.run_id, "clips": self.clips, "frames": self.frames,
            "escalated": self.escalated, "escalation_rate": self.escalation_rate, "large_calls": self.large_calls,
            "events": self.events, **{f"{k}_s": v for k, v in self.seconds.items()},
        }

    def text(self) -> str:
        per_k = 1000 * self.seconds["total"] / max(self.frames, 1)
        lines = [
            f"score {self.dataset} (run {self.run_id}): {self.clips:,} clips, {self.frames:,} frames; escalated "
            f"{self.escalated:,} ({self.escalation_rate:.1%}); large-model calls {self.large_calls:,}; events {self.events:,}",
            f"time: {self.seconds['total']:.1f} s ({per_k:.2f} s per 1,000 frames); model time summed over videos, "
            f"which may run at once: pass 1 {self.seconds['pass1']:.1f} s, pass 2 {self.seconds['pass2']:.1f} s",
        ]
        lines += [f"{name}: {path}" for name, path in self.paths.items()]
        return "\n".join(lines)


def event_record(events: EventSettings, threshold: float) -> dict[str, Any]:
    """The event settings as run.json records them, with the threshold (calibrated units) they used."""
    return {"min_event_s": events.min_event_s, "merge_gap_s": events.merge_gap_s, "threshold": threshold}


def compute_record(compute: Compute, result: ScoreResult) -> dict[str, Any]:
    """The compute settings as run.json records them, with the device and batch size each pass
    actually used (None for a model that scored no clip)."""
    return {
        "device": result.small.device or None, "requested_device": compute.device,
        "batch": {"small": result.small.batch or None, "large": result.large.batch or None},
        "batch_given": compute.batch is not None, "precision": compute.precision, "compile": compute.compile,
    }


def write_run(
    root: str, dataset: str, run_id: str, result: ScoreResult, small: Checkpoint, large: Checkpoint | None,
    budget: Budget, *, frame_mode: FrameMode = "clip",
    compute: Compute = Compute(), events: EventSettings = EventSettings(),
) -> ScoreSummary:
    """Write a run's clip, frame and event tables, then its run.json, under the run's lock (another
    process writing the same run id waits). Events are frames above the small checkpoint's threshold
    in calibrated units (its calibration quantile; `tasks.evaluation.events`). An earlier run.json of the id goes first and the new one is
    written last, so a run rewritten halfway by a crash is never read as complete."""
    threshold = float(small.calibration.quantile)
    found, footage = run_events(workspace_store_url(root, dataset), result.frames, result.clips, threshold, events,
                                fps=small.source.get("fps") or small.model_config.get("fps"))  # the rate the model assumed
    with run_lock(root, dataset, run_id, purpose=f"score run {run_id}", timeout=SCORE_RUN_LOCK_WAIT_S):
        delete_manifest(root, dataset, run_id)
        clips_path = write_table(root, "clips", dataset, run_id, result.clips)
        frames_path = write_table(root, "frames", dataset, run_id, result.frames)
        events_path = write_table(root, "events", dataset, run_id, found)
        manifest = {
            "run": run_id, "dataset": dataset, "store": workspace_store_url(root, dataset),
            "created_at": datetime.now(timezone.utc).isoformat(),
            **run_manifest(result, small, large, budget, frame_mode), "compute": compute_record(compute, result),
            "events": {**event_record(events, threshold), "count": len(found), "footage_s": sum(footage.values()),
                       "video_s": footage},
            "versions": package_versions(),
            "tables": {"clips": str(clips_path), "frames": str(frames_path), "events": str(events_path)},
        }
        run_path = write_manifest(root, dataset, run_id, manifest)
    return ScoreSummary(
        dataset=dataset, run_id=run_id, clips=len(result.clips), frames=result.n_frames,
        escalated=int(result.routing.escalated.sum()), large_calls=result.large.calls, seconds=result.seconds,
        events=len(found), paths={"clips": str(clips_path), "frames": str(frames_path), "events": str(events_path),
                                  "run": str(run_path)},
    )
