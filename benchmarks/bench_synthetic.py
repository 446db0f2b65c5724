"""Cost of the synthetic phantom (issue #3 item 7).

Baseline: building the phantom canvas (loading the nilearn ICBM152 template, head layers,
regions, base contrasts), which every process pays once. Then, in the same process:

* one participant-session with four modalities written as BIDS (target < 15 s);
* a 2-participant dataset (target < 40 s; cold = canvas + dataset, as in a fresh process);
* one `model_space_sample` (the demo-model training loop calls it per sample).

Prints wall and CPU seconds (the machine is shared: CPU time is the steadier figure), each
as a ratio to the canvas build, and the peak RSS.

    python benchmarks/bench_synthetic.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def timed(label: str, func, baseline: tuple[float, float] | None = None):
    wall, cpu = time.perf_counter(), time.process_time()
    result = func()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ratio = "" if baseline is None else \
        f"   x{wall / baseline[0]:.2f} wall, x{cpu / baseline[1]:.2f} CPU of the canvas build"
    print(f"{label:<44} {wall:7.2f} s wall {cpu:7.2f} s CPU{ratio}", flush=True)
    return result, (wall, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from shiva_bids.synthetic import generate_dataset, model_space_sample
    from shiva_bids.synthetic.anatomy import load_anatomy
    from shiva_bids.synthetic.contrasts import base_contrasts

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    _, base = timed("canvas build (baseline)", lambda: (load_anatomy(), base_contrasts()))
    with tempfile.TemporaryDirectory() as tmp:
        unit_costs = []
        for r in range(args.repeats):
            _, cost = timed(f"1 participant-session, 4 modalities [{r}]",
                            lambda r=r: generate_dataset(Path(tmp) / f"one{r}", 1, seed=r,
                                                         loads=["severe"]), base)
            unit_costs.append(cost)
        _, pair = timed("2-participant dataset (warm canvas)",
                        lambda: generate_dataset(Path(tmp) / "two", 2, seed=0), base)
        print(f"{'2-participant dataset, cold (canvas + dataset)':<44} "
              f"{pair[0] + base[0]:7.2f} s wall {pair[1] + base[1]:7.2f} s CPU")
    for r in range(args.repeats):
        timed(f"model_space_sample 160x214x176 [{r}]",
              lambda r=r: model_space_sample(1000 + r, "mild"), base)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
