"""A level compiled ahead of time for batch 1 on a CPU: the ``compiled`` runtime's fast path.

    run = aot_capture(folded_level, example)   # example: a (1, C, H, W) input
    logits = run(x)                            # x of the example's shape

Why (issue 20, WRN-14-2 and ResNet-42, batch 1, one thread): a frozen ``torch.compile``
capture runs each convolution through PyTorch's oneDNN op, whose host work (about 24 us a call,
measured by ``bench.conv_share``) and the capture's Python wrapper and guards made a small
level 1.9-2.6x ONNX Runtime. Here:

* In a level whose convolutions are all small and plain, each becomes a GEMM (``GemmConv``): an
  im2col that Inductor fuses with the batch norm and ReLU before it, then MKL's GEMM on the
  level's weights, the bias and what follows fused into the next generated kernel; on an
  AVX-512 CPU at one thread a 3x3 stride-1 one (weight up to ``DIRECT_MAX_WEIGHT_BYTES``) runs
  instead as one direct kernel (``dvn_kernels.direct``), without the im2col matrix. A level with
  a large one (more than ``GEMM_MACS`` multiply-adds, where oneDNN's direct convolution is
  faster) or a grouped or dilated one keeps all its convolutions (oneDNN, prepacked, ReLU and
  add fused).
* The graph is exported (``torch.export``) and compiled with AOTInductor, the weights held in
  the package (frozen, and prepacked for oneDNN, in a level of convolutions): a call is one C++
  entry, without Dynamo's guards or the Python wrapper between kernels. It holds the GIL while
  it runs (torch's package loader does).

The compiled kernels use the thread count torch has when the level is compiled. Compiling takes
about 10 s a level here: it happens once, when the level is loaded. Compiled
code lives in a private temporary folder and Inductor's own cache; nothing is stored beside the
unit file, so no compiled code is ever loaded from a file someone else could have written.
"""

from __future__ import annotations

import copy
import os
import tempfile
import threading
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dvn_kernels.direct import available as direct_kernel_available
from dvn_kernels.direct import direct_conv3x3_nhwc

#: convolutions with at most this many multiply-adds per image run as a GEMM. Measured at batch
#: 1, one thread (Intel Xeon): WRN-14-2's convolutions (up to 7.2 M) were faster as GEMMs,
#: ResNet-42 level 4's (38 M) slower than oneDNN's.
GEMM_MACS = 10_000_000
#: inputs at least this wide are read channels last by the im2col (vectorised over channels);
#: narrower ones (an RGB stem) in the weight's own order, rows of the kernel innermost: a
#: 3-channel 7x7 stem's im2col read channels last took 299 us, against ORT's 1.47 ms for the
#: whole of ResNet-42 level 1
CHANNELS_LAST_FROM = 8

#: 3x3 stride-1 convolutions with a weight up to this size run as the direct kernel
#: (``dvn_kernels.direct``), no im2col; larger ones stay GEMMs. Measured one thread (Intel
#: Xeon, ``bench.direct_conv``): direct / MKL's GEMM alone 0.98-1.09 up to 128 x 128 channels
#: (576 kB), 1.66 at 256 x 256 (2.4 MB, read once per tile of pixels). On one thread only:
#: the level's call at one thread, interleaved, was 0.88 / 0.96x the GEMMs' at WRN-14-2 levels
#: 1 / 2 and 0.96 / 0.99x at ResNet-42's; at two (the kernel's tiles split over the threads,
#: MKL's GEMM threaded) 0.89x at WRN-14-2 level 1 but 1.04-1.05x at the others.
DIRECT_MAX_WEIGHT_BYTES = 1 << 20

# Inductor's config is process-wide: compilations are serialised.
COMPILING = threading.Lock()


class GemmConv(nn.Module):
    """``conv`` (ungrouped, undilated, zero padding) as im2col and a GEMM, channels last
    inside: the same function, in a form whose pieces Inductor fuses and compiles. Where
    ``direct`` (3x3, stride 1, channels last, a weight up to ``DIRECT_MAX_WEIGHT_BYTES``, one
    torch thread, an AVX-512 CPU), as the direct kernel on the padded channels-last input
    instead: the same weight, no im2col.

    The weight is held as the GEMM's (K, N) right-hand matrix, so that MKL runs its NN kernel.
    Held (N, K), as ``F.linear`` takes it, MKL ran its TN kernel: ResNet-42 level 1's 39 GEMMs
    (pixels x 9 channels x channels) took 1.47 ms warm and 1.96 ms with each layer's own
    weight (as in the network), against 1.12 and 1.69 ms NN; the level's compiled call 2.05-2.26
    against 2.30-2.52 ms, interleaved with ONNX Runtime (2-core Xeon, one thread)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or \
                isinstance(conv.padding, str):
            raise ValueError(f"conv: expected an ungrouped, undilated convolution with "
                             f"numeric zero padding, got {conv}")
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.channels_last = conv.in_channels >= CHANNELS_LAST_FROM
        #: runs as the direct kernel (no im2col): 3x3, stride 1, channels last, on AVX-512
        self.direct = (self.channels_last and conv.kernel_size == (3, 3)
                       and conv.stride == (1, 1) and conv.out_channels % 16 == 0
                       and conv.weight.numel() * 4 <= DIRECT_MAX_WEIGHT_BYTES
                       and torch.get_num_threads() == 1 and direct_kernel_available())
        w = conv.weight.detach()
        if self.channels_last:  # (out, kh, kw, in)
            w = w.permute(0, 2, 3, 1)
        # held (K, N): the GEMM is then MKL's NN kernel, not TN (see the class doc)
        self.weight = nn.Parameter(w.reshape(w.shape[0], -1).t().contiguous(),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(),
                                                                requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if self.direct:  # (the GEMM's weight, (kh, kw, C) x N, is the kernel's (kh, kw, C, N))
            xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
            y = direct_conv3x3_nhwc(xp, self.weight.view(kh, kw, -1, self.weight.shape[1]),
                                    self.bias)
            return y.permute(0, 3, 1, 2)
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        n = x.shape[0]
        if kh == 1 and kw == 1:
            x = x[:, :, ::sh, ::sw]
            ho, wo = x.shape[2], x.shape[3]
            cols = x.permute(0, 2, 3, 1).reshape(n * ho * wo, -1)
        else:
            patches = x.unfold(2, kh, sh).unfold(3, kw, sw)  # n, c, ho, wo, kh, kw
            ho, wo = patches.shape[2], patches.shape[3]
            order = (0, 2, 3, 4, 5, 1) if self.channels_last else (0, 2, 3, 1, 4, 5)
            cols = patches.permute(*order).reshape(n * ho * wo, -1)
        y = cols @ self.weight if self.bias is None else torch.addmm(self.bias, cols, self.weight)
        return y.view(n, ho, wo, -1).permute(0, 3, 1, 2)


def _gemm_worthy(conv: nn.Conv2d, macs: int) -> bool:
    return (conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and macs <= GEMM_MACS)


def gemm_convs(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """``module`` with every convolution replaced by ``GemmConv`` in place, when every one is
    small enough (per image, at ``example``'s shape) and plain; else unchanged. Returns it.

    All or none: a GEMM's output is channels last, and one convolution left among GEMMs made
    Inductor lay the level out for it: ResNet-42 level 4 with only its stem as a GEMM took
    38 ms against 23 ms with none."""
    macs: dict[nn.Module, int] = {}

    def count(conv, _inputs, out):
        macs[conv] = (out[:1].numel() * conv.in_channels // conv.groups
                      * conv.kernel_size[0] * conv.kernel_size[1])
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(count) for m in convs]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    if not all(c in macs and _gemm_worthy(c, macs[c]) for c in convs):
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, GemmConv(child))
    return module


def _inductor_options(gemms: bool) -> dict:
    """A level of convolutions compiles with freezing, which prepacks their weights for
    oneDNN. A level of GEMMs compiles without it: freezing would have nothing to fold there
    (batch norms are folded, weights laid out in ``GemmConv``), and its weight packing made
    oneDNN linear layers that cost host work in every call (WRN-14-2 level 1: 508 us against
    356 us calling MKL's GEMM).

    Not ``cpp.weight_prepack=False`` for the GEMM levels, as before: Inductor registers its
    packing patterns once per process, at the first compilation with freezing, only if
    prepacking is on then, and applies them whatever the setting later. So a GEMM level
    compiled first left every later convolution level unpacked (ResNet-42 level 4: 41 ATen
    convolutions instead of 41 prepacked oneDNN ones, 1.29-1.31x ONNX Runtime against
    1.20-1.22x, one thread), and a convolution level compiled first made every later GEMM
    level's GEMMs oneDNN linear layers."""
    return {"freezing": not gemms}


def aot_capture(module: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor],
                                                                      torch.Tensor]:
    """``module`` (an inference network on a CPU, batch norms folded) compiled with
    AOTInductor for inputs of ``example``'s shape, small convolutions as GEMMs. ``module`` is
    not changed. Raises what ``torch.export`` or Inductor raise when the graph cannot be
    compiled."""
    net = gemm_convs(copy.deepcopy(module).eval(), example)
    gemms = any(isinstance(m, GemmConv) for m in net.modules())
    # Gradients off for the compilation too: with them on, freezing does not prepack the
    # convolutions for oneDNN (ResNet-42 level 4: 38 ms against 20 ms).
    with torch.no_grad(), COMPILING, tempfile.TemporaryDirectory(prefix="dvn-aot-") as folder:
        program = torch.export.export(net, (example,))
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=os.path.join(folder, "level.pt2"),
            inductor_configs=_inductor_options(gemms))
        runner = torch._inductor.aoti_load_package(package)
        run = _direct(runner, example)
    shape = tuple(example.shape)

    def call(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != shape:
            raise ValueError(f"x: this compiled level takes inputs of shape {list(shape)}, "
                             f"got {list(x.shape)}")
        return run(x)
    return call


def _direct(runner, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loaded package's entry called without its pytree round trip (20 us a call of
    WRN-14-2 level 1's 390 us), when its answer on ``example`` is the public call's; else the
    public call."""
    public = runner(example)
    loader = getattr(runner, "loader", None)
    if isinstance(public, torch.Tensor) and hasattr(loader, "boxed_run"):
        out = loader.boxed_run([example])
        if len(out) == 1 and torch.equal(out[0], public):
            return lambda x: loader.boxed_run([x])[0]
    return runner
