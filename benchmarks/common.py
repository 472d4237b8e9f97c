"""Shared helpers of the benchmark scripts: composed configs, small data sets, tables."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")
TASKS = ("vesicles", "nanorods")
#: where the benchmarks generate their demo data (never inside the checkout)
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "em_lightning_bench" / "data"

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


_SCRATCH: tempfile.TemporaryDirectory | None = None
RESULT = "RESULT "  # the line prefix a child process prints its JSON result after


def scratch(prefix: str = "run_") -> str:
    """A new folder in this process's scratch directory (removed when the process exits)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="em_bench_")
    return tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH.name)


def quiet() -> None:
    """Silence the INFO chatter of Lightning, MMEngine and friends (results are printed)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                 "em_lightning", "mmengine"):
        logging.getLogger(name).setLevel(logging.ERROR)


#: the small heads of ``conf/experiment/tiny.yaml`` (64-channel FPN, few proposals and samples)
TINY_HEADS = [
    "model.detector.neck.out_channels=64",
    "model.detector.roi_head.bbox_head.fc_out_channels=128",
    "model.detector.train_cfg.rpn.sampler.num=64",
    "model.detector.train_cfg.rpn_proposal.nms_pre=200",
    "model.detector.train_cfg.rpn_proposal.max_per_img=100",
    "model.detector.train_cfg.rcnn.sampler.num=64",
    "model.detector.test_cfg.rpn.nms_pre=200",
    "model.detector.test_cfg.rpn.max_per_img=100",
    "model.detector.test_cfg.rcnn.max_per_img=100",
]


def model_overrides(depth: int, heads: str = "default") -> list[str]:
    """Hydra overrides: a ResNet-``depth`` backbone with a matching FPN; ``heads="tiny"`` adds
    the small heads of the tiny experiment, ``"default"`` keeps conf/model's heads."""
    wide = depth >= 50
    channels = [256, 512, 1024, 2048] if wide else [64, 128, 256, 512]
    out = [f"model.detector.backbone.depth={depth}",
           f"model.detector.neck.in_channels=[{','.join(map(str, channels))}]"]
    if heads == "tiny":
        out += TINY_HEADS
    elif heads != "default":
        raise ValueError(f"unknown heads preset {heads!r}; expected tiny or default")
    return out


def compose_config(name: str, overrides: Sequence[str], output_dir: Path | None = None) -> Any:
    """The config ``python -m em_lightning.<name> <overrides>`` would see, its run directory
    ``output_dir`` (default: a scratch folder)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    out = str(output_dir or scratch("hydra_"))
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
    return cfg


def compose_cfg(task: str, image_size: int, data_dir: Path, overrides: Sequence[str] = (),
                output_dir: Path | None = None) -> Any:
    """The training config of ``task`` at ``image_size`` px on a demo set under ``data_dir``."""
    root = Path(data_dir) / f"{task}_{image_size}"
    base = [f"task={task}", f"data.demo_root={root}", f"data.image_size={image_size}",
            f"data.demo.image_size={image_size}"]
    return compose_config("train", base + list(overrides), output_dir)


def run_child(argv: Sequence[str]) -> dict:
    """Run ``python *argv`` (a benchmark script in child mode) and return the JSON it prints
    after ``RESULT ``; RuntimeError with the child's output tail when it fails."""
    import json
    import subprocess

    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(argv[:1])} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(found[-1][len(RESULT):])


def print_result(result: Any) -> None:
    """Child mode's answer to :func:`run_child`."""
    import json

    print(RESULT + json.dumps(result), flush=True)


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def now() -> float:
    """``perf_counter`` after the GPU (if any) has finished queued work."""
    cuda_sync()
    return time.perf_counter()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def hardware() -> str:
    """One line: CPU model and cores, RAM, GPU, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        load = f"load {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return (f"{cpu}, {cores} cores ({load}), {gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A GitHub-markdown table (copy-paste ready for BENCHMARKS.md)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()
