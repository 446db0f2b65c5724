"""Benchmark: whole preprocessing of one phantom participant (T1w + FLAIR + SWI, template brain
mask, FLAIR and SWI rigid registrations) with the default settings, each run in its own process
on the same inputs: wall and CPU seconds and peak RSS (the process and its workers together),
and accuracy.

The default phantom (seed 6) is the #16 participant: T1w 1x1x1.2 mm, FLAIR 0.9x0.9x3 mm,
T2starw 0.9x0.9x2.5 mm. Accuracy per run: brain-mask Dice against the phantom's true mask, and
the registration error against a known misalignment (the FLAIR and SWI headers are moved by a
known rigid transform; the error is the mean distance between true and recovered positions of
the truth lesion centroids).

`--fixture DIR` preprocesses the SHiVAi fixture participant instead (`../shared/fixtures/
shivai_0.5.9_phantom101`, issue #24): its T1w, FLAIR and T2starw, the brain mask from its true
mask (`truemask_derivatives`, as `--derivatives truemask=...` gives it) and the template
registration the atlas regions need (PreprocOptions.template_registration, as the participant
level sets it). Its images share world coordinates, so the true pose is the identity: the
registration error is the mean distance at the truth lesion centroids (`derivatives/reference/
sub-01/anat/sub-01_lesions.tsv`) between their position and where the transform puts them.
`--end-to-end` then also runs the participant level on the fixture (the README's shiva-bids
command: demo models, 4 markers, `--nprocs 2`), each tree in a new work folder, twice: with an
empty user cache (`SHIVA_BIDS_CACHE_DIR`) and again with the cache the first run filled.
Issue #24's targets (2 cores): preprocessing <= 40 s wall and <= 60 CPU-s, the participant
end to end <= 80 s (`FIXTURE_BUDGET`; the end-to-end figure checked is the warm run's).

`--baseline DIR` also runs another source tree on the same phantom in the same benchmark run
(e.g. `git archive faa1450 | tar -x -C DIR`) and prints the ratios; `--variant KEY=VALUE[,...]`
adds runs with other PreprocOptions (e.g. `swi_registration_mask=none`, SHiVAi's unmasked SWI
registration).

    PYTHONPATH=. python benchmarks/bench_preprocessing.py [--threads 2] [--baseline DIR]
        [--variant swi_registration_mask=none] [--seed 6] [--keep DIR]
        [--fixture ../shared/fixtures/shivai_0.5.9_phantom101 [--end-to-end]]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

MISALIGN_DEG = (4.0, -3.0, 5.0)
MISALIGN_MM = (3.0, -4.0, 2.5)
BUDGET_S = 45.0  # issue #16 item 4, 2 cores
# Issue #24, the fixture participant on 2 cores: preprocessing wall and CPU, end to end.
FIXTURE_BUDGET = {"seconds": 40.0, "cpu_seconds": 60.0, "end_to_end": 80.0}


def misalignment() -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", MISALIGN_DEG, degrees=True).as_matrix()
    t[:3, 3] = MISALIGN_MM
    return t


def prepare_fixture(fixture: Path) -> dict:
    """The spec of the SHiVAi fixture participant: its images, true mask (given as the
    derivatives mask) and lesion centroids; the true pose is the identity."""
    anat = fixture / "bids" / "sub-01" / "anat"
    mask = fixture / "truemask_derivatives" / "sub-01" / "anat" / \
        "sub-01_space-T1w_desc-brain_mask.nii.gz"
    table = fixture / "bids" / "derivatives" / "reference" / "sub-01" / "anat" / \
        "sub-01_lesions.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    columns = [rows[0].index(c) for c in ("x_mm", "y_mm", "z_mm")]
    images = {m: anat / f"sub-01_{m}.nii.gz" for m in ("T1w", "FLAIR", "T2starw")}
    return {"t1w": str(images["T1w"]), "flair": str(images["FLAIR"]),
            "swi": str(images["T2starw"]), "truth_mask": str(mask), "brain_mask": str(mask),
            "centroids": [[float(row[c]) for c in columns] for row in rows[1:]],
            "misalignment": np.eye(4).tolist(), "fixture": str(fixture),
            "grids": {m: "x".join(f"{z:g}" for z in nib.load(p).header.get_zooms()[:3])
                      for m, p in images.items()}}


def misalign(path: Path, out: Path, transform: np.ndarray) -> Path:
    """Copy an image with its header moved by `transform` (content moves with it in world)."""
    img = nib.load(path)
    moved = nib.Nifti1Image(np.asarray(img.dataobj), transform @ img.affine)
    nib.save(moved, out)
    return out


def prepare(folder: Path, seed: int) -> dict:
    from shiva_bids.synthetic import generate_dataset
    ds = generate_dataset(folder / "raw", n_participants=1, seed=seed, loads=["severe"],
                          modalities=["T1w", "FLAIR", "T2starw"])
    unit = ds.units[0]
    t = misalignment()
    flair = misalign(unit.images["FLAIR"], folder / "sub-01_FLAIR.nii.gz", t)
    swi = misalign(unit.images["T2starw"], folder / "sub-01_T2starw.nii.gz", t)
    centroids = [les.centroid_mm for les in unit.lesions]
    grids = {m: "x".join(f"{z:g}" for z in nib.load(p).header.get_zooms()[:3])
             for m, p in (("T1w", unit.images["T1w"]), ("FLAIR", flair), ("T2starw", swi))}
    return {"t1w": str(unit.images["T1w"]), "flair": str(flair), "swi": str(swi),
            "truth_mask": str(unit.brain_masks["T1w"]), "centroids": centroids,
            "misalignment": t.tolist(), "grids": grids}


class TreeRss:
    """Peak RSS (GiB) of this process and all its descendants together, sampled every 0.2 s
    from /proc in a thread (the workers' own peaks do not add up to the tree's)."""

    def __init__(self):
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _tree(pid: int) -> list[int]:
        pids, todo = [], [pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(c) for c in task.read_text().split()]
                except OSError:
                    pass
        return pids

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for pid in self._tree(os.getpid()):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.peak = max(self.peak, total / 2 ** 20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def child(spec_path: Path, options: dict, threads: int, work: Path) -> None:
    """One preprocessing run in this process (the tree on PYTHONPATH); prints a JSON line."""
    from shiva_bids.bids.inputs import InputSet
    from shiva_bids.preprocessing import PreprocOptions, preprocess_unit
    from shiva_bids.preprocessing.registration import map_points
    spec = json.loads(spec_path.read_text())
    mask = Path(spec["brain_mask"]) if "brain_mask" in spec else None
    inputs = InputSet("01", t1w=Path(spec["t1w"]), flair=Path(spec["flair"]),
                      swi=Path(spec["swi"]), brain_mask=mask)
    if mask is not None:  # the participant level's setting when regions come from the atlas
        options = {"template_registration": True, **options}
    rss = TreeRss()
    start, cpu = time.perf_counter(), _cpu_seconds()
    unit = preprocess_unit(inputs, {"t1", "flair", "swi"},
                           PreprocOptions(threads=threads, **options), work)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    tree_peak = rss.stop()
    truth = np.asarray(nib.load(spec["truth_mask"]).dataobj) > 0
    mask = unit.native_brain_mask("T1w").data > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    t = np.asarray(spec["misalignment"])
    points = np.asarray(spec["centroids"], dtype=float)
    want = points @ t[:3, :3].T + t[:3, 3]
    errors = {key: float(np.linalg.norm(map_points(path, points) - want, axis=1).mean())
              for key, path in unit.transforms.items()}
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_gib": tree_peak,
                      "dice": float(dice), "errors_mm": errors}))


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished workers."""
    return sum(getattr(resource.getrusage(who), field)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def _options(text: str) -> dict:
    """KEY=VALUE[,KEY=VALUE] -> PreprocOptions keyword arguments (numbers parsed)."""
    options = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def end_to_end(name: str, tree: Path, fixture: Path, folder: Path) -> dict:
    """The participant level on the fixture with `tree` on PYTHONPATH, in a new work folder,
    first with an empty user cache, then again (new work folder) with the cache it filled:
    wall and CPU seconds of the whole command (its worker processes included)."""
    result = {}
    for run_name in ("cold", "warm"):
        out = folder / f"e2e_{name}_{run_name}"
        env = dict(os.environ, PYTHONPATH=str(tree),
                   SHIVA_BIDS_CACHE_DIR=str(folder / f"e2e_{name}_user_cache"))
        command = [sys.executable, "-m", "shiva_bids", str(fixture / "bids"), str(out / "out"),
                   "participant", "--participant-label", "01", "--derivatives",
                   f"truemask={fixture / 'truemask_derivatives'}", "--brain-mask", "auto",
                   "--models-dir", str(fixture / "demo_models"), "--markers", "PVS", "WMH",
                   "CMB", "LAC", "--keep-model-space", "--nprocs", "2", "--omp-nthreads", "2",
                   "--device", "cpu", "-w", str(out / "work")]
        before, start = _children_cpu(), time.perf_counter()
        # cwd: not a source tree, which `python -m` would import before PYTHONPATH's
        subprocess.run(command, check=True, capture_output=True, text=True, env=env,
                       cwd=folder)
        result[run_name] = {"seconds": time.perf_counter() - start,
                            "cpu_seconds": _children_cpu() - before}
        print(f"{name:32s} end to end, {run_name} user cache: "
              f"{result[run_name]['seconds']:6.1f} s wall "
              f"{result[run_name]['cpu_seconds']:6.1f} s CPU", flush=True)
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(name: str, tree: Path, spec_path: Path, options: dict, threads: int,
        work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--threads", str(threads),
                          "--child", str(spec_path), json.dumps(options), str(work)],
                         check=True, capture_output=True, text=True, env=env)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name:32s} {r['seconds']:6.1f} s wall {r['cpu_seconds']:6.1f} s CPU  peak RSS "
          f"{r['peak_gib']:.2f} GiB (process tree)  mask Dice "
          f"{r['dice']:.4f}  registration error (mm) "
          + ", ".join(f"{k} {v:.3f}" for k, v in r["errors_mm"].items()), flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=6, help="phantom seed (6: the #16 one)")
    parser.add_argument("--baseline", type=Path, help="another source tree to run as well")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE,...",
                        help="an extra run with these PreprocOptions")
    parser.add_argument("--keep", type=Path, help="folder for data and work dirs (kept)")
    parser.add_argument("--fixture", type=Path, help="the SHiVAi fixture folder "
                        "(shivai_0.5.9_phantom101) instead of a generated phantom")
    parser.add_argument("--end-to-end", action="store_true",
                        help="with --fixture: also time the participant level, cold and warm")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "OPTIONS", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), json.loads(args.child[1]), args.threads, Path(args.child[2]))
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_preproc_"))
    folder.mkdir(parents=True, exist_ok=True)
    if args.fixture:
        spec_path = folder / "spec_fixture.json"
        spec_path.write_text(json.dumps(prepare_fixture(args.fixture.resolve())))
    else:
        spec_path = folder / f"spec_seed{args.seed}.json"
        if not spec_path.exists():
            spec_path.write_text(json.dumps(prepare(folder / f"seed{args.seed}", args.seed)))
    grids = json.loads(spec_path.read_text())["grids"]
    title = f"fixture {args.fixture.name}" if args.fixture else f"phantom seed {args.seed}"
    print(f"{title}: " + ", ".join(f"{m} {g} mm" for m, g in grids.items())
          + f"; {args.threads} threads; load average {os.getloadavg()[0]:.1f}")
    here = Path(__file__).resolve().parent.parent
    results = {"default": run("default", here, spec_path, {}, args.threads,
                              folder / "work_default")}
    for i, text in enumerate(args.variant):
        results[text] = run(text, here, spec_path, _options(text), args.threads,
                            folder / f"work_variant{i}")
    if args.baseline:
        results["baseline"] = run(f"baseline ({args.baseline.name})", args.baseline.resolve(),
                                  spec_path, {}, args.threads, folder / "work_baseline")
    default = results["default"]
    for name, r in results.items():
        if name != "default":
            print(f"default / {name}: wall {default['seconds'] / r['seconds']:.2f}, CPU "
                  f"{default['cpu_seconds'] / r['cpu_seconds']:.2f}, peak RSS "
                  f"{default['peak_gib'] / r['peak_gib']:.2f}")
    if not args.fixture:
        print(f"target: <= {BUDGET_S:g} s wall on 2 cores with the default settings:",
              "met" if default["seconds"] <= BUDGET_S else "NOT met",
              f"(load average {os.getloadavg()[0]:.1f})")
        return 0
    if args.end_to_end:
        e2e = {"default": end_to_end("default", here, args.fixture.resolve(), folder)}
        if args.baseline:
            e2e["baseline"] = end_to_end("baseline", args.baseline.resolve(),
                                         args.fixture.resolve(), folder)
            for run_name in ("cold", "warm"):
                ours, theirs = e2e["default"][run_name], e2e["baseline"][run_name]
                print(f"end to end, {run_name} user cache, default / baseline: wall "
                      f"{ours['seconds'] / theirs['seconds']:.2f}, CPU "
                      f"{ours['cpu_seconds'] / theirs['cpu_seconds']:.2f}")
        default["end_to_end"] = e2e["default"]["warm"]["seconds"]
    for key, budget in FIXTURE_BUDGET.items():
        if key in default:
            print(f"target {key} <= {budget:g} s on 2 cores:",
                  "met" if default[key] <= budget else "NOT met", f"({default[key]:.1f} s)")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
