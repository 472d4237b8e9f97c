"""Run every benchmark in sequence (``make bench``), each in its own process.

    .venv/bin/python benchmarks/run_all.py            # defaults: about 45 min on 2 CPU cores
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run of every script (~5 min)
    .venv/bin/python benchmarks/run_all.py --only eval_speed memory
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: in order of priority; each script takes --help and --quick
SCRIPTS = ("train_throughput", "inference_speed", "eval_speed", "memory", "predict_memory",
           "predict_processes")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS),
                   help="run only these scripts")
    p.add_argument("--keep-going", action="store_true", help="run the rest after a failure")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    failed = []
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        print(f"===== {name}: exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
            if not args.keep_going:
                break
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
