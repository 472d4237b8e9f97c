"""What the console shows at default verbosity: the run's own story, not third-party chatter.

Why: a tiny training used to print ~300 lines before its result: Lightning's tips, TPU line and
warnings about its own internals, torch's deprecation notices, W&B's banner, and the full
pycocotools printout of every metric kind at every validation. A newcomer cannot find the data
counts, the device or the metric in that. What the console leaves out still reaches the run's
log file (``<run dir>/<entry>.log``) at DEBUG (W&B's banner: its own ``wandb/*/logs/``):

* :func:`quiet_third_party` (called first by each entry point): deprecation warnings and
  Lightning's known false-positive warnings go to the log file only; Lightning's own logger
  goes through the run's logging config (console and file, one format), with its tips, model
  summary, seed and checkpoint-restore lines demoted to DEBUG (file only); W&B is silent
  unless ``WANDB_SILENT=false``. Python's own switches still win: with ``-W ...`` or
  ``PYTHONWARNINGS`` set, warnings are left alone.
* :func:`output_to_debug` wraps third-party code that prints (pycocotools' ``summarize()``,
  mmengine's metric tables) and logs what it printed as one DEBUG record.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: warning categories a user of the tool cannot act on: to the log file only
QUIET_CATEGORIES: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning,
                                               FutureWarning)
#: warnings (regex on the message) that describe this project's deliberate choices
QUIET_MESSAGES = re.compile(
    r"You have overridden `transfer_batch_to_device`"  # DetectorModule does it on purpose
    r"|does not have many workers"  # num_workers is a setting with its own comment
    r"|is smaller than the logging interval"  # tiny runs log what they have
    r"|The number of training batches .* is smaller than"
    r"|Checkpoint directory .* exists and is not empty"
    r"|The `clip` function does nothing in `RotatedBoxes`"  # mmrotate's crop of rotated boxes
)
#: Lightning info lines the console leaves out (the log file keeps them, at DEBUG): advertising,
#: hardware this tool never uses, and what the em_lightning lines already say (the model line,
#: the checkpoint named in each table's title, the seed in the saved config)
DEMOTED_LIGHTNING = {
    "utilities.rank_zero": re.compile(
        r"💡 Tip|litlogger|litmodels|TPU available|HPU available"
        r"|to estimate number of stepping batches|Restoring states from the checkpoint"
        r"|Loaded model weights from the checkpoint|already configured with model summary"),
    "callbacks.model_summary": re.compile(""),
    "utilities.seed": re.compile(""),
}
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch",
                     "lightning.fabric")

def _lightning_category(category: type[Warning]) -> bool:
    return category.__name__ in ("PossibleUserWarning", "LightningDeprecationWarning")


def is_quiet_warning(message: Warning | str, category: type[Warning]) -> bool:
    """A warning the console does not show (the log file still gets it at DEBUG)."""
    return (issubclass(category, QUIET_CATEGORIES) or _lightning_category(category)
            or QUIET_MESSAGES.search(str(message)) is not None)


def _install_showwarning() -> None:
    """Send quiet warnings to the log (DEBUG); pass the others to the handler already set."""
    shown_before = warnings.showwarning
    if getattr(shown_before, "em_lightning_quiet", False):
        return

    def showwarning(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: Any = None, line: str | None = None) -> None:
        if is_quiet_warning(message, category):
            log.debug("%s:%d: %s: %s", filename, lineno, category.__name__, message)
            return
        shown_before(message, category, filename, lineno, file, line)

    showwarning.em_lightning_quiet = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


class _DemoteToDebug(logging.Filter):
    """Make matching records DEBUG: the console (INFO) skips them, the log file keeps them."""

    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and self.pattern.search(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _uses_wandb(cfg: Any) -> bool:
    loggers = cfg.get("logger") if cfg is not None else None
    return any(str(node.get("_target_", "")).endswith("WandbLogger")
               for node in (loggers or {}).values() if node)


def quiet_third_party(cfg: Any = None) -> None:
    """Configure warnings, Lightning's loggers and W&B for a readable console (idempotent).

    With a W&B logger in ``cfg``, W&B is set up at once: set up later by ``wandb.init``, it
    prints a deprecation notice for an argument Lightning passes before it reads
    ``WANDB_SILENT``.
    """
    if not sys.warnoptions:
        _install_showwarning()
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        # Lightning gives itself a stderr handler when imported before logging is configured:
        # use the run's handlers instead (its lines then reach the log file too)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
        for sub, pattern in DEMOTED_LIGHTNING.items():
            sub_logger = logging.getLogger(f"{name}.{sub}")
            if not any(isinstance(f, _DemoteToDebug) for f in sub_logger.filters):
                sub_logger.addFilter(_DemoteToDebug(pattern))
    os.environ.setdefault("WANDB_SILENT", "true")
    if _uses_wandb(cfg):
        import wandb

        wandb.setup()


class ConsoleFormatter(logging.Formatter):
    """``[time] message``; warnings and errors say so: ``[time] WARNING: message``."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname}: " if record.levelno >= logging.WARNING \
            else ""
        return super().format(record)


class ConsoleHandler(logging.StreamHandler):
    """The console handler of the run's logging config: a line logged while a progress bar is
    drawn is written above it (``tqdm.write``) instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def output_to_debug(logger: logging.Logger, what: str) -> Iterator[None]:
    """Run the body with stdout and mmengine's INFO lines captured; log them as one DEBUG record.

    mmengine's warnings and errors still pass through. mmengine's current logger is created
    before stdout is redirected, so its console handler never keeps the temporary buffer.
    """
    from mmengine.logging import MMLogger

    mm_logger = MMLogger.get_current_instance()
    buffer = io.StringIO()

    def capture(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        buffer.write(record.getMessage() + "\n")
        return False

    mm_logger.addFilter(capture)
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        mm_logger.removeFilter(capture)
        text = buffer.getvalue().strip()
        if text:
            logger.debug("%s:\n%s", what, text)
