"""Throughput of the image-formation kernels: central slices (forward, forward+backward) and backprojection.

    python benchmarks/bench_kernels.py [--threads 2] [--repeats 10]

Prints slices/s for 256 rotations at 64³ and 128³ (gradients w.r.t. the volume and the rotations), and images/s
of :class:`BackprojectionAccumulator`, on CPU and on CUDA when available. Times are the median of the repeats
(best in brackets).
"""

from __future__ import annotations

import argparse
import statistics
import time

import roma
import torch

from cryopose.physics.backproject import BackprojectionAccumulator
from cryopose.physics.projection import extract_slices


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _line(label: str, count: int, unit: str, timing: tuple[float, float]) -> None:
    median, best = timing
    print(f"  {label:<34} {median * 1e3:8.1f} ms ({best * 1e3:7.1f})  {count / median:10.0f} {unit}/s")


def bench(device: torch.device, repeats: int, n: int = 256) -> None:
    gen = torch.Generator(device="cpu").manual_seed(0)
    for box in (64, 128):
        volume = torch.randn((box,) * 3, generator=gen).to(device).requires_grad_(True)
        rotvec = (torch.randn(n, 3, generator=gen) * 2).to(device).requires_grad_(True)

        def forward():
            with torch.no_grad():
                extract_slices(volume, roma.rotvec_to_rotmat(rotvec))

        def forward_backward():
            extract_slices(volume, roma.rotvec_to_rotmat(rotvec)).square().sum().backward()

        print(f"{device.type}, box {box}, {n} rotations:")
        _line("slices forward", n, "slices", _time(forward, device, repeats))
        _line("slices forward+backward", n, "slices", _time(forward_backward, device, repeats))

        images = torch.randn(n, box, box, generator=gen).to(device)
        rotations = roma.rotvec_to_rotmat(rotvec.detach())
        shifts = torch.randn(n, 2, generator=gen).to(device)
        acc = BackprojectionAccumulator(box, device=device)
        _line("backprojection add (pad 2)", n, "images", _time(lambda: acc.add(images, rotations, shifts), device,
                                                                 repeats))
        _line("backprojection finalize", 1, "maps", _time(acc.finalize, device, max(3, repeats // 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    bench(torch.device("cpu"), args.repeats)
    if torch.cuda.is_available():
        bench(torch.device("cuda"), args.repeats)


if __name__ == "__main__":
    main()
