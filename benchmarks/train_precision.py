"""Training-step throughput in bf16 autocast vs fp32 on this CPU, measured in one run (alternated rounds).

kgl-glom-v2's training step: MobileNet_V2 at 112 px, batch 48, AdamW, forward + backward + step.
bf16 is measured only where it is native (AMX / AVX512-BF16): elsewhere PyTorch emulates it.

    python benchmarks/train_precision.py [--steps 10] [--rounds 3] [--input-size 112]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def _step_rate(model, opt, x, y, amp, steps: int) -> float:
    crit = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=48)
    args = ap.parse_args()
    from kgl.models import build_model
    from kgl.tl._device import cpu_has_bf16

    if not cpu_has_bf16():
        print("this CPU has no native bf16 (AMX / AVX512-BF16): bf16 training is not measured here")
        return
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", weights=None).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    y = torch.randint(0, 2, (args.batch_size,))
    _step_rate(model, opt, x, y, None, 2)  # warm-up, both paths
    _step_rate(model, opt, x, y, torch.bfloat16, 2)
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):  # alternated, so drift on a shared machine hits both
        rates["fp32"].append(_step_rate(model, opt, x, y, None, args.steps))
        rates["bf16"].append(_step_rate(model, opt, x, y, torch.bfloat16, args.steps))
    f, b = (sum(v) / len(v) for v in (rates["fp32"], rates["bf16"]))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"train step, mobilenet_v2 {args.input_size} px, batch {args.batch_size}, {args.rounds}x{args.steps} steps")
    print(f"fp32 {f:.1f} patches/s  bf16 {b:.1f} patches/s  bf16/fp32 {b / f:.2f}x")


if __name__ == "__main__":
    main()
