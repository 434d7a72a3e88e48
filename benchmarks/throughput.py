"""Throughput of the pipeline's stages (frames per second and peak memory) on UCSD Ped2 and on
synthetic 1280x720 videos of a given length, and the cost of routed scoring against the large
model alone.

    python benchmarks/throughput.py [--ped2 ../shared/datasets/ped2 | --no-ped2] [--small PATH --large PATH]
        [--minutes 1,10,60] [--budget 0.2] [--budgets 0.1,0.2,0.3] [--device auto] [--batch N] [--precision auto]
        [--compile] [--batches 4,8,16] [--no-compile-table] [--work DIR] [--pass1-only [--repeat N]]

Pass 1 against reading (`--pass1-only`, Ped2 and `--minutes` inputs): the bare read of the store
(`Video.read` of every test frame, as uint8, a span of `SPAN_PIXELS` at a time: Zarr and zstd alone)
and pass 1 (`first_pass` per video: reading, conversion, the model, routing inputs), alternated
`--repeat` times in one run; `vs_read` is pass 1's frames/s over the bare read's just before it. On a
machine shared with other work absolute figures are noisy; the ratio, measured side by side, is what
to compare. Every full run's rows carry `read_fps` and `vs_read` too.

Stages, each timed alone by calling the stage functions `score_videos` runs in a loop
(`tasks/inference/scoring.py`): ingest (`ingest_video` of each video into a fresh store, one at a time),
pass 1 (`first_pass` per video), routing (`plan_routes`, batch budget `--budget`), pass 2
(`second_pass` per video with escalated clips), frames (`assemble`: frame aggregation and tables in
memory), tables (`write_run`: clip and frame Parquet files and run.json), report (`build_report` on
the run just written), and end to end (the sum of the stages, which run back to back; loading the
checkpoints before them is not counted). `frames_per_s` is the input's frame count over the stage's
wall seconds for every stage, so the stages' costs add up; `loop_s` is the time inside `run_pass`'s
batch loop (what `score_videos` reports), the rest of a pass being the model's build (once per
checkpoint and device, in the first video's pass), clip indexing and DataLoader start-up.

Model table (`--batches`): each model alone (copy to the device, conversion, `score`) on random
clips, per batch size, as trained and with the scoring rewrites of `models/_inference.py`, and
compiled (`torch.compile`) unless `--no-compile-table`; it shows what the model costs apart from
reading the store, and which batch size is fastest.

Memory: a background thread samples the resident set size (RSS) every 20 ms, summed over this
process and all its child processes (the FFmpeg decoder during ingest; on CUDA the reader process
`run_pass` spawns from 400 clips up), so pages they share count twice. A stage's `peak_rss_mb` is
the largest sample, or this process's own high-water mark (VmHWM, reset through
/proc/self/clear_refs before each stage) when that is larger; `rss_delta_mb` is the peak minus the
RSS just before the stage. On CUDA `gpu_peak_mb` is torch's peak allocated GPU memory in the stage.

Inputs:
- Ped2's 12 test videos (2,010 frames), stored at the small checkpoint's stored frame size (240x360
  gray for the Ped2 checkpoints), scored by `--small`/`--large` (default vae3d-motion and
  predictor-wide from vad-workspace/experiments/ped2/);
- for each `--minutes`, one synthetic 1280x720 25 fps video: a short piece rendered by
  `tasks.synthetic` (at most 10 s) and looped with FFmpeg stream copy, so no long video is ever
  held in memory; ingested at the small checkpoint's stored size and channels (a 16:9 picture
  squeezed to 240x360 for the Ped2 checkpoints). The checkpoints score it when they accept the
  store (`Checkpoint.check_video`); weights do not change speed.
Where no checkpoint is given or found, or one refuses the store, an untrained model of the same
architecture and input spec stands in, with a plausible calibration; its rows say "untrained
weights (speed only)".

Routing cost (Ped2): pass 1 is the one timed above (it is common to every routed run); for each of
`--budgets`, routing, pass 2 and frame aggregation are timed, and `total_s` adds pass 1. The
large-only run is the large model alone over every clip, then frame aggregation: no small pass.
`ratio` is routed total / large-only total; `ratio_without_pass1` leaves pass 1 out.

Results: benchmarks/results/throughput.parquet, throughput_routing.parquet and throughput_models.parquet.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil  # a dependency of dask[distributed]
import torch
from vad.models import build, make_config, model_class, trainable_parameters
from vad.storage import ClipStore, Video
from vad.tasks.evaluation.report import RunRef, build_report
from vad.tasks.runtime.compute import (
    PRECISIONS,
    Compute,
    available_cores,
    pick_device,
    scoring_precision,
)
from vad.tasks.runtime.passes import SPAN_PIXELS, first_pass, second_pass
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import (
    ReplayMap,
    VideoMap,
    aggregate_frames,
    score_videos,
)
from vad.tasks.runtime.calibration import Calibration
from vad.tasks.runtime.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    source_spec,
)
from vad.tasks.runtime.model_input import InputSpec, clip_index, prepare_clips
from vad.tasks.records import write_run
from vad.tasks.sources.datasets import VideoSource, discover
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe
from vad.tasks.sources.ingest import Preprocess, ingest_video
from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic
from vad.tasks.workspace import store_url

from vad.errors import (
    CheckpointMismatchError,
    DatasetLayoutError,
    FFmpegError,
    ParameterError,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENTS = REPO / "vad-workspace" / "experiments" / "ped2"
DEFAULT_CHECKPOINTS = {"small": EXPERIMENTS / "vae3d-motion.pt", "large": EXPERIMENTS / "predictor-wide.pt"}
# With no checkpoint: the default pair's architectures and input spec, Ped2's stored frames
STAND_INS = {
    "small": ("motion_patch", {}, InputSpec(16, 8, 240, 360, 1)),
    "large": ("predictor", {"channels": (16, 32, 64, 128), "step": 4}, InputSpec(16, 8, 128, 192, 1)),
}
STAND_IN_FRAME_SIZE = (240, 360, 1)
UNTRAINED = "untrained weights (speed only)"
SYNTH_FPS = 25
PIECE_FRAMES = 250  # the rendered piece FFmpeg loops: 10 s, about 0.7 GB of 720p frames while rendered
RUN_ID = "throughput"
MB = 1 << 20


def say(msg: str) -> None:
    print(msg, flush=True)


# --- memory -------------------------------------------------------------------------------------


def _own_hwm() -> int:
    """This process's RSS high-water mark in bytes (VmHWM), or 0 where /proc has none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not allowed: the samples alone give the peak
        pass


class Memory:
    """RSS of this process plus its children, sampled every `interval` s by a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self._me = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def rss(self) -> int:
        total = self._me.memory_info().rss
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:  # it ended between listing and reading
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            value = self.rss()
            with self._lock:
                self._peak = max(self._peak, value)

    def reset(self) -> int:
        """Start a new stage: forget the peak so far; return the RSS now."""
        _reset_hwm()
        now = self.rss()
        with self._lock:
            self._peak = now
        return now

    def peak(self) -> int:
        value = max(self.rss(), _own_hwm())
        with self._lock:
            return max(self._peak, value)


@contextmanager
def measured(memory: Memory, stages: list[dict], name: str, device: torch.device) -> Iterator[dict]:
    """Time one stage and take its memory peak; the caller may add `clips` and `loop_s` to the record."""
    say(f"  {name}")
    record: dict[str, Any] = {"stage": name}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = memory.reset()
    t0 = time.perf_counter()
    yield record
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        record["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    record.update(seconds=time.perf_counter() - t0, peak=memory.peak(), before=before, threads=torch.get_num_threads())
    stages.append(record)


# --- checkpoints --------------------------------------------------------------------------------


def load_templates(small: str | None, large: str | None) -> dict[str, Checkpoint | None]:
    """The checkpoints given, else the defaults that exist; None where there is neither."""
    out: dict[str, Checkpoint | None] = {}
    for role, given in (("small", small), ("large", large)):
        path = Path(given) if given else DEFAULT_CHECKPOINTS[role]
        if given or path.is_file():
            out[role] = load_checkpoint(path)
            say(f"{role} checkpoint: {path} ({out[role].arch}, trained on {out[role].dataset})")
        else:
            out[role] = None
            say(f"{role} checkpoint: none given and {path} not found; an untrained {STAND_INS[role][0]} stands in")
    return out


def stored_frame_size(template: Checkpoint | None) -> tuple[int, int, int]:
    """(H, W, C) of the stored frames the small model expects."""
    return tuple(template.source["frame_size"]) if template is not None else STAND_IN_FRAME_SIZE  # type: ignore[return-value]


def untrained(template: Checkpoint | None, role: str, video: Video, folder: Path, seed: int) -> Checkpoint:
    """An untrained model of the template's architecture and input spec (or the default pair's),
    fitted to `video`'s stored frames, with a calibration of plausible shape (as tests/conftest.py's
    `make_checkpoint`), saved under `folder`: scoring needs a checkpoint that fits, not a good one."""
    if template is not None:
        arch, config, spec = template.arch, dict(template.model_config), template.input
    else:
        arch, extra, spec = STAND_INS[role]
        config = build(arch, in_channels=spec.channels, clip_len=spec.clip_len, height=spec.height,
                       width=spec.width, **extra).config.to_dict()
    torch.manual_seed(seed)
    model = model_class(arch)(make_config(arch, config)).eval()
    with torch.inference_mode():
        dim = model(torch.zeros(1, spec.channels, spec.clip_len, spec.height, spec.width)).embedding.shape[1]
    rng = np.random.default_rng(seed)
    checkpoint = Checkpoint(
        arch=arch, role=role, model_config=model.config.to_dict(), state_dict=model.state_dict(), input=spec,
        source=source_spec(video), dataset="untrained", fingerprint="0" * 32,
        calibration=Calibration.fit(scores=rng.uniform(0.0, 0.05, 40), embeddings=rng.normal(size=(40, dim)),
                                    video_ids=["a"] * 20 + ["b"] * 20),
        training={"parameters": trainable_parameters(model)},
    )
    path = save_checkpoint(checkpoint, folder / f"{role}-{arch}-untrained.pt")
    checkpoint.path = str(path)
    return checkpoint


def fit(template: Checkpoint | None, role: str, video: Video, folder: Path, seed: int) -> Checkpoint:
    """The template when it accepts the stored video, else an untrained stand-in of its shape."""
    if template is not None:
        try:
            template.check_video(video)
            return template
        except CheckpointMismatchError as exc:
            say(f"  {role} checkpoint refuses this store ({exc}); an untrained {template.arch} stands in")
    return untrained(template, role, video, folder, seed)


def weights_label(small: Checkpoint, large: Checkpoint, dataset: str) -> str:
    def one(c: Checkpoint) -> str:
        if c.dataset == "untrained":
            return UNTRAINED
        return f"trained on {c.dataset}" + ("" if c.dataset == dataset else " (other data; speed only)")

    a, b = one(small), one(large)
    return a if a == b else f"small {a}; large {b}"


# --- inputs -------------------------------------------------------------------------------------


def ped2_sources(path: Path) -> list[VideoSource] | None:
    """Ped2's test videos, or None (with the reason printed) when the dataset is not there."""
    if not path.is_dir():
        say(f"skipping Ped2: {path} not found (give --ped2 PATH, or --no-ped2)")
        return None
    try:
        videos = [v for v in discover(str(path), "auto") if v.split == "test"]
    except DatasetLayoutError as exc:
        say(f"skipping Ped2: {exc}")
        return None
    if not videos:
        say(f"skipping Ped2: no test videos under {path}")
        return None
    return videos


def synthetic_piece(work: Path, frames: int) -> tuple[Path, tuple[int, int]]:
    """A rendered 1280x720 test video of `frames` frames (kept in `work` for reuse) and its anomalous
    frames [start, stop)."""
    folder = work / "synthetic" / f"piece-{frames}"
    manifest = folder / "synthetic.json"
    if not manifest.exists():
        shutil.rmtree(folder, ignore_errors=True)
        say(f"rendering a {frames}-frame 1280x720 synthetic piece")
        make_synthetic(folder, SyntheticSpec(n_train=1, n_test=1, frames=frames, height=720, width=1280, fps=SYNTH_FPS))
    test = next(v for v in json.loads(manifest.read_text())["videos"] if v["split"] == "test")
    start, stop = test["anomalous_frames"]
    return Path(test["path"]), (int(start), int(stop))


def loop_video(piece: Path, copies: int, out: Path) -> None:
    """`copies` back-to-back copies of `piece` by FFmpeg stream copy (no decoding), written atomically."""
    tmp = out.with_name(f".{out.name}.tmp.mp4")
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-stream_loop", str(copies - 1), "-i", str(piece),
           "-c", "copy", "-f", "mp4", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise FFmpegError(str(piece), "looping the synthetic piece failed", cmd=cmd, stderr=proc.stderr)
    tmp.rename(out)


def synthetic_source(work: Path, minutes: float) -> VideoSource:
    """A 1280x720 25 fps test video of about `minutes` (whole copies of the piece), labelled."""
    total = max(20, round(minutes * 60 * SYNTH_FPS))
    piece_frames = min(PIECE_FRAMES, total)
    copies = math.ceil(total / piece_frames)
    piece, (start, stop) = synthetic_piece(work, piece_frames)
    path = work / "synthetic" / f"720p-{copies * piece_frames}.mp4"
    if not path.exists():
        loop_video(piece, copies, path)
    # label ranges (not a per-frame array), so a frame more or less from the loop cannot break ingest
    ranges = tuple((start + k * piece_frames, stop + k * piece_frames) for k in range(copies))
    return VideoSource("synth720", "test", str(path), "file", label_ranges=ranges)


# --- measurement --------------------------------------------------------------------------------


class TimedMap(VideoMap):
    """`score_videos`' plain loop, with each stage timed and its memory peak taken (`measured`)."""

    def __init__(self, memory: Memory, stages: list[dict], device: torch.device) -> None:
        super().__init__()
        self.memory, self.stages, self.device = memory, stages, device

    def stage(self, name: str):  # noqa: ANN201
        return measured(self.memory, self.stages, name, self.device)


def bare_read(url: str, ids: list[str]) -> int:
    """Read every frame of the videos `ids` as uint8 and drop it (Zarr and zstd alone); the frame count."""
    store, frames = ClipStore.open(url), 0
    for vid in ids:
        video = store.video(vid)
        step = max(1, SPAN_PIXELS // (video.frames.shape[1] * video.frames.shape[2]))
        for start in range(0, video.n_frames, step):
            frames += len(video.read(start, min(video.n_frames, start + step)))
    return frames


def pass1_against_read(name: str, url: str, ids: list[str], small: Checkpoint, frames: int, memory: Memory,
                       args: argparse.Namespace) -> list[dict]:
    """The bare read and pass 1 alternated `--repeat` times; rows with each pass 1's ratio to the read before it."""
    device, rows = pick_device(args.device), []
    for k in range(args.repeat):
        stages: list[dict] = []
        with measured(memory, stages, "read", device):
            bare_read(url, ids)
        with measured(memory, stages, "pass1", device):
            clips = sum(first_pass(url, small, vid, compute=compute(args)).out.calls for vid in ids)
        read_fps = frames / stages[0]["seconds"]
        for r in stages:
            fps = frames / r["seconds"]
            rows.append({"input": name, "round": k + 1, "stage": r["stage"], "frames": frames,
                         "clips": clips if r["stage"] == "pass1" else None, "seconds": r["seconds"], "frames_per_s": fps,
                         "read_fps": read_fps, "vs_read": fps / read_fps, "peak_rss_mb": r["peak"] / MB,
                         "device": str(device), "threads": r["threads"]})
        say(f"  round {k + 1}: bare read {read_fps:,.0f} frames/s, pass 1 {rows[-1]['frames_per_s']:,.0f} frames/s "
            f"({rows[-1]['vs_read']:.2f} of the read)")
    return rows


def run_input(
    name: str, sources: list[VideoSource], templates: dict[str, Checkpoint | None], work: Path, memory: Memory,
    args: argparse.Namespace,
) -> tuple[list[dict], dict[str, Any]]:
    """Every stage over one input in a fresh workspace `work/runs/name`; rows and what routing_cost reuses."""
    root = work / "runs" / name
    if not args.pass1_only:  # pass 1 alone reuses an ingested store (an unchanged video is skipped)
        shutil.rmtree(root, ignore_errors=True)
    url = store_url(str(root), name)
    height, width, channels = stored_frame_size(templates["small"])
    prep = Preprocess(size=(height, width), gray=channels == 1)
    device = pick_device(args.device)
    budget = BatchBudget(args.budget)
    stages: list[dict] = []
    say(f"{name}: {len(sources)} video(s), stored at {height}x{width} {'gray' if channels == 1 else 'RGB'}")

    with measured(memory, stages, "ingest", device):
        frames = sum(ingest_video(url, s, prep, dataset=name).frames for s in sources)
    ids = [s.video_id for s in sources]
    first = ClipStore.open(url).video(ids[0])
    small = fit(templates["small"], "small", first, root / "checkpoints", seed=0)
    if args.pass1_only:
        return pass1_against_read(name, url, ids, small, frames, memory, args), {}
    t0 = time.perf_counter()
    bare_read(url, ids)
    read_fps = frames / (time.perf_counter() - t0)
    large = fit(templates["large"], "large", first, root / "checkpoints", seed=1)
    result = score_videos(url, small, large, budget, compute=compute(args), mapper=TimedMap(memory, stages, device))
    for rec, out in ((stages[1], result.small), (stages[3], result.large)):
        rec.update(clips=out.calls, loop_s=out.seconds)
    stages[2]["clips"] = len(result.clips)
    passes = result.passes
    result.seconds["total"] = sum(r["seconds"] for r in stages[1:])  # as score_videos reports it
    with measured(memory, stages, "tables", device):
        write_run(str(root), name, RUN_ID, result, small, large, budget, compute=compute(args))
    with measured(memory, stages, "report", device):
        build_report(str(root), [RunRef(name, RUN_ID)], name=RUN_ID)
    stages.append({
        "stage": "end_to_end", "seconds": sum(r["seconds"] for r in stages), "peak": max(r["peak"] for r in stages),
        "before": stages[0]["before"], "threads": torch.get_num_threads(),
        **({"gpu_peak_mb": max(r["gpu_peak_mb"] for r in stages)} if device.type == "cuda" else {}),
    })

    weights = weights_label(small, large, name)
    rows = [{
        "input": name, "weights": weights, "stage": r["stage"], "frames": frames, "clips": r.get("clips"),
        "seconds": r["seconds"], "frames_per_s": frames / r["seconds"] if r["seconds"] > 0 else float("inf"),
        "loop_s": r.get("loop_s"), "peak_rss_mb": r["peak"] / MB, "rss_before_mb": r["before"] / MB,
        "rss_delta_mb": (r["peak"] - r["before"]) / MB, "gpu_peak_mb": r.get("gpu_peak_mb"),
        "device": str(device), "threads": r["threads"], "read_fps": read_fps,
        "vs_read": frames / r["seconds"] / read_fps if r["seconds"] > 0 else float("inf"),
    } for r in stages]
    context = {"url": url, "passes": passes, "pass1_s": stages[1]["seconds"], "small": small, "large": large,
               "weights": weights}
    return rows, context


def routing_cost(context: dict[str, Any], budgets: list[float], args: argparse.Namespace) -> list[dict]:
    """Routed runs at each budget (sharing pass 1) against the large model alone over every clip."""
    url, passes, small, large = context["url"], context["passes"], context["small"], context["large"]
    n_clips = sum(len(p.starts) for p in passes)
    rows = []
    for b in budgets:
        say(f"routing cost: budget {b:g}")
        replay = ReplayMap(passes)
        result = score_videos(url, small, large, BatchBudget(b), compute=compute(args), mapper=replay)
        s = {**result.seconds, "pass2_wall": replay.pass2_wall}
        rows.append({
            "run": f"routed {b:g}", "budget": b, "clips": n_clips, "small_calls": n_clips,
            "large_calls": result.large.calls, "pass1_s": context["pass1_s"], "routing_s": s["routing"],
            "pass2_s": s["pass2_wall"], "frames_s": s["frames"],
            "total_s": context["pass1_s"] + s["routing"] + s["pass2_wall"] + s["frames"],
        })
    say("routing cost: large model alone over every clip")
    t, s = large.input.clip_len, large.input.stride
    store = ClipStore.open(url)
    t0 = time.perf_counter()
    calls, pass_s, frames_s = 0, 0.0, 0.0
    for p in passes:
        video = store.video(p.video)
        large.check_video(video)
        starts = np.array([st for _, st in clip_index(store, [p.video], t, s)], dtype=np.int64)
        t1 = time.perf_counter()
        out = second_pass(url, large, p.video, starts, compute=compute(args))
        t2 = time.perf_counter()
        aggregate_frames(video.n_frames, starts, t, out.calibrated)
        calls, pass_s, frames_s = calls + out.calls, pass_s + t2 - t1, frames_s + time.perf_counter() - t2
    large_only = time.perf_counter() - t0
    rows.append({
        "run": "large only", "budget": float("nan"), "clips": n_clips, "small_calls": 0, "large_calls": calls,
        "pass1_s": 0.0, "routing_s": 0.0, "pass2_s": pass_s, "frames_s": frames_s, "total_s": large_only,
    })
    for r in rows:
        r["ratio"] = r["total_s"] / large_only
        r["ratio_without_pass1"] = (r["total_s"] - r["pass1_s"]) / large_only
        r.update(weights=context["weights"], device=str(pick_device(args.device)), threads=torch.get_num_threads())
    return rows


def compute(args: argparse.Namespace) -> Compute:
    return Compute(device=args.device, batch=args.batch, precision=args.precision, compile=args.compile)


def model_table(templates: dict[str, Checkpoint | None], batches: list[int], device: torch.device,
                args: argparse.Namespace) -> list[dict]:
    """Clips/s of each model alone (copy to the device, conversion, `score`) on random clips of its
    stored size, per batch size: the network as trained (`build_model`), the scoring rewrite
    (`scoring_model`) and, unless --no-compile-table, the rewrite compiled; best of 3 timed batches
    after one warm-up (and the compile)."""
    rows = []
    for role, template in templates.items():
        if template is None:
            continue
        spec = template.input
        h, w, c = stored_frame_size(template)
        variants = {"as trained": template.build_model(device), "rewritten": template.scoring_model(device)}
        if not args.no_compile_table:
            variants["rewritten + compiled"] = template.scoring_model(device, compile=True)
        for name, model in variants.items():
            for b in batches:
                clips = torch.randint(0, 256, (b, spec.clip_len, h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                times = []
                with torch.inference_mode(), scoring_precision(device, args.precision):
                    t0 = time.perf_counter()
                    model.score(prepare_clips(clips, spec, model.value_range, device=device))
                    warm = time.perf_counter() - t0
                    for _ in range(3):
                        t0 = time.perf_counter()
                        model.score(prepare_clips(clips, spec, model.value_range, device=device))
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        times.append(time.perf_counter() - t0)
                rate = b / min(times)
                rows.append({"role": role, "arch": template.arch, "model": name, "batch": b, "clips_per_s": rate,
                             "frames_per_s": rate * spec.stride, "first_call_s": warm, "device": str(device)})
                say(f"  {role} {template.arch} {name}, batch {b}: {rate:.1f} clips/s (first call {warm:.1f} s)")
    return rows


# --- main ---------------------------------------------------------------------------------------


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ParameterError(f"{what} must be numbers separated by commas, got {text!r}") from exc
    return values


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"{platform.processor() or platform.machine()}, {available_cores()} cores "
            f"({psutil.cpu_count()} logical), {psutil.virtual_memory().total / (1 << 30):.0f} GiB; "
            f"torch {torch.__version__}; device {device} ({name})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ped2", default=str(REPO.parent / "shared" / "datasets" / "ped2"))
    parser.add_argument("--no-ped2", action="store_true", help="skip Ped2 (and the routing-cost table)")
    parser.add_argument("--small", help=f"small checkpoint (default {DEFAULT_CHECKPOINTS['small']} if present)")
    parser.add_argument("--large", help=f"large checkpoint (default {DEFAULT_CHECKPOINTS['large']} if present)")
    parser.add_argument("--minutes", default="1", help="lengths of the synthetic 720p videos, e.g. 1,10,60 ('' for none)")
    parser.add_argument("--budget", type=float, default=0.2, help="batch budget of the stage runs")
    parser.add_argument("--budgets", default="0.1,0.2,0.3", help="budgets of the routing-cost table (Ped2)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch", type=int, help="clips per model batch (default: 8 on a CPU, measured on CUDA)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--compile", action="store_true", help="torch.compile the scoring models")
    parser.add_argument("--batches", default="4,8,16",
                        help="batch sizes of the model table (each model alone: as trained, rewritten, compiled); '' for none")
    parser.add_argument("--no-compile-table", action="store_true", help="leave the compiled rows out of the model table")
    parser.add_argument("--work", help="keep the work (stores, videos, runs) in this folder; default a temporary one")
    parser.add_argument("--out", default=str(RESULTS / "throughput.parquet"))
    parser.add_argument("--pass1-only", action="store_true",
                        help="only the bare read of each store against pass 1, alternated --repeat times")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of read and pass 1 with --pass1-only")
    args = parser.parse_args()
    minutes = _floats(args.minutes, "--minutes")
    budgets = _floats(args.budgets, "--budgets")
    batches = [int(b) for b in _floats(args.batches, "--batches")]
    if any(m <= 0 for m in minutes) or any(not 0 < b <= 1 for b in budgets + [args.budget]) or min([args.batch or 1, *batches]) < 1:
        parser.error("minutes must be > 0, budgets in (0, 1], batch >= 1")
    for role in ("small", "large"):
        if getattr(args, role) and not Path(getattr(args, role)).is_file():
            parser.error(f"--{role} {getattr(args, role)}: no such checkpoint file")
    device = pick_device(args.device)
    templates = load_templates(args.small, args.large)

    rows: list[dict] = []
    routing: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vad-throughput-") as tmp, Memory() as memory:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sources = None if args.no_ped2 else ped2_sources(Path(args.ped2))
        if sources is not None:
            ped2_rows, context = run_input("ped2", sources, templates, work, memory, args)
            rows += ped2_rows
            routing = routing_cost(context, budgets, args) if budgets and not args.pass1_only else []
        for m in minutes:
            source = synthetic_source(work, m)
            part, _ = run_input(f"synthetic-720p-{m:g}min", [source], templates, work, memory, args)
            rows += part
    # last, so that the models it builds and compiles do not raise the stages' memory
    models = model_table(templates, batches, device, args) if batches and not args.pass1_only else []
    if models:
        model_out = Path(args.out).with_name(f"{Path(args.out).stem}_models.parquet")
        model_out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(models).to_parquet(model_out, index=False)
        say("\neach model alone on random clips (clips/s; frames/s = clips/s x stride):")
        say(pd.DataFrame(models).drop(columns=["device"]).to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
        say(f"saved {model_out}")
    if not rows:
        say("nothing measured: no Ped2 and no --minutes")
        return

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_parquet(out, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        shown = table.drop(columns=["device", "weights"], errors="ignore").dropna(axis=1, how="all")  # gpu_peak_mb on CPU
        say("\n" + shown.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
        for name, group in table.groupby("input", sort=False):
            if "weights" in group:
                say(f"{name}: {group['weights'].iloc[0]}")
        if routing:
            routing_table = pd.DataFrame(routing)
            routing_out = out.with_name(f"{out.stem}_routing.parquet")
            routing_table.to_parquet(routing_out, index=False)
            say("\nrouting cost on Ped2 (pass 1 shared by the routed runs; large only = large model over every clip):")
            say(routing_table.drop(columns=["device", "weights"]).to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
            say(f"saved {routing_out}")
    say(f"\nmachine: {machine(device)}; threads {torch.get_num_threads()}\nsaved {out}")


if __name__ == "__main__":
    main()
