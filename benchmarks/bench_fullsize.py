"""Full-size SHIVA model set end to end through the CLI (issue #16).

Models: the published fold counts of the releases users run (reference/SHIVA.md §2.2): PVS v4
5 folds (T1), WMH v2 5 (T1+FLAIR), CMB v2 3 (SWI), LAC v0 3 (T1+FLAIR); each fold the
SHIVA-sized U-net of benchmarks/bench_ensemble.py (160x214x176 grid, 8 base filters doubling
over 7 levels, two 3x3x3 conv + BN + swish per block, 23.6 M parameters, random weights),
exported with Keras 3 `model.export()` like the 2024-2026 releases, with published-style
descriptors and md5s. Built once into the cache (default ~/.cache/shiva-bids-bench, ~3 GB).

Data: phantom participants from `shiva_bids.synthetic` (T1w, FLAIR, T2starw).

Runs (each a fresh output and work folder; `--nprocs 2`; the fast-inference check cache is
shared between runs, so "fast" runs after the first are warm, as a user's second run):
  1. one participant, `--fast-inference off`
  2. one participant, fast inference, cold cache (includes the one-time checks)
  3. one participant, fast inference, warm cache
  4. four participants in one run
  5. participants 2-4 one run each (with run 3: the one-at-a-time reference)
Prints per-stage seconds (from the progress lines, 1 s resolution), s/participant, peak RSS
summed over the run's process tree (psutil, sampled every 0.2 s), and the ratios. `--repo`
runs another checkout's code on the same models and data (e.g. main at faa1450 as the
baseline): runs needing `--fast-inference` are skipped when that checkout lacks it.

    python benchmarks/bench_fullsize.py                        # this checkout (~20 min)
    python benchmarks/bench_fullsize.py --repo /path/to/main   # the baseline
    python benchmarks/bench_fullsize.py --only 1,3             # some runs only
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_SET = (("PVS", "v4", ("t1",), 5), ("WMH", "v2", ("t1", "flair"), 5),
             ("CMB", "v2", ("swi",), 3), ("LAC", "v0", ("t1", "flair"), 3))
N_PARTICIPANTS = 4
STAGES = ("preprocessing", "inference", "post-processing and report")


def build_models(root: Path) -> Path:
    """The model set under `root/models` (skipped when complete); returns the folder."""
    models = root / "models"
    done = models / ".complete"
    if done.exists():
        return models
    sys.path.insert(0, str(HERE))
    import keras
    from bench_ensemble import build_network

    from shiva_bids.models.testing import write_descriptor

    for m, (marker, version, modalities, folds) in enumerate(MODEL_SET):
        folder = models / f"{'.'.join(x.upper() for x in modalities)}-{marker}"
        paths = []
        for fold in range(folds):
            path = folder / f"bench_{marker.lower()}_fold_{fold}.tf_inference"
            if not path.exists():
                started = time.perf_counter()
                tmp = folder / f".{path.name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                build_network(100 * m + fold, len(modalities)).export(
                    str(tmp), format="tf_saved_model", verbose=False)
                tmp.rename(path)
                keras.backend.clear_session()
                print(f"built {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
            paths.append(path)
        write_descriptor(folder, paths, marker, modalities, version=version,
                         architecture="BenchUnet3D-8.7.2", model_format="SavedModel",
                         tensorflow_min_version="2.17")
    done.write_text("ok\n")
    return models


def build_dataset(root: Path) -> Path:
    bids = root / "bids"
    if not (bids / "dataset_description.json").exists():
        from shiva_bids.synthetic import generate_dataset
        generate_dataset(bids, n_participants=N_PARTICIPANTS, seed=16,
                         loads=["mild", "severe", "mild", "severe"],
                         modalities=("T1w", "FLAIR", "T2starw"))
    return bids


def supports_fast(repo: Path) -> bool:
    help_text = subprocess.run([sys.executable, "-m", "shiva_bids", "--help"], text=True,
                               capture_output=True, env=_env(repo), cwd=repo).stdout
    return "--fast-inference" in help_text


def _env(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "MPLBACKEND": "Agg"}


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        import psutil
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            time.sleep(0.2)


def stage_seconds(log_text: str, start: float) -> dict[str, float]:
    """Per-stage seconds of a one-participant run from its progress lines (HH:MM:SS)."""
    marks = {}
    for line in log_text.splitlines():
        match = re.match(r"(\d\d):(\d\d):(\d\d) .*shiva_bids\.progress: (.*)$", line)
        if not match:
            continue
        h, m, s, text = match.groups()
        t = int(h) * 3600 + int(m) * 60 + int(s)
        for stage in STAGES:
            if text.endswith(f": {stage}") and stage not in marks:
                marks[stage] = t
        if re.match(r"\[\d+/\d+\]", text):
            marks["done"] = t
    begin = time.localtime(start)
    t0 = begin.tm_hour * 3600 + begin.tm_min * 60 + begin.tm_sec
    order = ["setup", *STAGES]
    times = [t0, *(marks.get(s) for s in STAGES), marks.get("done")]
    if None in times:
        return {}
    return {name: float(b - a) for name, a, b in zip(order, times, times[1:])}


def run_cli(repo: Path, bids: Path, models: Path, scratch: Path, name: str,
            labels: list[str], extra: list[str], cache: Path | None) -> dict:
    out, work = scratch / name / "out", scratch / name / "work"
    work.mkdir(parents=True)
    if cache is not None:  # the fast-inference check cache, shared between runs
        (work / "fast-inference").symlink_to(cache, target_is_directory=True)
    command = [sys.executable, "-m", "shiva_bids", str(bids), str(out), "participant",
               "--participant-label", *labels, "--models-dir", str(models), "-w", str(work),
               "--nprocs", "2", "--skip-bids-validation", *extra]
    started = time.time()
    with open(scratch / name / "stderr.txt", "w") as err:
        process = subprocess.Popen(command, env=_env(repo), cwd=scratch, stderr=err,
                                   stdout=subprocess.DEVNULL)
        sampler = TreeSampler(process.pid)
        sampler.start()
        code = process.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.time() - started
    text = (scratch / name / "stderr.txt").read_text()
    if code != 0:
        print(text[-3000:])
        raise SystemExit(f"{name}: shiva-bids exited {code}")
    stages = stage_seconds(text, started) if len(labels) == 1 else {}
    return {"wall": wall, "peak_gib": sampler.peak / 2**30, "stages": stages,
            "n": len(labels)}


def report(name: str, result: dict) -> None:
    stages = "  ".join(f"{k} {v:.0f}" for k, v in result["stages"].items())
    print(f"{name:34s} {result['wall']:7.1f} s  {result['wall'] / result['n']:6.1f} "
          f"s/participant  peak RSS {result['peak_gib']:.2f} GiB  {stages}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="checkout whose shiva_bids runs (default: this one)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "shiva-bids-bench",
                        help="where the model set and the phantom dataset are kept")
    parser.add_argument("--only", default="1,2,3,4,5", help="runs to do, e.g. 1,3,4")
    args = parser.parse_args(argv)
    runs = {int(r) for r in args.only.split(",")}
    repo = args.repo.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # built by this checkout's code in a child process (Keras memory is not kept here)
    subprocess.run([sys.executable, __file__, "--build-only", str(args.cache)], check=True,
                   env=_env(REPO))
    print(f"models and data ready in {time.perf_counter() - started:.0f} s; repo {repo}; "
          f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    models, bids = args.cache / "models", args.cache / "bids"
    fast = supports_fast(repo)
    labels = [f"{i + 1:02d}" for i in range(N_PARTICIPANTS)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_fullsize_") as tmp:
        scratch = Path(tmp)
        cache = scratch / "fast-cache"
        cache.mkdir()
        on = ["--fast-inference", "on"] if fast else []
        plan = [(1, "1 participant, fast off", labels[:1],
                 ["--fast-inference", "off"] if fast else [], None),
                (2, "1 participant, fast on (cold)", labels[:1], on, cache),
                (3, "1 participant, fast on", labels[:1], on, cache),
                (4, f"{N_PARTICIPANTS} participants in one run", labels, on, cache)]
        plan += [(5, f"participant {label} alone", [label], on, cache) for label in labels[1:]]
        for number, name, chosen, extra, shared in plan:
            if number not in runs or (number in (2, 3) and not fast):
                continue
            results[name] = run_cli(repo, bids, models, scratch, f"run{len(results)}",
                                    chosen, extra, shared if fast else None)
            report(name, results[name])
    print(f"uptime: {os.popen('uptime').read().strip()}")
    summarise(results, fast)
    return 0


def summarise(results: dict[str, dict], fast: bool) -> None:
    off = results.get("1 participant, fast off")
    warm = results.get("1 participant, fast on")
    if off and warm and off["stages"] and warm["stages"]:
        print(f"fast vs off: forward passes (inference stage) "
              f"{off['stages']['inference'] / max(warm['stages']['inference'], 1):.2f}x, "
              f"end to end {off['wall'] / warm['wall']:.2f}x")
    single = warm or off
    together = results.get(f"{N_PARTICIPANTS} participants in one run")
    alone = [r for n, r in results.items() if n.startswith("participant ")]
    if single and together and len(alone) == N_PARTICIPANTS - 1:
        one_at_a_time = single["wall"] + sum(r["wall"] for r in alone)
        print(f"{N_PARTICIPANTS} participants: {together['wall']:.0f} s in one run vs "
              f"{one_at_a_time:.0f} s one at a time: throughput "
              f"{one_at_a_time / together['wall']:.2f}x")
    print("targets: one participant <= 90 s; forward passes >= 2x faster with fast inference; "
          "peak RSS <= 4 GiB; 4 participants >= 1.3x the throughput of one at a time")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-only":
        build_models(Path(sys.argv[2]))
        build_dataset(Path(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
