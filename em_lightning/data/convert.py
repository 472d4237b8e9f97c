"""Convert rotated-box annotations between KITTI (LabelImg rotated), DOTA v1 and rotated COCO.

Usage: ``python -m em_lightning.data.convert --from kitti --to coco --input labels/
--images images/ --output train.json``. Run with ``--help`` for the angle conventions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from em_lightning.data.errors import DataError, SkipReport
from em_lightning.data.rotated_formats import (
    KITTI_CLASSES_FILE,
    RotatedImage,
    read_coco_rotated,
    read_dota,
    read_kitti,
    write_coco_rotated,
    write_dota,
    write_kitti,
)

FORMATS = ("kitti", "dota", "coco")

_EPILOG = f"""\
formats and conventions (all boxes in pixels, angles in radians):
  coordinates  x right, y DOWN; pixel (row i, col j) has its centre at (j+0.5, i+0.5)
  angle        positive = clockwise on screen (y down), as in OpenCV and mmrotate;
               boxes are normalised to mmrotate 'le90': w >= h, angle in [-pi/2, pi/2)
  kitti        --input is a directory of <image stem>.txt files, one object per line:
               'class_idx cx cy w h angle_rad'; class_idx indexes {KITTI_CLASSES_FILE}
               (one name per line) in that directory, or the file given with --classes
  dota         --input is a directory of <image stem>.txt files (DOTA v1):
               'x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]', corners clockwise on screen;
               'imagesource:' / 'gsd:' header lines are skipped; difficulty is not kept.
               --classes fixes the class order (and rejects other names), else names sorted
  coco         --input is a COCO JSON whose annotations carry "rbox": [cx, cy, w, h,
               angle_rad] (same angle convention as kitti); written files also get the
               axis-aligned "bbox", the 4-corner "segmentation" and "area" = w*h

--output is a directory for kitti / dota and a .json file for coco. kitti and dota need
--images (image sizes come from the image files; images without a label file get zero
objects); when converting to coco, file_name is the image's name inside --images.
Bad data (w or h <= 0, NaN, centre far outside the image, unknown class, malformed line)
stops the conversion with a message naming the file and line, unless --no-strict is given,
in which case the bad objects are skipped and listed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m em_lightning.data.convert",
        description="Convert rotated-box annotations between KITTI (LabelImg rotated), DOTA v1\n"
        "and rotated COCO JSON, validating every object.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="src", choices=FORMATS, required=True, help="input format")
    parser.add_argument("--to", dest="dst", choices=FORMATS, required=True, help="output format")
    parser.add_argument(
        "--input", type=Path, required=True, help="label directory (kitti/dota) or JSON (coco)"
    )
    parser.add_argument(
        "--images", type=Path, help="image directory; required for --from kitti/dota"
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="output directory (kitti/dota) or JSON (coco)"
    )
    parser.add_argument(
        "--classes",
        type=Path,
        help=f"class names, one per line (kitti: instead of <input>/{KITTI_CLASSES_FILE}; "
        "dota: fixed order); not used with --from coco",
    )
    parser.add_argument(
        "--no-strict",
        action="store_true",
        help="skip and list bad objects instead of stopping at the first one",
    )
    return parser


def _read_class_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "classes file does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_any(
    fmt: str, args: argparse.Namespace, report: SkipReport
) -> tuple[list[RotatedImage], list[str]]:
    """Dispatch to the reader of ``fmt`` with the CLI arguments."""
    if fmt == "kitti":
        return read_kitti(args.input, args.images, args.classes, report)
    if fmt == "dota":
        classes = _read_class_names(args.classes) if args.classes else None
        return read_dota(args.input, args.images, classes, report)
    return read_coco_rotated(args.input, report)


def write_any(fmt: str, images: list[RotatedImage], classes: list[str], output: Path) -> None:
    """Dispatch to the writer of ``fmt``."""
    if fmt == "kitti":
        write_kitti(images, classes, output)
    elif fmt == "dota":
        write_dota(images, output)
    else:
        write_coco_rotated(images, classes, output)


def main(argv: list[str] | None = None) -> int:
    """Run the converter; 0 on success, 1 when the input data is bad (message on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.src in ("kitti", "dota") and args.images is None:
        parser.error(f"--images is required with --from {args.src}")
    if args.src == "coco" and args.classes is not None:
        parser.error("--classes is not used with --from coco (categories come from the JSON)")
    report = SkipReport(strict=not args.no_strict)
    try:
        images, classes = read_any(args.src, args, report)
        write_any(args.dst, images, classes, args.output)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    n_objects = sum(len(im.objects) for im in images)
    print(
        f"converted {len(images)} images, {n_objects} objects, {len(classes)} classes "
        f"from {args.src} ({args.input}) to {args.dst} ({args.output})"
    )
    print(report.summary())
    for message in report.messages:
        print(f"  {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
