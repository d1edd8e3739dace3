"""Asynchronous workers against batches for a pruned Optuna search: wall time and idle fraction.

    python benchmarks/bench_search_workers.py SWEEP_DIR...

Each SWEEP_DIR is a finished search (its manifest.json gives each run's start and end, to the
second). Wall time: from the first run's start to the last run's end. Idle fraction: the share of
the workers' time (number of workers x wall time) in which no run of theirs was in progress; the
number of workers is the largest number of runs ever in progress at once. A job's start-up before
its run begins (SLURM scheduling, Python imports) counts as idle.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from genlab.sweep import read_manifest


def measure(sweep: str) -> dict:
    spans = [(datetime.fromisoformat(e["started"]), datetime.fromisoformat(e["ended"]))
             for e in read_manifest(sweep).values() if e.get("started") and e.get("ended")]
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    wall = (end - start).total_seconds()
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    workers = running = 0
    for _, step in events:
        running += step
        workers = max(workers, running)
    busy = sum((e - s).total_seconds() for s, e in spans)
    statuses = [e["status"] for e in read_manifest(sweep).values()]
    return {"sweep": sweep, "runs": len(spans), "pruned": statuses.count("pruned"),
            "workers": workers, "wall_s": wall, "idle": 1 - busy / (workers * wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+")
    for sweep in parser.parse_args().sweeps:
        m = measure(sweep)
        print(f"{m['sweep']}: {m['runs']} runs ({m['pruned']} pruned) on {m['workers']} workers: "
              f"wall {m['wall_s']:.0f} s, idle {m['idle']:.1%}")


if __name__ == "__main__":
    main()
