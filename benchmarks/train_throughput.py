"""Training throughput: em_lightning (Lightning ``Trainer.fit``) vs MMEngine's own ``Runner``.

Both sides train the SAME mmdet/mmrotate detector config (``cfg.model.detector`` with
``num_classes`` set) on the SAME dataset config and pipeline (our datasets, registered in the
mmdet/mmrotate registries), with the same batch size, workers, SGD settings and gradient
clipping. Each side times every iteration with a hook (Lightning ``Callback`` /
MMEngine ``Hook``), and the two are interleaved in one process so that machine-load drift
cancels:

* ``--mode step`` (default): one ``Trainer.fit``; after each Lightning iteration the callback
  runs one iteration of the Runner's own loop (``IterBasedTrainLoop``: next batch from its
  dataloader, ``run_iter`` with all hooks): L M L M ...; the MMEngine iteration is not
  counted in the Lightning period.
* ``--mode block``: alternating blocks (A B, B A, ...) of complete ``Trainer.fit`` /
  ``Runner.train()`` runs of ``--warmup + --steps`` iterations each.

The first ``--warmup`` iterations (of the run, or of every block) are dropped.

    .venv/bin/python benchmarks/train_throughput.py            # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/train_throughput.py --quick    # ~2 min smoke run
    .venv/bin/python benchmarks/train_throughput.py --profile  # + where the time goes
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import importlib
import io
import pstats
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from common import (
    DEFAULT_DATA_DIR,
    TASKS,
    compose_cfg,
    hardware,
    median,
    model_overrides,
    now,
    print_table,
    quiet,
    scratch,
)


@dataclass
class Block:
    """Timestamps of one block of iterations on one side."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    #: when this side got the CPU back after the other side's interleaved iteration
    resumes: list[float] = field(default_factory=list)
    #: whole iteration (data fetch + run_iter) when driven from outside (step mode)
    periods: list[float] = field(default_factory=list)
    #: seconds in the model's own work (data preprocessor + forward + backward) per iteration
    compute: list[float] = field(default_factory=list)
    #: seconds in gradient clipping + the optimizer's update math per iteration
    update: list[float] = field(default_factory=list)

    def steps(self, warmup: int) -> list[tuple[float, float, int, float, float]]:
        """(period, in-step time, images, forward + backward, update) of every iteration after
        ``warmup``; the period runs from the end of the previous iteration, so it includes data
        loading and loop glue."""
        out = []
        for i in range(max(warmup, 1), len(self.ends)):
            if self.periods:
                period = self.periods[i]
            else:
                prev = self.resumes[i - 1] if self.resumes else self.ends[i - 1]
                period = self.ends[i] - prev
            out.append((period, self.ends[i] - self.starts[i], self.images[i],
                        self.compute[i], self.update[i]))
        return out


class ComputeMeter:
    """Seconds one side spends in code that is the same on both sides: the model's work
    (``data_preprocessor`` + detector forward through module hooks, ``loss.backward()``) and the
    parameter update (``clip_grad_norm_`` + SGD's math), see :func:`timed_model_work`. What is
    left of an iteration is what each framework adds around them (plus data waiting)."""

    current: ClassVar[ComputeMeter | None] = None

    def __init__(self, detector: Any) -> None:
        self.total = 0.0  # forward + backward
        self.update = 0.0  # gradient clipping + optimizer math
        self._t0 = 0.0
        for module in (detector.data_preprocessor, detector):
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post)

    def _pre(self, module: Any, args: Any) -> None:
        ComputeMeter.current = self
        self._t0 = now()

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self.total += now() - self._t0

    def take(self) -> tuple[float, float]:
        """(forward + backward, update) seconds accumulated since the last call."""
        values = (self.total, self.update)
        self.total = self.update = 0.0
        return values


def _timed(function: Callable[..., Any], attribute: str) -> Callable[..., Any]:
    """``function`` adding its run time to ``ComputeMeter.current.<attribute>``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        meter, t0 = ComputeMeter.current, now()
        try:
            return function(*args, **kwargs)
        finally:
            if meter is not None:
                setattr(meter, attribute, getattr(meter, attribute) + now() - t0)

    return wrapper


@contextmanager
def timed_model_work() -> Iterator[None]:
    """Time ``Tensor.backward``, ``clip_grad_norm_`` and SGD's update math for the meters.

    Lightning and MMEngine look these up at call time (MMEngine's ``OptimWrapper`` stores
    ``clip_grad_norm_`` when it is built, which happens inside this context)."""
    import torch

    sgd_module = importlib.import_module("torch.optim.sgd")  # SGD.step calls its ``sgd``
    patches = [(torch.Tensor, "backward", "total"), (torch.nn.utils, "clip_grad_norm_", "update"),
               (sgd_module, "sgd", "update")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, attribute in patches:
        setattr(owner, name, _timed(getattr(owner, name), attribute))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def lightning_clock(block: Block, meter: ComputeMeter,
                    interlude: Callable[[], None] | None = None) -> Any:
    """A Lightning callback writing iteration timestamps into ``block``; ``interlude`` (the
    other side's iteration) runs after each iteration, outside the measured period."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                 batch_idx: int) -> None:
            meter.take()
            block.starts.append(now())
            block.images.append(len(batch["inputs"]))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            block.ends.append(now())
            compute, update = meter.take()
            block.compute.append(compute)
            block.update.append(update)
            if interlude is not None:
                interlude()
                block.resumes.append(now())

    return Clock()


def mmengine_clock(blocks: list[Block], meter: Callable[[], ComputeMeter]) -> Any:
    """An MMEngine hook writing iteration timestamps into ``blocks[-1]``; runs after all
    other hooks (priority LOWEST), like the Lightning callback runs after the loop's work."""
    from mmengine.hooks import Hook

    class Clock(Hook):
        priority = "LOWEST"

        def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
            meter().take()
            blocks[-1].starts.append(now())
            blocks[-1].images.append(len(data_batch["inputs"]))

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                             outputs: Any = None) -> None:
            blocks[-1].ends.append(now())
            compute, update = meter().take()
            blocks[-1].compute.append(compute)
            blocks[-1].update.append(update)

    return Clock()


class LightningSide:
    """em_lightning: DetectorModule + DetectionDataModule under a real ``Trainer.fit``."""

    name = "lightning"

    def __init__(self, cfg: Any, log_every: int, use_logger: bool) -> None:
        from em_lightning.runner import build_data_and_model

        self.cfg = cfg
        # what `em_lightning.train` builds (and its check that model and data fit one library)
        self.datamodule, self.model = build_data_and_model(cfg)
        self.datamodule.prepare_data()
        self.meter = ComputeMeter(self.model.detector)
        self.log_every = log_every
        self.use_logger = use_logger

    def run_block(self, steps: int, interlude: Callable[[], None] | None = None) -> Block:
        """``Trainer.fit`` for ``steps`` iterations (``interlude`` runs after each one)."""
        from hydra.utils import instantiate

        block = Block()
        out = scratch("lightning_")
        logger = instantiate(self.cfg.logger.csv, save_dir=out) if self.use_logger else False
        trainer = instantiate(
            self.cfg.trainer, default_root_dir=out, max_steps=steps, max_epochs=-1,
            limit_val_batches=0, log_every_n_steps=self.log_every, logger=logger,
            callbacks=[lightning_clock(block, self.meter, interlude)], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(self.model, datamodule=self.datamodule)
        return block


def dataset_config(datamodule: Any, split: str) -> dict:
    """The dataset config ``DetectionDataModule.build_dataset(split, augment=True)`` builds."""
    from em_lightning.data.datamodule import _format_split

    cfg = _format_split(copy.deepcopy(datamodule.dataset_cfg), split)
    cfg.update(data_root=datamodule.root, metainfo={"classes": tuple(datamodule.classes)},
               pipeline=copy.deepcopy(datamodule.train_pipeline), strict=datamodule.strict,
               test_mode=False, filter_cfg=None)
    return cfg


class MMEngineSide:
    """MMEngine's ``Runner`` (IterBasedTrainLoop) on the same model, data and optimizer."""

    name = "mmengine"

    def __init__(self, cfg: Any, log_every: int) -> None:
        import cv2
        from hydra.utils import instantiate
        from mmengine.config import ConfigDict
        from mmengine.runner import Runner
        from omegaconf import OmegaConf

        from em_lightning.models.builder import set_num_classes
        from em_lightning.registry import register_all_modules, scope

        register_all_modules()
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        self.scope = cfg.model.scope
        detector = OmegaConf.to_container(cfg.model.detector, resolve=True)
        model = ConfigDict(set_num_classes(detector, len(cfg.data.classes)))
        opt = cfg.model.optimizer
        sched = cfg.model.scheduler
        clip = cfg.trainer.get("gradient_clip_val")
        self.blocks: list[Block] = []
        with scope(self.scope):
            self.runner = Runner(
                model=model,
                work_dir=scratch("mmengine_"),
                experiment_name=f"bench_{cfg.task_name}_{id(self)}",
                train_dataloader=dict(
                    batch_size=datamodule.batch_size, num_workers=datamodule.num_workers,
                    persistent_workers=datamodule.num_workers > 0,
                    pin_memory=datamodule.pin_memory,
                    sampler=dict(type="DefaultSampler", shuffle=True),
                    collate_fn=dict(type="pseudo_collate"),
                    dataset=dataset_config(datamodule, datamodule.splits["train"])),
                train_cfg=dict(type="IterBasedTrainLoop", max_iters=1),
                optim_wrapper=dict(
                    type="OptimWrapper",
                    optimizer=dict(type="SGD", lr=opt.lr, momentum=opt.momentum,
                                   weight_decay=opt.weight_decay),
                    clip_grad=dict(max_norm=float(clip), norm_type=2) if clip else None),
                param_scheduler=[
                    dict(type="LinearLR", start_factor=sched.warmup_ratio, by_epoch=False,
                         begin=0, end=sched.warmup_steps)],
                default_hooks=dict(logger=dict(type="LoggerHook", interval=log_every),
                                   checkpoint=None),
                custom_hooks=[mmengine_clock(self.blocks, lambda: self.meter)],
                default_scope=self.scope,
                randomness=dict(seed=cfg.seed),
                # keep OpenCV's thread count as it is: both sides share one process
                env_cfg=dict(cudnn_benchmark=bool(cfg.trainer.get("benchmark")),
                             mp_cfg=dict(mp_start_method="fork",
                                         opencv_num_threads=cv2.getNumThreads())),
                log_level="ERROR",
            )
        self.meter = ComputeMeter(self.runner.model)  # the Runner built it from the config

    def run_block(self, steps: int) -> Block:
        from em_lightning.registry import scope

        self.blocks.append(Block())
        with scope(self.scope):
            loop = self.runner.build_train_loop(self.runner._train_loop)
            self.runner._train_loop = loop
            loop._iter = 0  # a fresh block: no "skip already-seen batches" on resume
            loop._max_iters = steps
            self.runner.train()
        return self.blocks[-1]

    def start_stepping(self, max_iters: int) -> Block:
        """``Runner.train()`` set-up (hooks' before_run/before_train...) without iterations;
        then :meth:`step` runs the loop's iterations one at a time."""
        from em_lightning.registry import scope

        self.blocks.append(Block())
        with scope(self.scope):
            loop = self.runner.build_train_loop(self.runner._train_loop)
            self.runner._train_loop = loop
            loop._iter, loop._max_iters = 0, 0
            self.runner.train()
            loop._max_iters = max_iters
        return self.blocks[-1]

    def step(self) -> None:
        """One iteration exactly as ``IterBasedTrainLoop.run`` does it (no validation loop)."""
        from mmengine.registry import DefaultScope

        loop = self.runner.train_loop
        t0 = now()
        with DefaultScope.overwrite_default_scope(self.scope):
            self.runner.model.train()
            loop.run_iter(next(loop.dataloader_iterator))
        self.blocks[-1].periods.append(now() - t0)


def summarize(task: str, name: str, blocks: Sequence[Block], warmup: int) -> dict:
    steps = [s for b in blocks for s in b.steps(warmup)]
    periods = [s[0] for s in steps]
    return {
        "task": task, "side": name, "iters": len(steps),
        "s/iter": median(periods),
        "img/s (median)": 1.0 / median([s[0] / s[2] for s in steps]),
        "img/s (mean)": sum(s[2] for s in steps) / sum(periods),
        "fwd+bwd s": median([s[3] for s in steps]),
        "update s": median([s[4] for s in steps]),
        "framework s": median([s[0] - s[3] - s[4] for s in steps]),
        "outside hooks s": median([s[0] - s[1] for s in steps]),
        "_compute": [s[3] + s[4] for s in steps],
    }


def overhead_ratio(lit: dict, mme: dict) -> float:
    """Throughput ratio for identical model work: median fwd+bwd+update of both sides pooled,
    plus each side's median framework time (a low-noise estimate: the rest is the same code)."""
    compute = median(lit["_compute"] + mme["_compute"])
    return (compute + mme["framework s"]) / (compute + lit["framework s"])


def block_throughput(block: Block, warmup: int) -> float:
    steps = block.steps(warmup)
    return sum(s[2] for s in steps) / sum(s[0] for s in steps)


#: code that is each framework's own (not the model's): what ``--profile`` lists
FRAMEWORK_CODE = (r"pytorch_lightning|lightning_fabric|lightning/|mmengine/(runner|hooks|logging|"
                  r"optim|visualization)|em_lightning/models/detector_module|torch/utils/data")


def profile_block(side: Any, steps: int, top: int) -> None:
    """cProfile one block of ``side``; print the framework's own functions (not the model's)
    by self time, and their total self time per iteration: the framework's Python overhead."""
    prof = cProfile.Profile()
    prof.enable()
    block = side.run_block(steps)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    pattern = re.compile(FRAMEWORK_CODE)
    own = sum(v[2] for k, v in stats.stats.items() if pattern.search(k[0]))  # type: ignore[attr-defined]
    stats.print_stats(FRAMEWORK_CODE, top)
    iters = max(len(block.ends), 1)
    print(f"\n--- cProfile, {side.name}: {iters} iterations; framework code's own (self) time: "
          f"{own:.3f} s = {1000 * own / iters:.1f} ms per iteration (under the profiler) ---")
    for line in buf.getvalue().splitlines()[4:]:
        print(re.sub(r"\S*site-packages/", "", line)[:180])


def build_sides(task: str, args: argparse.Namespace) -> tuple[LightningSide, MMEngineSide]:
    overrides = [*model_overrides(args.depth, args.heads), f"data.batch_size={args.batch_size}",
                 f"data.num_workers={args.num_workers}", *args.override]
    cfg = compose_cfg(task, args.image_size, args.data_dir, overrides)
    return LightningSide(cfg, args.log_every, not args.no_logger), MMEngineSide(cfg, args.log_every)


def run_task_steps(task: str, args: argparse.Namespace) -> tuple[list[dict], list[float]]:
    """Step-interleaved: L, M, L, M ... inside one ``Trainer.fit``."""
    lit, mme = build_sides(task, args)
    total = args.warmup + args.steps
    mme_block = mme.start_stepping(max_iters=10 * total)
    t0 = now()
    lit_block = lit.run_block(total, interlude=mme.step)
    print(f"  {task}: {total} + {total} interleaved iterations in {now() - t0:.0f} s", flush=True)
    lit_steps, mme_steps = lit_block.steps(args.warmup), mme_block.steps(args.warmup)
    pair_ratios = [(a[2] / a[0]) / (b[2] / b[0]) for a, b in zip(lit_steps, mme_steps)]
    if args.profile:
        profile_block(lit, total, args.profile_top)
        profile_block(mme, total, args.profile_top)
    return [summarize(task, "lightning", [lit_block], args.warmup),
            summarize(task, "mmengine", [mme_block], args.warmup)], pair_ratios


def run_task_blocks(task: str, args: argparse.Namespace) -> tuple[list[dict], list[float]]:
    """Block-interleaved: A B, B A, A B ... complete fit/train runs."""
    sides = build_sides(task, args)
    blocks: dict[str, list[Block]] = {s.name: [] for s in sides}
    ratios = []
    for b in range(args.blocks):
        order = sides if b % 2 == 0 else sides[::-1]
        for side in order:
            t0 = now()
            blocks[side.name].append(side.run_block(args.warmup + args.steps))
            print(f"  {task} block {b + 1}/{args.blocks} {side.name}: "
                  f"{block_throughput(blocks[side.name][-1], args.warmup):.3f} img/s "
                  f"({now() - t0:.0f} s with start-up)", flush=True)
        ratios.append(block_throughput(blocks["lightning"][-1], args.warmup)
                      / block_throughput(blocks["mmengine"][-1], args.warmup))
    if args.profile:
        for side in sides:
            profile_block(side, args.warmup + args.steps, args.profile_top)
    return [summarize(task, s.name, blocks[s.name], args.warmup) for s in sides], ratios


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--depth", type=int, default=18, help="ResNet depth (18, 34, 50, 101)")
    p.add_argument("--heads", choices=["tiny", "default"], default="tiny",
                   help="tiny: the small heads of experiment=tiny; default: conf/model's")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--mode", choices=["step", "block"], default="step",
                   help="interleave single iterations or whole runs (see above)")
    p.add_argument("--blocks", type=int, default=3, help="block mode: blocks per side")
    p.add_argument("--steps", type=int, default=8,
                   help="measured iterations (per block in block mode)")
    p.add_argument("--warmup", type=int, default=2, help="dropped iterations (per block)")
    p.add_argument("--log-every", type=int, default=5,
                   help="Lightning log_every_n_steps = MMEngine LoggerHook interval")
    p.add_argument("--no-logger", action="store_true",
                   help="Lightning without its CSV logger (MMEngine always logs)")
    p.add_argument("--profile", action="store_true",
                   help="afterwards cProfile one more block of each side")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 128 px, 2 warm-up + 4 iterations, 2 blocks")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.blocks, args.steps, args.warmup = 128, 2, 4, 2
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    quiet()
    print(f"# train throughput: {hardware()}")
    blocks = f"{args.blocks} blocks x " if args.mode == "block" else ""
    print(f"# {args.image_size} px, ResNet-{args.depth} ({args.heads} heads), "
          f"batch {args.batch_size}, {args.num_workers} workers, {args.mode}-interleaved, "
          f"{blocks}({args.warmup} warm-up + {args.steps}) iterations per side", flush=True)
    rows, summary = [], []
    for task in args.tasks:
        run = run_task_steps if args.mode == "step" else run_task_blocks
        with timed_model_work():
            task_rows, ratios = run(task, args)
        rows += task_rows
        lit, mme = task_rows
        summary.append([task, lit["img/s (median)"] / mme["img/s (median)"],
                        lit["img/s (mean)"] / mme["img/s (mean)"], median(ratios),
                        overhead_ratio(lit, mme), " ".join(f"{r:.2f}" for r in ratios)])
    headers = [h for h in rows[0] if not h.startswith("_")]
    print()
    print_table(headers, [[r[h] for h in headers] for r in rows])
    print()
    unit = "step-pair" if args.mode == "step" else "block"
    print_table(["task", "ratio (median img/s)", "ratio (mean img/s)",
                 f"median of {unit} ratios", "ratio (same model work)", f"{unit} ratios"], summary)
    print("ratio = lightning / mmengine images per second (target >= 0.97).\n"
          "fwd+bwd: data preprocessor + forward + backward; update: clip_grad_norm_ + SGD math "
          "(both the same code on both sides); framework = s/iter - fwd+bwd - update: the "
          "training loop, logging, zero_grad, data waiting; outside hooks: between the end of "
          "one iteration and the start hook of the next.\n"
          "ratio (same model work) = (C + framework_mmengine) / (C + framework_lightning), "
          "C = pooled median of fwd+bwd+update: the ratio with the noisy model work taken out.")
    return rows


if __name__ == "__main__":
    main()
