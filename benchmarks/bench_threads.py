"""Training time on a quiet and on a busy machine, by OpenMP wait setting (issue 21, item 10).

    python benchmarks/bench_threads.py                 # 4 epochs, 128², 40 brick images; 2 repeats
    python benchmarks/bench_threads.py --hogs 2 --repeats 3

Each setting trains the same model in a fresh process (OpenMP reads its environment once, when
PyTorch loads), first with nothing else running, then with ``--hogs`` busy-loop processes
competing for the cores; the settings are interleaved within each repeat. PyTorch's libgomp
spins ~300k iterations before an idle thread sleeps: on a shared machine those spinning threads
take the cores from the one doing the work. The console scripts set ``GOMP_SPINCOUNT=3000``
(``stpm_edge/cli/entry.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"default": {}, "GOMP_SPINCOUNT=3000": {"GOMP_SPINCOUNT": "3000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}

CHILD = """
import sys, time
from pathlib import Path
from stpm_edge.train.trainer import TrainConfig, train
res = train(Path(sys.argv[1]), Path(sys.argv[2]), TrainConfig(image_size=int(sys.argv[3]), epochs=int(sys.argv[4]),
            batch_size=8, patience=10, seed=0))
print(res.seconds)
"""


def run_once(env_extra: dict, data: Path, out: Path, size: int, epochs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env.update(env_extra)
    res = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), str(size), str(epochs)], env=env,
                         capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--hogs", type=int, default=2, help="busy-loop processes for the loaded rows")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from stpm_edge.data.sample import make_sample_dataset

    results: dict[str, dict[str, list[float]]] = {k: {"quiet": [], "loaded": []} for k in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "brick"
        make_sample_dataset(data, "brick", seed=0, image_size=a.size, n_train=40, n_test_good=4, n_defect_per_kind=1)
        for mode in ("quiet", "loaded"):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.hogs if
                                                                                           mode == "loaded" else 0)]
            try:
                for _ in range(a.repeats):
                    for name, extra in SETTINGS.items():
                        s = run_once(extra, data, Path(tmp) / "m.pt", a.size, a.epochs)
                        results[name][mode].append(round(s, 1))
                        print(f"{mode:6s} {name:24s} {s:7.1f} s", flush=True)
            finally:
                for h in hogs:
                    h.kill()
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "epochs": a.epochs,
                      "size": a.size, "hogs": a.hogs, "seconds": results}, indent=2))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
