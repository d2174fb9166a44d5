"""Wall-clock of `python -m lorakit --help` and `python -m lorakit train --help`: median of 5 runs per source tree,
the trees alternating run by run (this machine is noisy).

    python benchmarks/startup_time.py                       # this checkout's src/
    python benchmarks/startup_time.py OLD/src src           # e.g. OLD = `git archive f622ff5 src | tar -x -C OLD`
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 5
COMMANDS = (["--help"], ["train", "--help"])


def main(trees: list[str]) -> None:
    times = {(tree, " ".join(argv)): [] for tree in trees for argv in COMMANDS}
    for _ in range(ROUNDS):
        for tree in trees:
            for argv in COMMANDS:
                env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve()), "HF_HUB_OFFLINE": "1"}
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "lorakit", *argv], env=env, stdout=subprocess.DEVNULL, check=True)
                times[(tree, " ".join(argv))].append(time.perf_counter() - start)
    print(f"load average {os.getloadavg()[0]:.2f}")
    for (tree, command), runs in times.items():
        print(f"{tree}: python -m lorakit {command}: median {statistics.median(runs):.3f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in runs)})")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(Path(__file__).resolve().parents[1] / "src")])
