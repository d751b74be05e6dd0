"""CPU cost of the StyleGAN2 generator: forward and forward+backward (gradient to ws, as in inversion) for
random-weight 256² (paper256 config) and 1024² (config-f) generators, in W+ and W++.

    python benchmarks/generator_cost.py [--repeats 3] [--threads N] [--resolutions 256 1024]

Prints one line per (resolution, latent space) with median seconds and the fwd+bwd / fwd ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from redegrade_stylegan2 import Generator

CONFIGS = {  # NVIDIA's published configurations (channel_base, mapping layers)
    256: dict(channel_base=16384, channel_max=512),
    512: dict(channel_base=32768, channel_max=512),
    1024: dict(channel_base=32768, channel_max=512),
}


def build(res: int) -> Generator:
    with torch.device("meta"):  # skip the random init of ~30 M parameters, then fill deterministically
        G = Generator(512, 0, 512, res, 3, mapping_kwargs=dict(num_layers=8), synthesis_kwargs=CONFIGS[res])
    G = G.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(G.named_parameters()) + list(G.named_buffers()):
            if name.endswith("resample_filter"):
                t.copy_(torch.tensor([1., 3, 3, 1]).outer(torch.tensor([1., 3, 3, 1])) / 64)
            elif name.endswith("affine.bias"):
                t.fill_(1)
            elif name.endswith(("bias", "noise_strength", "w_avg")):
                t.zero_()
            else:
                t.copy_(torch.randn(t.shape, generator=g))
    return G.eval().requires_grad_(False)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024], choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-wpp", action="store_true", help="skip the W++ measurements")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {args.threads} threads, batch 1, float32, median of {args.repeats}")
    for res in args.resolutions:
        G = build(res)
        w = G.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(1)), None)
        spaces = [("W+", w)] + ([] if args.no_wpp else [("W++", w.repeat_interleave(512, dim=1))])
        for space, ws in spaces:
            def fwd():
                with torch.no_grad():
                    G.synthesis(ws, noise_mode="const")

            def fwd_bwd():
                x = ws.detach().requires_grad_(True)
                G.synthesis(x, noise_mode="const").square().mean().backward()

            tf, tb = timed(fwd, args.repeats), timed(fwd_bwd, args.repeats)
            print(f"{res:>5}²  {space:<3}  forward {tf:7.3f} s   forward+backward {tb:7.3f} s   ratio {tb / tf:4.2f}")


if __name__ == "__main__":
    main()
