"""Peak memory of one training step (em_lightning path: ``Trainer.fit`` on DetectorModule).

Each task runs in its own subprocess (so the process-lifetime peak is that task's alone), at
the default 512 px with the default model (ResNet-50 FPN), ``data.num_workers=0`` so the data
pipeline's memory is in the measured process. Reported per task:

* RSS before fit (model and datasets built) and the process peak (``getrusage`` ru_maxrss);
* the step's own RSS peak (Linux ``VmHWM`` reset at ``on_train_batch_start`` through
  ``/proc/self/clear_refs``, read at ``on_train_batch_end``) and its rise over the RSS at start;
* the step's ``tracemalloc`` peak (Python and numpy allocations; torch's CPU tensors are not
  traced) and, on a GPU, ``torch.cuda.max_memory_allocated``.

    .venv/bin/python benchmarks/memory.py           # 512 px, ResNet-50: minutes per task on CPU
    .venv/bin/python benchmarks/memory.py --quick   # 256 px, ResNet-18, tiny heads
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DATA_DIR,
    TASKS,
    compose_cfg,
    hardware,
    model_overrides,
    print_result,
    print_table,
    quiet,
    run_child,
)

MIB = 1024.0 * 1024.0


def status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (NaN where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_rss_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def memory_probe(steps: list[dict]) -> Any:
    """A Lightning callback recording the memory of every training step into ``steps``."""
    import pytorch_lightning as pl
    import torch

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                 batch_idx: int) -> None:
            self.rss0 = status_mib("VmRSS")
            self.hwm_reset = reset_rss_peak()
            self.t0 = time.perf_counter()
            tracemalloc.reset_peak()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.cuda0 = torch.cuda.memory_allocated() / MIB

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            peak = status_mib("VmHWM") if self.hwm_reset else max_rss_mib()
            row = {"step": batch_idx + 1, "seconds": time.perf_counter() - self.t0,
                   "rss_start_mib": self.rss0, "step_peak_rss_mib": peak,
                   "step_rss_rise_mib": peak - self.rss0,
                   "tracemalloc_peak_mib": tracemalloc.get_traced_memory()[1] / MIB,
                   "images": len(batch["inputs"])}
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                row["cuda_start_mib"] = self.cuda0
                row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
            steps.append(row)

    return Probe()


def measure(task: str, args: argparse.Namespace) -> dict:
    """In this process: build, fit ``args.steps`` steps, return the memory figures."""
    quiet()
    from hydra.utils import instantiate

    from em_lightning.registry import register_all_modules

    overrides = [*model_overrides(args.depth, args.heads), "data.num_workers=0",
                 f"data.batch_size={args.batch_size}"]
    cfg = compose_cfg(task, args.image_size, args.data_dir, overrides)
    register_all_modules()
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tracemalloc.start()
    model = instantiate(cfg.model)
    rss_built = status_mib("VmRSS")
    steps: list[dict] = []
    trainer = instantiate(
        cfg.trainer, max_steps=args.steps, max_epochs=-1, limit_val_batches=0, logger=False,
        callbacks=[memory_probe(steps)], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=cfg.paths.output_dir)
    trainer.fit(model, datamodule=datamodule)
    params = sum(p.numel() for p in model.parameters())
    return {"task": task, "params_M": params / 1e6, "rss_built_mib": rss_built,
            "process_peak_rss_mib": max_rss_mib(), "steps": steps}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--heads", choices=["tiny", "default"], default="default")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=1,
                   help="training steps (the first one also allocates SGD momentum)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--quick", action="store_true", help="256 px, ResNet-18, tiny heads")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one task, print JSON
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.depth, args.heads = 256, 18, "tiny"
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.child:
        print_result(measure(args.child, args))
        return []
    print(f"# memory: {hardware()}")
    print(f"# {args.image_size} px, ResNet-{args.depth} ({args.heads} heads), batch "
          f"{args.batch_size}, {args.steps} step(s), data.num_workers=0", flush=True)
    results = []
    for task in args.tasks:
        t0 = time.perf_counter()
        results.append(run_child([__file__, *argv, "--child", task]))
        print(f"  {task}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for r in results:
        for s in r["steps"]:
            row = [r["task"], s["step"], s["images"], r["params_M"], r["rss_built_mib"],
                   s["rss_start_mib"], s["step_peak_rss_mib"], s["step_rss_rise_mib"],
                   s["tracemalloc_peak_mib"], r["process_peak_rss_mib"], s["seconds"]]
            if "cuda_peak_mib" in s:
                row.append(s["cuda_peak_mib"])
            rows.append(row)
    headers = ["task", "step", "images", "params (M)", "RSS built (MiB)", "RSS at step (MiB)",
               "step peak RSS (MiB)", "step RSS rise (MiB)", "tracemalloc peak (MiB)",
               "process peak RSS (MiB)", "step s"]
    if any("cuda_peak_mib" in s for r in results for s in r["steps"]):
        headers.append("CUDA peak (MiB)")
    print()
    print_table(headers, rows)
    return results


if __name__ == "__main__":
    main()
