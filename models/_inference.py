"""A trained model rewritten for fast scoring: same scores, fewer and cheaper operations.

`for_inference(model)` returns a copy in eval mode with three rewrites, each exact up to float
rounding (the scoring contract test compares every architecture with and without them):

- **Batch norm folded into the convolution before it.** In eval mode a BatchNorm after a Conv is
  an affine map per output channel, so it goes into the convolution's weight and bias and the
  separate pass over the activations disappears.
- **Thin stride-2 transposed 3D convolutions as one ordinary convolution.** A ConvTranspose3d with
  kernel 4, stride 2, padding 1 makes each output voxel from 2 taps per axis, and which 2 depends
  only on the voxel's parity. So it equals a 3x3x3 convolution of the input with 8 x C_out output
  channels (one per parity, unused taps zero) followed by interleaving the parities. That does
  27/8 as many multiply-adds, but as one oneDNN convolution instead of PyTorch's col2vol path; it
  pays only where C_out is small (the last decoder layer, C_out 1 or 3). On 2 CPU cores, batch of
  16, 16x8x64x96 input: C_out 1 takes 93 ms against 183 ms, C_out 3 219 against 268, C_out 8 528
  against 451 (`benchmarks/throughput.py` measures the whole pass).
- **Channels-last memory** for the weights of models with 3D convolutions (`channels_last_3d`),
  which oneDNN and cuDNN prefer; the input stays in the standard layout `prepare_clips` gives
  (converting it first was no faster here).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# at most this many output channels take the parity form (see the module docstring's measurements)
PARITY_MAX_OUT = 3

_CONV_BN = (
    (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
    (nn.ConvTranspose2d, nn.BatchNorm2d), (nn.ConvTranspose3d, nn.BatchNorm3d),
)

# per axis, the 3 input taps (over the input padded by 1) that make an even and an odd output
# position, as indices into the transposed kernel's 4 taps; 4 is a zero tap
_PARITY_TAPS = torch.tensor([[3, 1, 4], [4, 2, 0]])


class ParityConvTranspose3d(nn.Module):
    """A ConvTranspose3d(kernel 4, stride 2, padding 1) computed as one 3x3x3 convolution over the
    8 output parities, then interleaved (see the module docstring)."""

    def __init__(self, conv: nn.ConvTranspose3d) -> None:
        super().__init__()
        if not is_parity_convertible(conv):
            raise ValueError(f"not a kernel-4, stride-2, padding-1 transposed convolution: {conv}")
        w = conv.weight.detach()  # (C_in, C_out, 4, 4, 4)
        c_out = w.shape[1]
        wt = F.pad(w.transpose(0, 1), (0, 1, 0, 1, 0, 1))  # (C_out, C_in, 5, 5, 5); tap 4 is zero
        taps = _PARITY_TAPS.to(w.device)
        g = wt[:, :, taps][:, :, :, :, taps][..., taps]  # (C_out, C_in, pt, i, ph, j, pw, k)
        weight = g.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(c_out * 8, w.shape[0], 3, 3, 3)
        self.c_out = c_out
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        bias = None if conv.bias is None else conv.bias.detach().repeat_interleave(8)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        y = F.conv3d(x, self.weight, self.bias, padding=1)  # (B, C_out * 8, T, H, W)
        y = y.view(b, self.c_out, 2, 2, 2, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, self.c_out, 2 * t, 2 * h, 2 * w)


def is_parity_convertible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.ConvTranspose3d and conv.kernel_size == (4, 4, 4) and conv.stride == (2, 2, 2)
        and conv.padding == (1, 1, 1) and conv.output_padding == (0, 0, 0) and conv.dilation == (1, 1, 1)
        and conv.groups == 1
    )


def _fold_batch_norms(module: nn.Module) -> None:
    """Fold each BatchNorm that directly follows a convolution inside a Sequential."""
    for child in module.children():
        _fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if (type(conv), type(bn)) in _CONV_BN and bn.track_running_stats:
                transpose = isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d))
                module[i] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                module[i + 1] = nn.Identity()


def _swap_thin_transposed(module: nn.Module) -> None:
    for name, child in module.named_children():
        if is_parity_convertible(child) and child.out_channels <= PARITY_MAX_OUT:
            setattr(module, name, ParityConvTranspose3d(child))
        else:
            _swap_thin_transposed(child)


def uses_conv3d(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, ParityConvTranspose3d)) for m in model.modules())


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with the rewrites of the module docstring; `model` is untouched."""
    fast = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold_batch_norms(fast)
        _swap_thin_transposed(fast)
    if uses_conv3d(fast):
        fast = fast.to(memory_format=torch.channels_last_3d)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast
