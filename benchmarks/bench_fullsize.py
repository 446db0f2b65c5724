"""Full-size SHIVA model set end to end through the CLI, per inference engine (#16, #23).

Network: the SHIVA U-net as ANTsPyNet's `create_shiva_unet_model_3d` describes it (#23), written
here from its published facts (`shiva_unet`): a 160x214x176 input, 7 levels with 10, 18, 32,
58, 104, 187, 337 filters, each level two 3x3x3 convolution + batch normalisation + swish
blocks, max-pooling down ('same' padding, so the odd sides 107/27/7... round up) and
upsampling + concatenation up (cropped back to the skip's grid), a 1x1x1 sigmoid head.
`--count` prints its parameters and GFLOP per volume. Random but fixed weights (seeded).

Models: the published fold counts of the releases users run (reference/SHIVA.md §2.2): PVS v4
5 folds (T1), WMH v2 5 (T1+FLAIR), CMB v2 3 (SWI), LAC v0 3 (T1+FLAIR); each fold exported
with Keras 3 `model.export()` like the 2024-2026 releases, with published-style descriptors and
md5s. Built once into the cache (default ~/.cache/shiva-bids-bench).

Data: phantom participants from `shiva_bids.synthetic` (T1w, FLAIR, T2starw).

Runs (each a fresh output and work folder; `--nprocs 2`; one user cache of OpenVINO IR shared
by the runs, emptied first, so run 2 converts and the later ones find the IR cached):
  1. one participant, `--engine tensorflow` (the baseline)
  2. one participant, `--engine openvino --precision fp32` (converts the 16 folds)
  3. one participant, `--engine openvino --precision bf16`
  4. four participants in one run, OpenVINO fp32
Prints per-stage seconds (from the progress lines, 1 s resolution), peak RSS summed over the
run's process tree and the largest single process of each kind (psutil, every 0.2 s), and
ratios against run 1. With `--lock FILE` each run holds that flock (the shared machine's
heavy-job lock) while it runs.

    python benchmarks/bench_fullsize.py                 # all runs (~20 min on 2 cores)
    python benchmarks/bench_fullsize.py --only 1,3      # some runs only
    python benchmarks/bench_fullsize.py --count         # parameters and GFLOP of one fold
"""
from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPE = (160, 214, 176)
FILTERS = (10, 18, 32, 58, 104, 187, 337)  # ANTsPyNet create_shiva_unet_model_3d (#23)
MODEL_SET = (("PVS", "v4", ("t1",), 5), ("WMH", "v2", ("t1", "flair"), 5),
             ("CMB", "v2", ("swi",), 3), ("LAC", "v0", ("t1", "flair"), 3))
N_PARTICIPANTS = 4
STAGES = ("preprocessing", "inference", "post-processing and report")
MODELS = "models-shiva-unet"  # cache subfolder (the #16 set of another network is "models")


def shiva_unet(seed: int, channels: int = 1):
    """The SHIVA U-net (module docstring), Keras 3, seeded weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ensemble import build_network
    return build_network(seed, channels, FILTERS, "shiva_unet")


def count(model) -> tuple[int, float]:
    """Parameters and GFLOP (2 x multiply-adds of the convolutions) per volume."""
    flops = 0
    for layer in model.layers:
        if type(layer).__name__ == "Conv3D":
            kernel = layer.kernel.shape
            voxels = int(layer.output.shape[1]) * int(layer.output.shape[2]) \
                * int(layer.output.shape[3])
            flops += 2 * voxels * int(kernel[0] * kernel[1] * kernel[2] * kernel[3] * kernel[4])
    return model.count_params(), flops / 1e9


def build_models(root: Path) -> Path:
    """The model set under `root/MODELS` (skipped when complete); returns the folder."""
    models = root / MODELS
    done = models / ".complete"
    if done.exists():
        return models
    import keras

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
                shiva_unet(100 * m + fold, len(modalities)).export(
                    str(tmp), format="tf_saved_model", verbose=False)
                tmp.rename(path)
                keras.backend.clear_session()
                print(f"built {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
            paths.append(path)
        write_descriptor(folder, paths, marker, modalities, version=version,
                         architecture="ShivaUnet3D-ANTsPyNet", model_format="SavedModel",
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


def _env(repo: Path, user_cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "MPLBACKEND": "Agg",
            "SHIVA_BIDS_CACHE_DIR": str(user_cache)}


def _role(cmdline: list[str], is_root: bool) -> str:
    if is_root:
        return "main"
    text = " ".join(cmdline)
    return "worker (spawned)" if "multiprocessing" in text else "other child"


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, and the peak RSS of the
    largest process of each role (main process, spawned workers)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.by_role: dict[str, int] = {}

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
                        rss = proc.memory_info().rss
                        role = _role(proc.cmdline(), proc.pid == self.pid)
                    except psutil.NoSuchProcess:
                        continue
                    total += rss
                    self.by_role[role] = max(self.by_role.get(role, 0), rss)
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


@contextmanager
def held(lock: Path | None):
    """Hold the flock `lock` (None: nothing) for the duration of one run."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_cli(repo: Path, bids: Path, models: Path, scratch: Path, name: str,
            labels: list[str], extra: list[str], lock: Path | None) -> dict:
    out, work = scratch / name / "out", scratch / name / "work"
    work.mkdir(parents=True)
    command = [sys.executable, "-m", "shiva_bids", str(bids), str(out), "participant",
               "--participant-label", *labels, "--models-dir", str(models), "-w", str(work),
               "--nprocs", "2", "--skip-bids-validation", "-v", *extra]
    with held(lock):
        started = time.time()
        with open(scratch / name / "stderr.txt", "w") as err:
            process = subprocess.Popen(command, env=_env(repo, scratch / "user-cache"),
                                       cwd=scratch, stderr=err, stdout=subprocess.DEVNULL)
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
    return {"wall": wall, "peak_gib": sampler.peak / 2**30, "n": len(labels),
            "stages": stage_seconds(text, started) if len(labels) == 1 else {},
            "roles": {k: v / 2**30 for k, v in sampler.by_role.items()},
            "folds": [float(x) for x in re.findall(r"fold \d+/\d+: \d+ image\(s\) in "
                                                   r"([\d.]+) s", text)]}


def report(name: str, result: dict) -> None:
    stages = "  ".join(f"{k} {v:.0f}" for k, v in result["stages"].items())
    roles = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result["roles"].items()))
    folds = result["folds"]
    print(f"{name:40s} {result['wall']:7.1f} s  {result['wall'] / result['n']:6.1f} "
          f"s/participant  peak RSS {result['peak_gib']:.2f} GiB (largest process: {roles})  "
          f"{stages}  folds: {sum(folds):.1f} s over {len(folds)} "
          f"({min(folds, default=0):.1f}-{max(folds, default=0):.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="checkout whose shiva_bids runs (default: this one)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "shiva-bids-bench",
                        help="where the model set and the phantom dataset are kept")
    parser.add_argument("--only", default="1,2,3,4", help="runs to do, e.g. 1,3")
    parser.add_argument("--lock", type=Path, help="flock held during each run")
    args = parser.parse_args(argv)
    runs = {int(r) for r in args.only.split(",")}
    repo = args.repo.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with held(args.lock):  # built in a child process (Keras memory is not kept here)
        subprocess.run([sys.executable, __file__, "--build-only", str(args.cache)],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    print(f"models and data ready in {time.perf_counter() - started:.0f} s; repo {repo}; "
          f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    models, bids = args.cache / MODELS, args.cache / "bids"
    labels = [f"{i + 1:02d}" for i in range(N_PARTICIPANTS)]
    plan = [(1, "1 participant, TensorFlow fp32", labels[:1], ["--engine", "tensorflow"]),
            (2, "1 participant, OpenVINO fp32 (converts)", labels[:1],
             ["--engine", "openvino", "--precision", "fp32"]),
            (3, "1 participant, OpenVINO bf16", labels[:1],
             ["--engine", "openvino", "--precision", "bf16"]),
            (4, f"{N_PARTICIPANTS} participants, OpenVINO fp32", labels,
             ["--engine", "openvino", "--precision", "fp32"])]
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_fullsize_") as tmp:
        for number, name, chosen, extra in plan:
            if number in runs:
                results[number] = run_cli(repo, bids, models, Path(tmp), f"run{number}",
                                          chosen, extra, args.lock)
                report(name, results[number])
                print(f"  uptime: {os.popen('uptime').read().strip()}", flush=True)
    summarise(results)
    return 0


def summarise(results: dict[int, dict]) -> None:
    base = results.get(1)
    for number, label in ((2, "OpenVINO fp32"), (3, "OpenVINO bf16")):
        run = results.get(number)
        if base and run:
            print(f"{label} / TensorFlow: fold passes {sum(run['folds']) / sum(base['folds']):.2f}x"
                  f", inference stage {run['stages'].get('inference', 0) / max(base['stages'].get('inference', 1), 1):.2f}x"
                  f", wall {run['wall'] / base['wall']:.2f}x, peak RSS "
                  f"{run['peak_gib'] / base['peak_gib']:.2f}x")
    print("targets: bf16 inference <= 0.5x TensorFlow's; peak RSS <= 3.5 GiB with OpenVINO fp32 "
          "(1 participant); <= 5 GiB for 4 participants")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-only":
        build_models(Path(sys.argv[2]))
        build_dataset(Path(sys.argv[2]))
        sys.exit(0)
    if sys.argv[1:] == ["--count"]:
        params, gflop = count(shiva_unet(0))
        print(f"SHIVA U-net: {params / 1e6:.2f} M parameters, {gflop:.0f} GFLOP per volume")
        sys.exit(0)
    sys.exit(main())
