"""`ae3d`, the plain 3D-convolution baseline `topheavy` is compared with: the same levels, widths,
pooling and sigmoid output, but 3D (3x3x3) convolutions everywhere, so the two differ only in where
the network looks across time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vad.models._pooled_ae import Kernel
from vad.models.topheavy import TopHeavy, TopHeavyConfig


@dataclass
class AE3DConfig(TopHeavyConfig):
    arch: ClassVar[str] = "ae3d"


class AE3D(TopHeavy):
    arch = "ae3d"
    config_class = AE3DConfig
    kernels: ClassVar[tuple[Kernel, ...]] = ((3, 3, 3),) * 4
