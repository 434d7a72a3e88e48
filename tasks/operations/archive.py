"""Archive scoring: list the videos of a folder or fsspec URL with a date each, and ingest and score
them one by one into an archive run, skipping those already scored with the same models and
parameters.

Dates (`date_from`):
- `"path"`: the last date written in the file's path relative to the archive, as YYYY-MM-DD,
  YYYY_MM_DD, YYYY/MM/DD, YYYY.MM.DD or YYYYMMDD not inside a longer run of digits
  (`2026/11/20/cam1-0300.mp4`, `cam1_20261120T030000.mp4`); a file without one is left out;
- `"mtime"`: the file's modification time, as a UTC date;
- `"auto"` (default): the path's date when it has one, else the modification time.

Archive runs write one part per video (see `storage`), so a video is scored once per run however
often it is listed, and a re-run after a crash only redoes the videos it had not finished.

Archive footage never enters a dataset's benchmark store (`<root>/stores/<dataset>.zarr`, its
train and test videos). Each run decodes its videos into a store of its own,
`<root>/archive/<dataset>/<run>/work.zarr` (`archive_store_url`), and drops a video's frames once
its rows are written, unless `keep_frames`: then they stay there, for a later look at the footage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from vad.storage import (
    ARCHIVE_RUN_LOCK_WAIT_S,
    ClipStore,
    check_run_id,
    delete_manifest,
    delete_part,
    read_part,
    run_lock,
    write_manifest,
    write_table,
)
from vad.tasks.inference.events import find_events, store_timing
from vad.tasks.runtime.compute import Compute, pick_device
from vad.tasks.inference.routing import budget_record
from vad.tasks.inference.scoring import ScoreResult, ScoreSettings, score_videos
from vad.tasks.runtime.checkpoint import Checkpoint, cached_checkpoint, load_pair
from vad.tasks.records import package_versions
from vad.tasks.sources.datasets._base import (
    VIDEO_EXTENSIONS,
    VideoSource,
    try_video_id,
    unique_ids,
)
from vad.tasks.sources.ingest import Preprocess, describe_failure, ingest_video
from vad.tasks.workspace import check_dataset_name

from vad.errors import NotFoundError, ParameterError, StoreNotFoundError

DateFrom = Literal["auto", "path", "mtime"]
_DATE_IN_PATH = re.compile(r"(?<!\d)(\d{4})[-_/.]?(\d{2})[-_/.]?(\d{2})(?!\d)")


@dataclass(frozen=True)
class ArchiveVideo:
    """One video file of an archive, with the date it belongs to."""

    video_id: str
    uri: str  # full URL or local path
    relative: str  # path inside the archive
    size: int
    modified: str  # ISO time of the last modification (UTC), "" when the file system gives none
    date: date
    date_from: Literal["path", "mtime"]


def date_in_path(relative: str) -> date | None:
    """The last valid calendar date written in `relative` (see the module docstring), or None."""
    found = None
    for m in _DATE_IN_PATH.finditer(relative):
        year, month, day = (int(g) for g in m.groups())
        if 1970 <= year <= 2100:
            with contextlib.suppress(ValueError):
                found = date(year, month, day)
    return found


def resolve_range(
    since: date | None, until: date | None, lookback_days: int | None, *, today: date | None = None,
) -> tuple[date | None, date | None]:
    """The inclusive date range: `since`..`until`, or the last `lookback_days` days up to today (UTC)."""
    if lookback_days is not None:
        if since is not None:
            raise ParameterError("give since or lookback_days, not both")
        if not 0 <= lookback_days <= 36500:
            raise ParameterError(f"lookback_days must be between 0 and 36500, got {lookback_days}")
        today = today or datetime.now(timezone.utc).date()
        since, until = today - timedelta(days=lookback_days), until or today
    if since is not None and until is not None and since > until:
        raise ParameterError(f"since ({since}) is after until ({until})")
    return since, until


def check_date_from(date_from: str) -> str:
    if date_from not in ("auto", "path", "mtime"):
        raise ParameterError(f"date_from must be auto, path or mtime, got {date_from!r}")
    return date_from


def backfill_inputs(
    root: str, dataset: str, run_id: str, since: date | None, until: date | None, lookback_days: int | None,
    small: str | None, large: str | None, compute: Compute = Compute(), *, here: bool = True,
) -> tuple[date | None, date | None, Checkpoint, Checkpoint]:
    """What a backfill reads, checked: the names, the date range (`resolve_range`), the dataset's
    checkpoint pair (or the paths given) and, when the videos are scored `here` (not on a Dask
    cluster elsewhere), that `compute`'s device is on this machine. The backfill flow starts with
    this; the CLI calls it before starting Prefect, to fail in a second."""
    check_dataset_name(dataset)
    check_run_id(run_id)
    if here:
        pick_device(compute.device)
    first, last = resolve_range(since, until, lookback_days)
    small_ck, large_ck = load_pair(root, dataset, small, large)
    return first, last, small_ck, large_ck


def _modified(info: dict[str, Any]) -> datetime | None:
    """A file's modification time from an fsspec info dict (local 'mtime', S3 'LastModified', ...)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def list_archive(
    location: str, *, since: date | None = None, until: date | None = None, date_from: DateFrom = "auto",
    storage_options: dict[str, Any] | None = None,
) -> list[ArchiveVideo]:
    """Every video file under `location` (a folder or an fsspec URL) dated within [since, until], by date then path.

    Hidden files and folders (a leading '.') are ignored. Frame-image folders are not archive
    footage; ingest those with `vad ingest`.
    """
    import fsspec

    check_date_from(date_from)
    try:
        fs, base = fsspec.core.url_to_fs(location, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise ParameterError(f"archive {location}: {exc}") from exc
    base = base.rstrip("/")
    try:
        is_folder = fs.isdir(base)
        entries = fs.find(base, detail=True) if is_folder else {}
    except OSError as exc:
        raise NotFoundError(f"archive {location} cannot be read: {exc}") from exc
    if not is_folder:
        raise NotFoundError(f"archive {location} is not a folder (or does not exist)")
    found = {}
    for path, info in sorted(entries.items()):
        relative = path[len(base):].lstrip("/")
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if Path(relative).suffix.lower() in VIDEO_EXTENSIONS and info.get("type", "file") == "file":
            found[path] = (relative, info)
    # Ids by the datasets' rule (video_id_for), made distinct over the whole archive, so a file's id
    # does not depend on the date range asked for.
    ids, _ = unique_ids({relative: try_video_id(relative) for relative, _ in found.values()})
    videos = []
    for path, (relative, info) in found.items():
        modified = _modified(info)
        day, source = date_in_path(relative) if date_from != "mtime" else None, "path"
        if day is None and date_from != "path" and modified is not None:
            day, source = modified.date(), "mtime"
        if day is None:
            continue  # no date it could be placed at
        if (since is not None and day < since) or (until is not None and day > until):
            continue
        uri = path if _is_local(fs) else fs.unstrip_protocol(path)
        videos.append(ArchiveVideo(
            ids[relative], uri, relative, int(info.get("size") or 0), modified.isoformat() if modified else "", day, source,  # type: ignore[arg-type]
        ))
    return sorted(videos, key=lambda v: (v.date, v.relative))


@dataclass(frozen=True)
class ArchiveSettings:
    """What an archive run scores with; `key` changes whenever any of it does."""

    small: str  # checkpoint paths
    large: str
    scoring: ScoreSettings = ScoreSettings()

    def params(self) -> dict[str, Any]:
        return {
            "small": {"path": self.small, "sha": file_digest(self.small)},
            "large": {"path": self.large, "sha": file_digest(self.large)},
            "budget": budget_record(self.scoring.budget),
            **({"router": self.scoring.router.record()} if self.scoring.router else {}),  # None: the large checkpoint's
            "frame_mode": self.scoring.frame_mode,
            **({"fusion": self.scoring.fusion} if self.scoring.fusion else {}),  # None: the large checkpoint's (in its sha)
            "events": {"min_event_s": self.scoring.events.min_event_s, "merge_gap_s": self.scoring.events.merge_gap_s},
        }

    def key(self, params: dict[str, Any] | None = None) -> str:
        """A digest of the models' bytes and the routing parameters (not the paths or the compute);
        pass `params()` when already at hand, to read the checkpoints once."""
        p = params or self.params()
        core = {**p, "small": p["small"]["sha"], "large": p["large"]["sha"]}
        return hashlib.blake2b(json.dumps(core, sort_keys=True).encode(), digest_size=12).hexdigest()


def file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def ingest_preprocess(checkpoint: Checkpoint) -> Preprocess:
    """Store archive footage the way the model's training footage was stored: same frame size,
    channels and frame rate, so a camera that changed resolution or rate is converted; one whose
    aspect ratio changed is refused, never stretched (the aspect of the training footage's original
    size, or of its stored frames for a checkpoint that does not record it)."""
    h, w, c = checkpoint.source["frame_size"]
    prep = checkpoint.source.get("preprocess") or {}
    fps = checkpoint.source.get("fps")
    aspect = checkpoint.source.get("original_size") or (h, w)
    return Preprocess(size=(int(h), int(w)), gray=int(c) == 1, fps=float(fps) if fps else None,
                      chunk_frames=int(prep.get("chunk_frames") or 16), aspect_of=(int(aspect[0]), int(aspect[1])))


@dataclass(frozen=True)
class VideoOutcome:
    video: str
    status: Literal["scored", "skipped"]
    frames: int = 0
    clips: int = 0
    escalated: int = 0
    seconds: float = 0.0


def archive_store_url(root: str, dataset: str, run_id: str) -> str:
    """The clip store of one archive run: `<root>/archive/<dataset>/<run>/work.zarr`, never a dataset's store."""
    return f"{root.rstrip('/')}/archive/{check_dataset_name(dataset)}/{check_run_id(run_id)}/work.zarr"


def drop_empty_store(url: str) -> bool:
    """Remove the groups a killed run left unfinished in an archive run's store, then the store when
    it holds no video (every video's frames dropped); True when removed. Call it under the run's
    lock, once the run's tasks are done: no other writer may be adding a video."""
    try:
        store = ClipStore.open(url, writable=True)
    except StoreNotFoundError:
        return False
    complete = set(store.video_ids())
    for vid in set(store.video_ids(include_incomplete=True)) - complete:
        store.delete_video(vid)
    if complete:
        return False
    folder = Path(url.removeprefix("file://"))
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        (folder.parent / f".{folder.name}.locks").rmdir()  # its group locks' folder, when no lock is held
    for empty in (folder.parent, folder.parent.parent, folder.parent.parent.parent):  # <root>/archive/<d>/<r>
        try:
            empty.rmdir()
        except OSError:  # not empty: another run's
            break
    return True


@dataclass(frozen=True)
class BackfillSettings:
    """How a backfill goes through an archive: the `backfill` flow's parameter object (the nightly
    and backfill deployments nest the same fields in prefect.yaml), checked once when built.

    `scoring`: what each video is scored with (the budget applies within each video); `date_from`:
    how a video's date is read; `batch_size`: videos submitted together; `rescore`: score videos
    again even when already scored with these models; `keep_frames`: keep the decoded frames in the
    run's store; `lock_timeout_s`: how long to wait for another process holding the run (0: fail at once).
    """

    scoring: ScoreSettings = ScoreSettings()
    date_from: DateFrom = "auto"
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 8  # limits in the schema too (see routing.py)
    rescore: bool = False
    keep_frames: bool = False
    lock_timeout_s: Annotated[float, Field(ge=0.0)] = ARCHIVE_RUN_LOCK_WAIT_S

    def __post_init__(self) -> None:
        check_date_from(self.date_from)
        if not 1 <= self.batch_size <= 10000:
            raise ParameterError(f"batch_size must be between 1 and 10000, got {self.batch_size}")
        if not self.lock_timeout_s >= 0:
            raise ParameterError(f"lock_timeout_s must be 0 or more seconds, got {self.lock_timeout_s}")


@dataclass(frozen=True)
class BackfillPlan:
    """One backfill pass, read and checked before any video is touched (`plan_backfill`): where,
    what it scores with (`scoring`, its `params` and their `key`) and the videos in range."""

    root: str
    dataset: str
    run_id: str
    archive: str
    since: date | None
    until: date | None
    settings: BackfillSettings
    scoring: ArchiveSettings
    params: dict[str, Any]
    key: str
    videos: list[ArchiveVideo]
    started: float  # time.perf_counter() when planned

    @property
    def batches(self) -> list[list[ArchiveVideo]]:
        """The videos in submission batches of `settings.batch_size`."""
        size = self.settings.batch_size
        return [self.videos[i : i + size] for i in range(0, len(self.videos), size)]


def plan_backfill(
    archive: str, dataset: str, *, root: str, run_id: str = "archive", since: date | None = None, until: date | None = None,
    lookback_days: int | None = None, small: str | None = None, large: str | None = None,
    settings: BackfillSettings = BackfillSettings(), here: bool = True,
) -> BackfillPlan:
    """A backfill's inputs checked (`backfill_inputs`), the checkpoints' key and the videos of
    `archive` dated in range; the backfill flow starts with it."""
    t0 = time.perf_counter()
    since, until, small_ck, large_ck = backfill_inputs(root, dataset, run_id, since, until, lookback_days, small, large,
                                                       settings.scoring.compute, here=here)
    scoring = ArchiveSettings(small_ck.path, large_ck.path, settings.scoring)
    params = scoring.params()
    videos = list_archive(archive, since=since, until=until, date_from=settings.date_from)
    return BackfillPlan(root, dataset, run_id, archive, since, until, settings, scoring, params, scoring.key(params), videos, t0)


@contextlib.contextmanager
def archive_run(plan: BackfillPlan, *, on_wait: Callable[[str], None] | None = None) -> Iterator[str]:
    """Hold the plan's run for this process and yield its store's URL: take the run's lock (waiting
    up to `settings.lock_timeout_s` seconds for another run of the same id: a nightly and a backfill
    never interleave), remove its old run.json (a run cut short is then never read as complete),
    and create its store. On the way out, the store goes if it holds no frames; then the lock is released."""
    root, dataset, run_id = plan.root, plan.dataset, plan.run_id
    url = archive_store_url(root, dataset, run_id)
    purpose = f"score archive run {run_id!r} of {dataset!r} from {plan.archive}"
    with run_lock(root, dataset, run_id, purpose=purpose, timeout=plan.settings.lock_timeout_s, on_wait=on_wait):
        delete_manifest(root, dataset, run_id)
        ClipStore.open_or_create(url, dataset=dataset)  # once, before the per-video writers
        try:
            yield url
        finally:
            if not plan.settings.keep_frames:
                drop_empty_store(url)


def already_scored(root: str, dataset: str, run_id: str, video: ArchiveVideo, key: str) -> bool:
    """The run holds this video, scored from the same file (size and modification time) with the same key."""
    done = read_part(root, "videos", dataset, run_id, video.video_id)
    if done is None or done.empty:
        return False
    row = done.iloc[0]
    return bool(row["key"] == key and int(row["source_size"]) == video.size and row["source_modified"] == video.modified)


@contextlib.contextmanager
def local_copy(video: ArchiveVideo) -> Iterator[str]:
    """A local path for FFmpeg: the file itself, or a temporary copy of a remote one."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(video.uri)
    if _is_local(fs):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="vad-archive-")
    try:
        local = str(Path(folder) / Path(video.relative).name)
        fs.get(path, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def score_archive_video(
    root: str, dataset: str, run_id: str, video: ArchiveVideo, settings: ArchiveSettings, *, key: str,
    params: dict[str, Any], rescore: bool = False, keep_frames: bool = False,
) -> VideoOutcome:
    """Ingest one archive video into the run's own store (with the small model's preprocessing) and
    score it on its own (the budget applies within the video), then write its clip, frame and video
    rows, and drop its frames unless `keep_frames`.

    Skipped when the run already holds it from the same file with the same key, unless `rescore`.
    Rows are written only after all the work succeeded, clips and frames first and the video row
    last: earlier rows of the video stay until then, and a crash in between is redone by the next run.
    """
    t0 = time.perf_counter()
    if not rescore and already_scored(root, dataset, run_id, video, key):
        return VideoOutcome(video.video_id, "skipped")
    small, large = cached_checkpoint(settings.small), cached_checkpoint(settings.large)
    url = archive_store_url(root, dataset, run_id)
    with local_copy(video) as path:  # a failed ingest removes its own half-written group
        source = VideoSource(video.video_id, "test", path, "file")
        ingest_video(url, source, ingest_preprocess(small), dataset=dataset, source_uri=video.uri)
    try:
        scoring = settings.scoring
        result = score_videos(url, small, large, scoring.budget, videos=[video.video_id], split=None,
                              router=scoring.router, frame_mode=scoring.frame_mode, compute=scoring.compute,
                              fusion=scoring.fusion)
        stored = ClipStore.open(url).video(video.video_id)
        write_table(root, "clips", dataset, run_id, result.clips, part=video.video_id)
        write_table(root, "frames", dataset, run_id, result.frames, part=video.video_id)
        events = find_events(result.frames, small.calibration.quantile, store_timing(stored.attrs, rate=small.source.get("fps") or small.model_config.get("fps")), clips=result.clips,
                             min_event_s=scoring.events.min_event_s, merge_gap_s=scoring.events.merge_gap_s)
        write_table(root, "events", dataset, run_id, events, part=video.video_id)
        _write_video_row(root, dataset, run_id, video, result, stored.attrs, t0, key=key, params=params)
    finally:
        if not keep_frames:
            ClipStore.open(url, writable=True).delete_video(video.video_id)
    return VideoOutcome(video.video_id, "scored", result.n_frames, len(result.clips), int(result.routing.escalated.sum()),
                        time.perf_counter() - t0)


def _write_video_row(root: str, dataset: str, run_id: str, video: ArchiveVideo, result: ScoreResult, attrs: dict[str, Any],
                     t0: float, *, key: str, params: dict[str, Any]) -> None:
    """The video's row of the `videos` table, written last: a video with one has all its rows."""
    seconds = time.perf_counter() - t0
    row = pd.DataFrame([{
        "video": video.video_id, "date": video.date, "date_from": video.date_from, "source": video.uri,
        "relative": video.relative, "source_size": video.size, "source_modified": video.modified,
        "source_hash": attrs.get("source_hash"), "frames": result.n_frames, "clips": len(result.clips),
        "escalated": int(result.routing.escalated.sum()), "large_calls": result.large.calls,
        "max_score": float(np.max(result.frames["score"])), "seconds": seconds,
        "scored_at": datetime.now(timezone.utc), "key": key, "params": json.dumps(params, sort_keys=True),
        "versions": json.dumps(package_versions(), sort_keys=True),
    }])
    write_table(root, "videos", dataset, run_id, row, part=video.video_id)


def failure_row(video: ArchiveVideo, exc: BaseException) -> pd.DataFrame:
    return pd.DataFrame([{
        "video": video.video_id, "date": video.date, "source": video.uri, "error": type(exc).__name__,
        "message": describe_failure(exc), "failed_at": datetime.now(timezone.utc),
    }])


def record_outcome(root: str, dataset: str, run_id: str, video: ArchiveVideo, outcome: VideoOutcome | BaseException) -> str | None:
    """Keep a run's failures table in step with each video's latest attempt: a success removes the
    video's failure row, a failure writes it. The one-line reason of a failure, else None."""
    if isinstance(outcome, VideoOutcome):
        delete_part(root, "failures", dataset, run_id, video.video_id)
        return None
    write_table(root, "failures", dataset, run_id, failure_row(video, outcome), part=video.video_id)
    return describe_failure(outcome)


def write_archive_manifest(
    root: str, dataset: str, run_id: str, *, archive: str, since: date | None, until: date | None, date_from: str,
    key: str, params: dict[str, Any], keep_frames: bool, store: str | None, listed: int, scored: int, skipped: int,
    failed: dict[str, str], seconds: float, compute: Compute = Compute(),
) -> None:
    """An archive run's run.json, written when the run ends (under its lock): what it scores with
    (the compute settings of its latest pass too, which are not part of the key), and what its
    latest pass over the archive did."""
    now = datetime.now(timezone.utc).isoformat()
    write_manifest(root, dataset, run_id, {
        "run": run_id, "dataset": dataset, "kind": "archive", "archive": archive, "since": since, "until": until,
        "date_from": date_from, "key": key, **params, "compute": asdict(compute), "keep_frames": keep_frames, "store": store if keep_frames else None,
        "versions": package_versions(), "updated_at": now,
        "last": {"videos": listed, "scored": scored, "skipped": skipped, "failed": failed, "seconds": seconds,
                 "finished_at": now},
    })


@dataclass
class BackfillSummary:
    """What one backfill pass did: the backfill flow's result (and the CLI's printout, `text`)."""

    archive: str
    dataset: str
    run_id: str
    since: date | None
    until: date | None
    outcomes: list[VideoOutcome] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # video id -> one-line reason
    seconds: float = 0.0
    root: str = ""
    frames_kept_in: str = ""  # the run's store, when its frames are kept

    @property
    def scored(self) -> int:
        return sum(o.status == "scored" for o in self.outcomes)

    @property
    def skipped(self) -> int:
        return sum(o.status == "skipped" for o in self.outcomes)

    @property
    def any_failed(self) -> bool:
        """A video failed: the flow run ends Failed (the others are written), as `ingest` does and the CLI exits 1."""
        return bool(self.failures)

    def text(self) -> str:
        span = f"{self.since or 'the start'} to {self.until or 'today'}"
        n = len(self.outcomes) + len(self.failures)
        frames = sum(o.frames for o in self.outcomes)
        lines = [
            f"backfill {self.dataset} (run {self.run_id}) from {self.archive}, {span}: {n} videos; scored {self.scored}, "
            f"skipped {self.skipped} (already scored with these models), failed {len(self.failures)}; "
            f"{frames:,} frames scored in {self.seconds:.1f} s",
            f"tables: {self.root.rstrip('/')}/scores/{{clips,frames,events,videos,failures}}/dataset={self.dataset}/run={self.run_id}/",
        ]
        if self.frames_kept_in:
            lines.append(f"frames kept in {self.frames_kept_in}")
        lines += [f"FAILED {video}: {why}" for video, why in self.failures.items()]
        return "\n".join(lines)


def finish_backfill(plan: BackfillPlan, store: str, outcomes: list[VideoOutcome], failures: dict[str, str]) -> BackfillSummary:
    """The pass's summary, and its run.json written (under the run's lock, held by `archive_run`)."""
    summary = BackfillSummary(plan.archive, plan.dataset, plan.run_id, plan.since, plan.until, outcomes, failures,
                              time.perf_counter() - plan.started, plan.root, store if plan.settings.keep_frames else "")
    write_archive_manifest(
        plan.root, plan.dataset, plan.run_id, archive=plan.archive, since=plan.since, until=plan.until,
        date_from=plan.settings.date_from, key=plan.key, params=plan.params, keep_frames=plan.settings.keep_frames,
        store=store, listed=len(plan.videos), scored=summary.scored, skipped=summary.skipped, failed=failures,
        seconds=summary.seconds, compute=plan.settings.scoring.compute,
    )
    return summary
