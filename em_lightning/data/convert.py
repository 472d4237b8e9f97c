"""Convert annotations: rotated boxes between KITTI (LabelImg rotated), DOTA v1 and rotated
COCO; instance label images and labelme JSON to COCO instances.

Usage: ``python -m em_lightning.data.convert --from kitti --to coco --input labels/
--images images/ --output train.json``; ``python -m em_lightning.data.convert label-images
--input masks/ --images images/ --class vesicle --output train.json``; ``python -m
em_lightning.data.convert labelme --input labelme/ --output train.json``. Run with ``--help``
(and ``label-images --help``, ``labelme --help``) for the conventions.
"""

from __future__ import annotations

import argparse
import json
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

other sub-commands (masks to COCO instances; run each with --help):
  label-images  instance label images (Fiji, ilastik, Cellpose, StarDist) -> COCO, exact masks
  labelme       labelme JSON (polygons, rectangles, circles, masks) -> COCO
"""

_LABELS_EPILOG = """\
label images: one integer per pixel, 0 = background, every other value one object (8/16/32-bit
PNG or TIFF; values need not be consecutive). Each label file <stem><suffix>.png|tif in --input
is paired with the image <stem>.* found anywhere below --images; file_name is that image's path
relative to --images (so --images is the dataset's images/ folder).
Every object's mask is exact (COCO annToMask gives back its pixels): a polygon on its pixel
edges when the object is one piece without holes, else compressed RLE (holes, several
pieces); bbox = pixel extent, area = pixel count.
classes: --class NAME gives every object that class; --class-map CSV maps label values to
classes, with a header line and columns value,class[,file], e.g.
    value,class          file,value,class
    1,vesicle            cell_01_masks.tif,7,hole
    2,hole
rows without a file apply to every label file; a value missing from the map is bad data.
Categories are the class names sorted (ids 1, 2, ...).
--output must lie outside --input and --images (input folders are never written to).
"""

_LABELME_EPILOG = """\
labelme: every *.json in --input (one per image; imagePath relative to the JSON). Shapes:
polygon -> polygon; rectangle -> 4-corner polygon; circle -> polygon (a vertex per pixel of
circumference); mask -> RLE; shapes with the same label and group_id -> one object; line,
linestrip and point shapes have no area (bad data). Points are copied as they are (labelme and
COCO both put pixel (row i, col j) at [j, j+1) x [i, i+1)); area and bbox are those of the
rasterised mask. Categories: the labels found, sorted, or --classes (one per line, in order;
other labels are bad data). file_name is the image's path relative to --images (default
--input). --output must lie outside --input and --images.
"""

SUBCOMMANDS = ("label-images", "labelme")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m em_lightning.data.convert",
        description="Convert rotated-box annotations between KITTI (LabelImg rotated), DOTA v1\n"
        "and rotated COCO JSON, validating every object. Sub-commands label-images and\n"
        "labelme convert masks to COCO instances (see the end of this help).",
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


def _mask_parser(command: str, description: str, epilog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m em_lightning.data.convert {command}", description=description,
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _add_output_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--output", type=Path, required=True, metavar="JSON",
                        help="COCO JSON to write (outside the input folders)")
    parser.add_argument("--no-strict", action="store_true",
                        help="skip and list bad objects instead of stopping at the first one")
    return parser


def build_label_images_parser() -> argparse.ArgumentParser:
    parser = _mask_parser("label-images", "Instance label images -> COCO instances with exact "
                          "masks (polygons, RLE for holes and several pieces).", _LABELS_EPILOG)
    parser.add_argument("--input", type=Path, required=True, metavar="DIR",
                        help="folder of label images")
    parser.add_argument("--images", type=Path, required=True, metavar="DIR",
                        help="folder with the images (searched recursively by stem)")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--class", dest="class_name", metavar="NAME",
                         help="one class for every object")
    classes.add_argument("--class-map", type=Path, metavar="CSV",
                         help="CSV: value,class[,file]")
    parser.add_argument("--label-suffix", default="", metavar="SUFFIX",
                        help="end of the label files' stems, e.g. _masks (Cellpose) or "
                        "_cp_masks; required when labels and images share a folder")
    return _add_output_args(parser)


def build_labelme_parser() -> argparse.ArgumentParser:
    parser = _mask_parser("labelme", "labelme JSON files -> COCO instances.", _LABELME_EPILOG)
    parser.add_argument("--input", type=Path, required=True, metavar="DIR",
                        help="folder of labelme *.json")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="image root that file_name is relative to (default: --input)")
    parser.add_argument("--classes", type=Path, metavar="FILE",
                        help="class names, one per line: fixes the category order")
    return _add_output_args(parser)


def check_output_outside(output: Path, folders: list[Path]) -> None:
    """Refuse an output inside an input folder: inputs are never written to."""
    out = output.resolve()
    for folder in folders:
        root = folder.resolve()
        if out == root or root in out.parents:
            raise DataError(output, f"output lies inside the input folder {folder}; write it "
                                    "elsewhere (input folders are never written to)")


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, sort_keys=True) + "\n")


def run_mask_command(argv: list[str]) -> int:
    """``label-images`` / ``labelme``: 0 on success, 1 on bad input data (message on stderr)."""
    from em_lightning.data.label_images import label_images_to_coco, read_class_map
    from em_lightning.data.labelme import labelme_to_coco

    command = argv[0]
    parser = build_label_images_parser() if command == "label-images" else build_labelme_parser()
    args = parser.parse_args(argv[1:])
    report = SkipReport(strict=not args.no_strict)
    detail = ""
    try:
        images_dir = args.images if args.images is not None else args.input
        check_output_outside(args.output, [args.input, images_dir])
        if command == "label-images":
            class_map = read_class_map(args.class_map) if args.class_map else None
            data, kinds = label_images_to_coco(args.input, args.images, args.class_name,
                                               class_map, args.label_suffix, report)
            detail = f" ({kinds['polygon']} polygons, {kinds['rle']} RLE)"
        else:
            classes = _read_class_names(args.classes) if args.classes else None
            data = labelme_to_coco(args.input, args.images, classes, report)
        _write_json(data, args.output)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"converted {len(data['images'])} images, {len(data['annotations'])} objects"
          f"{detail}, {len(data['categories'])} classes from {command} ({args.input}) to coco "
          f"({args.output})")
    print(report.summary())
    for message in report.messages:
        print(f"  {message}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the converter; 0 on success, 1 when the input data is bad (message on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_mask_command(argv)
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
