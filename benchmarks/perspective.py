"""A camera with strong perspective, made from UCSD Ped2: every frame seen through one homography.

Ped2's walkway is filmed nearly side-on, so a walker measures about the same anywhere in the frame.
Issue 25 names a camera we do not have (an outdoor walkway with strong perspective), where a walker
near the camera is several times taller and faster in pixels than one far off, and where the models
must learn what is normal at each place. This script makes such a camera from Ped2's real footage:
the frame's top edge is squeezed to `--top-scale` of its width (the bottom edge stays), so a walker
at the top is drawn about that many times smaller and slower than the same walker at the bottom.
The anomalies and labels stay Ped2's (frame-level labels do not move with a warp).

It writes the generic folder layout `vad run` reads (`train/train_01/`..., `test/test_01/`... of PNG
frames, `labels.csv`). The test labels only measure: nothing here chooses a setting.

    python benchmarks/perspective.py --ped2 ../shared/datasets/ped2 --out /tmp/ped2-perspective
    vad run --dataset ped2p --source /tmp/ped2-perspective --report ped2p
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np


def homography(height: int, width: int, top_scale: float) -> np.ndarray:
    """(3, 3) map from a frame onto itself: the top edge squeezed about the centre to `top_scale`
    of the width, the bottom edge kept."""
    inset = width * (1.0 - top_scale) / 2.0
    src = np.float32([[0, 0], [width, 0], [0, height], [width, height]])
    dst = np.float32([[inset, 0], [width - inset, 0], [0, height], [width, height]])
    return cv2.getPerspectiveTransform(src, dst)


def warp_folder(src: Path, dst: Path, top_scale: float) -> int:
    """Every image of the frame folder `src`, warped, as PNG frames 000.png... in `dst`; frame count."""
    names = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".bmp"))
    if not names:
        raise SystemExit(f"{src}: no frame images")
    dst.mkdir(parents=True, exist_ok=True)
    m = None
    for i, name in enumerate(names):
        frame = cv2.imread(str(name), cv2.IMREAD_COLOR)
        if frame is None:
            raise SystemExit(f"{name}: not a readable image")
        if m is None:
            m = homography(frame.shape[0], frame.shape[1], top_scale)
        out = cv2.warpPerspective(frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_AREA,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.imwrite(str(dst / f"{i:03d}.png"), out)
    return len(names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ped2", default="../shared/datasets/ped2", help="UCSD Ped2 (training/frames, testing/frames, test_labels.csv)")
    ap.add_argument("--out", required=True, help="folder to write (must not exist)")
    ap.add_argument("--top-scale", type=float, default=1 / 3, help="the top edge's width, of the frame's (default 1/3)")
    args = ap.parse_args(argv)
    ped2, out = Path(args.ped2), Path(args.out)
    if not 0.05 <= args.top_scale <= 1.0:
        ap.error(f"--top-scale must be in [0.05, 1], got {args.top_scale}")
    for need in (ped2 / "training" / "frames", ped2 / "testing" / "frames", ped2 / "test_labels.csv"):
        if not need.exists():
            ap.error(f"{need}: missing (is --ped2 the UCSD Ped2 folder?)")
    if out.exists():
        ap.error(f"{out}: already exists; give a new folder")
    counts = {}
    for split, folder in (("train", "training"), ("test", "testing")):
        for video in sorted(p for p in (ped2 / folder / "frames").iterdir() if p.is_dir()):
            counts[f"{split}/{split}_{video.name}"] = warp_folder(video, out / split / f"{split}_{video.name}", args.top_scale)
    with open(ped2 / "test_labels.csv", newline="") as f, open(out / "labels.csv", "w", newline="") as g:
        rows = list(csv.DictReader(f))
        w = csv.writer(g)
        w.writerow(["video", "frame", "label"])
        for r in rows:
            w.writerow([f"test_{r['video']}", r["frame"], r["label"]])
    (out / "perspective.json").write_text(json.dumps(
        {"source": str(ped2.resolve()), "top_scale": args.top_scale, "frames": counts}, indent=1))
    print(f"{out}: {sum(counts.values()):,} frames in {len(counts)} videos, top edge at {args.top_scale:.3f} of the width")
    return 0


if __name__ == "__main__":
    sys.exit(main())
