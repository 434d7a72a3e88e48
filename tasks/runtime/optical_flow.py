"""Dense optical flow between consecutive frames (Lucas-Kanade), in torch, batched, on any device.

The flow input of a model (`InputSpec.flow`) and so the optical-flow teacher of score distillation
(`tasks/learning/distill.py`) read it. No flow estimator is part of the stack, and a learned one (FlowNet,
RAFT) would need weights from outside. Lucas-Kanade needs none and costs no iterations: per pixel it
solves the 2x2 least-squares system of brightness constancy, Ix u + Iy v + It = 0, over a square
window,

    [Sxx + r   Sxy    ] [u]     [Sxt]
    [Sxy       Syy + r] [v] = - [Syt]

where S.. are window means of products of the derivatives (Horn and Schunck's estimates over the
2x2x2 cube of both frames) and r a small ridge that sends the flow of flat, textureless regions (a
still background) to 0 instead of to noise. The window means are separable box filters, so a batch of
8 clips of 16 frames at 128x192 takes about 0.1 s on 2 cores (docs/models.md, "Optical-flow input").

It is a small-motion method: it holds to about 3 pixels per frame on smooth texture. Flow is found at
half the model's resolution (`scale`), which doubles that reach in model pixels and quarters the
cost, then brought back to full size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vad.errors import ParameterError

WINDOW = 7  # pixels, at the resolution the flow is found
RIDGE = 1e-4  # for intensities in [0, 1]
SCALE = 2  # flow is found at 1/SCALE of the model's resolution
MAX_SPEED = 4.0  # pixels per frame (model resolution) at the ends of the encoded range


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a `window` x `window` square around each pixel (zero beyond the border), per channel."""
    c = x.shape[1]
    k = torch.full((c, 1, 1, window), 1.0 / window, device=x.device, dtype=x.dtype)
    x = F.conv2d(x, k, padding=(0, window // 2), groups=c)
    return F.conv2d(x, k.transpose(2, 3), padding=(window // 2, 0), groups=c)


def lucas_kanade(prev: torch.Tensor, nxt: torch.Tensor, *, window: int = WINDOW, ridge: float = RIDGE) -> torch.Tensor:
    """Gray frames (N, 1, H, W) in [0, 1], twice -> flow (N, 2, H, W) in pixels from `prev` to `nxt`
    (channel 0: x, rightwards; channel 1: y, downwards)."""
    if prev.shape != nxt.shape or prev.ndim != 4 or prev.shape[1] != 1:
        raise ParameterError(f"lucas_kanade takes two (N, 1, H, W) frames of one shape, got {tuple(prev.shape)} and {tuple(nxt.shape)}")
    if window < 1 or window % 2 == 0 or not ridge > 0:
        raise ParameterError(f"lucas_kanade needs an odd window >= 1 and ridge > 0, got {window} and {ridge}")
    both = F.pad(torch.cat([prev.float(), nxt.float()], dim=1), (0, 1, 0, 1), mode="replicate")
    # Derivatives over the 2x2x2 cube of both frames, at the centre of each pixel's cube.
    ix = (both[..., :-1, 1:] - both[..., :-1, :-1] + both[..., 1:, 1:] - both[..., 1:, :-1]).mean(dim=1, keepdim=True) / 2
    iy = (both[..., 1:, :-1] - both[..., :-1, :-1] + both[..., 1:, 1:] - both[..., :-1, 1:]).mean(dim=1, keepdim=True) / 2
    dt = both[:, 1:2] - both[:, 0:1]
    it = (dt[..., :-1, :-1] + dt[..., :-1, 1:] + dt[..., 1:, :-1] + dt[..., 1:, 1:]) / 4
    sxx, sxy, syy, sxt, syt = _box(torch.cat([ix * ix, ix * iy, iy * iy, ix * it, iy * it], dim=1), window).unbind(dim=1)
    sxx, syy = sxx + ridge, syy + ridge
    det = sxx * syy - sxy * sxy  # > 0: the ridge makes the system positive definite
    u = (sxy * syt - syy * sxt) / det
    v = (sxy * sxt - sxx * syt) / det
    return torch.stack([u, v], dim=1)


def flow_clips(gray: torch.Tensor, *, max_speed: float = MAX_SPEED, scale: int = SCALE, **kwargs: float) -> torch.Tensor:
    """Gray clips (B, 1, T, H, W) in [0, 1] -> encoded flow (B, 3, T, H, W) in [0, 1].

    Channels: 0.5 + u / (2 max_speed) and 0.5 + v / (2 max_speed) (0.5: still), and the speed
    |(u, v)| / max_speed, each clipped to [0, 1]. Frame t holds the flow from t-1 to t; the first frame
    repeats the second's, as the motion input repeats its first difference.
    """
    if gray.ndim != 5 or gray.shape[1] != 1:
        raise ParameterError(f"flow_clips takes gray clips (B, 1, T, H, W), got {tuple(gray.shape)}")
    b, _, t, h, w = gray.shape
    if t < 2:
        raise ParameterError("flow input needs clips of at least 2 frames")
    with torch.autocast(gray.device.type, enabled=False):  # float32 even inside a scoring pass's autocast
        return _flow_clips(gray.float(), max_speed=max_speed, scale=scale, **kwargs)


def _flow_clips(gray: torch.Tensor, *, max_speed: float, scale: int, **kwargs: float) -> torch.Tensor:
    b, _, t, h, w = gray.shape
    frames = gray.permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w)
    if scale > 1 and h >= 8 * scale and w >= 8 * scale:
        frames = F.interpolate(frames, size=(h // scale, w // scale), mode="area")
    else:
        scale = 1
    frames = frames.reshape(b, t, 1, *frames.shape[-2:])
    fh, fw = frames.shape[-2:]
    uv = lucas_kanade(frames[:, :-1].reshape(-1, 1, fh, fw), frames[:, 1:].reshape(-1, 1, fh, fw), **kwargs) * scale
    speed = (uv[:, :1] * uv[:, :1] + uv[:, 1:] * uv[:, 1:]).sqrt()
    encoded = torch.cat([0.5 + uv / (2 * max_speed), speed / max_speed], dim=1)
    if scale > 1:
        encoded = F.interpolate(encoded, size=(h, w), mode="bilinear", align_corners=False)
    encoded = encoded.clamp_(0.0, 1.0).reshape(b, t - 1, 3, h, w)
    encoded = torch.cat([encoded[:, :1], encoded], dim=1)  # (B, T, 3, H, W)
    return encoded.permute(0, 2, 1, 3, 4).contiguous()
