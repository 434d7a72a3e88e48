"""UCF-Crime (Sultani et al., CVPR 2018), used for unsupervised (normal-only) training.

Videos sit anywhere under the root in category folders. The temporal annotation file
(`Temporal_Anomaly_Annotation_for_Testing_Videos.txt`, found anywhere under the root) defines the
test split. Training uses the `Normal_Videos*` files it does not list; the other unlisted videos
are UCF-Crime's weakly labelled anomalous training videos (anomalous somewhere, frames unknown),
unusable for normal-only training, so they are skipped. Ids are file stems (`Abuse028_x264`), by
`video_id_for` (a renamed copy with a space in its name still ingests).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vad.tasks.sources.datasets._base import VIDEO_EXTENSIONS, VideoSource, video_id_for

from vad.errors import DatasetLayoutError

_ANNOTATION = "temporal_anomaly_annotation"
_NORMAL_PREFIX = "Normal_Videos"
_INTEGER = re.compile(r"-?\d+")


def detect(root: Path) -> bool:
    """True when a temporal annotation file is under `root` (a folder it cannot read is passed over)."""
    return bool(_annotation_files(root))


def list_videos(root: Path) -> list[VideoSource]:
    """Annotated test videos with their anomalous frame ranges, and the unlisted normal videos for training."""
    found = _annotation_files(root, strict=True)
    if len(found) != 1:
        raise DatasetLayoutError(
            f"{root}: expected one Temporal_Anomaly_Annotation*.txt file, found {[str(p) for p in found] or 'none'}"
        )
    annotation = _read_annotation(found[0])
    files = _video_files(root)
    videos: list[VideoSource] = []
    for name, ranges in annotation.items():
        if name not in files:
            raise DatasetLayoutError(f"{found[0]}: lists {name!r}, but there is no such video file under {root}")
        videos.append(VideoSource(video_id_for(name), "test", str(files[name]), "file", label_ranges=ranges,
                                  relative=files[name].relative_to(root).as_posix()))
    videos += [
        VideoSource(video_id_for(name), "train", str(path), "file", relative=path.relative_to(root).as_posix())
        for name, path in files.items()
        if name.startswith(_NORMAL_PREFIX) and name not in annotation
    ]
    return videos


def _walk(root: Path, *, strict: bool = False) -> list[Path]:
    """Every file under `root` in a stable order, skipping hidden files and folders. With `strict`,
    a folder that cannot be read is an error naming it, not videos silently left out."""

    def unreadable(exc: OSError) -> None:
        raise DatasetLayoutError(f"{exc.filename}: cannot read this folder ({exc.strerror})") from exc

    out: list[Path] = []
    for folder, dirs, names in os.walk(root, onerror=unreadable if strict else None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(folder, n) for n in sorted(names) if not n.startswith(".")]
    return out


def _annotation_files(root: Path, *, strict: bool = False) -> list[Path]:
    return [p for p in _walk(root, strict=strict) if _ANNOTATION in p.name.lower() and p.suffix.lower() == ".txt"]


def _video_files(root: Path) -> dict[str, Path]:
    """Video files by name. The official release holds 1,950 mp4 files for 1,900 videos (its README:
    "50 duplicated"), so same-name copies of equal size count as one; differing ones are an error."""
    files: dict[str, Path] = {}
    for path in _walk(root, strict=True):
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        first = files.setdefault(path.name, path)
        if first != path and first.stat().st_size != path.stat().st_size:
            raise DatasetLayoutError(f"{path}: another video with the same name differs in size: {first}")
    return files


def _read_annotation(path: Path) -> dict[str, tuple[tuple[int, int], ...]]:
    """`file class start1 end1 start2 end2` rows as 0-based half-open frame ranges per file name.

    The annotation does not state its frame base. We read start/end as 0-based frame numbers with
    the end frame included, so a segment becomes range(start, end + 1); -1 -1 means no segment.
    """
    rows: dict[str, tuple[tuple[int, int], ...]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6 or not all(_INTEGER.fullmatch(f) for f in fields[2:]):
            raise DatasetLayoutError(f"{path}:{n}: expected 'file class start1 end1 start2 end2', got {line.strip()!r}")
        name, label = fields[:2]
        s1, e1, s2, e2 = (int(f) for f in fields[2:])
        ranges: list[tuple[int, int]] = []
        for start, end in ((s1, e1), (s2, e2)):
            if start == end == -1:
                continue
            if not 0 <= start <= end:
                raise DatasetLayoutError(f"{path}:{n}: segment {start} {end} is not a frame range")
            ranges.append((start, end + 1))
        if label.lower() == "normal" and ranges:
            raise DatasetLayoutError(f"{path}:{n}: a Normal video with anomalous segments")
        if name in rows:
            raise DatasetLayoutError(f"{path}:{n}: {name!r} is listed twice")
        rows[name] = tuple(ranges)
    return rows
