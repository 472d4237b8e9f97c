"""Apply a trained model to new images and measure the microstructure.

Not implemented yet (issue "predict + statistics + reports"): until then, evaluate a checkpoint
on annotated data with ``python -m em_lightning.evaluate``. This entry point says so honestly
instead of producing made-up output.
"""

from __future__ import annotations

import sys

MESSAGE = (
    "em_lightning.predict is not implemented yet: prediction on new images with tiling and "
    "microstructure statistics is an open issue.\n"
    "Use `python -m em_lightning.evaluate task=<task> ckpt_path=<ckpt>` to evaluate a checkpoint "
    "on annotated data and write its COCO-format predictions."
)


def main(argv: list[str] | None = None) -> int:
    print(MESSAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
