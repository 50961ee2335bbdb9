"""The anomaly-map blur on ONNX Runtime CPU: the depthwise form of
:class:`stpm_edge.models.stpm.head.GaussianBlur` against the textbook 1-channel
separable convolution it replaced (same kernel, zero padding, border renormalisation).

    python benchmarks/bench_blur.py            # σ=4 (the default), maps 256², 512², 1920×1080

Each form is exported alone (opset 17) and timed in interleaved rounds (median of the
per-round medians); the outputs are compared, element for element.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import _median_ms  # noqa: E402

from stpm_edge.models.stpm.head import GaussianBlur, gaussian_kernel1d  # noqa: E402


class OneChannelBlur(torch.nn.Module):
    """The form before 2026-12-01: two 1-channel convolutions (1×k, then k×1)."""

    def __init__(self, sigma: float, size: tuple[int, int]) -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma)
        self.pad = (k.numel() - 1) // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1))
        self.register_buffer("ky", k.view(1, 1, -1, 1))
        self.register_buffer("inv_norm", 1.0 / self._conv(torch.ones(1, 1, *size)))

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, self.kx, padding=(0, self.pad)), self.ky, padding=(self.pad, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x) * self.inv_norm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--sizes", default="256x256,512x512,1920x1080", help="WxH,...")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=20)
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    print(f"# {platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, σ={args.sigma}")
    print("| map (W×H) | 1-channel form ms | depthwise form ms | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            x = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0))
            sessions = {}
            for name, module in (("one", OneChannelBlur(args.sigma, (h, w))), ("dw", GaussianBlur(args.sigma, (h, w)))):
                path = Path(tmp) / f"{name}-{w}x{h}.onnx"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module.eval(), (x,), str(path), opset_version=17, dynamo=False,
                                      input_names=["map"], output_names=["blurred"])
                sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"map": x.numpy()}
            outs = {k: s.run(None, feed)[0] for k, s in sessions.items()}
            samples: dict[str, list[float]] = {k: [] for k in sessions}
            for _ in range(args.rounds):
                for k, s in sessions.items():
                    samples[k].append(_median_ms(lambda s=s: s.run(None, feed), args.per_round))
            one, dw = (float(np.median(samples[k])) for k in ("one", "dw"))
            diff = float(np.abs(outs["one"] - outs["dw"]).max())
            print(f"| {w}×{h} | {one:.3f} | {dw:.3f} | {one / dw:.1f}× | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
