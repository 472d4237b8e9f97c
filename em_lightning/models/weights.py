"""Pretrained weights by name, URL or file: one preset table, one cache, checked downloads.

``model.backbone_checkpoint`` and ``model.load_from`` accept a local path, an ``http(s)://`` URL,
the schemes OpenMMLab configs use (``torchvision://resnet50``, ``open-mmlab://...``,
``mmcls://...``; resolved with MMEngine's own tables) or a preset of :data:`PRESETS`. This
module only turns such a value into a local file (downloading it once into the cache); the
loading itself (key naming, class-head remapping) stays in :mod:`em_lightning.models.builder`.

Downloads are written to a temporary file next to the target and renamed only when complete and
checked, so an interrupted download never leaves a file that is later taken for whole. The hash
a publisher gives is checked as ``torch.hub`` does (``check_hash``): torchvision and OpenMMLab end
each file name in a prefix of its sha256. A file already in the cache, or at a path, is used
without network.

Environment: ``EM_LIGHTNING_WEIGHTS`` (cache folder, default ``~/.cache/em_lightning/weights``),
``EM_LIGHTNING_OFFLINE=1`` (never download), ``EM_LIGHTNING_WEIGHTS_MIRROR`` (a base URL that
serves the presets' files under their own names, e.g. an institute's mirror).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from em_lightning.errors import CheckpointError

log = logging.getLogger(__name__)

ENV_CACHE = "EM_LIGHTNING_WEIGHTS"
ENV_OFFLINE = "EM_LIGHTNING_OFFLINE"
ENV_MIRROR = "EM_LIGHTNING_WEIGHTS_MIRROR"
#: seconds to wait for a server to answer: ``auto`` must fail fast where there is no network
CONNECT_TIMEOUT = 5.0
#: seconds a started download may stall before it is given up
READ_TIMEOUT = 60.0
CHUNK = 1 << 20

# torch.hub's naming convention: ``<name>-<sha256 prefix>.<ext>``
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z][A-Za-z.]*$")
# hosts whose file names always carry the sha256 prefix (torchvision, OpenMMLab model zoos)
PUBLISHER_HOSTS = ("download.pytorch.org", "download.openmmlab.com")

_NASA = "https://nasa-public-data.s3.amazonaws.com/microscopy_segmentation_models/"
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/"
_MMROTATE = "https://download.openmmlab.com/mmrotate/v0.1.0/"


@dataclass(frozen=True)
class Preset:
    """One named set of weights: a URL per backbone depth (backbone presets) or per detector
    (detector presets), and what the publisher gives to check the file."""

    kind: str  # "backbone" (ResNet weights) or "detector" (a whole model-zoo checkpoint)
    urls: dict[Any, str]
    source: str
    hash_note: str
    use: str


#: The one table of named weights. Every URL was taken from its publisher: torchvision's
#: ``ResNet*_Weights.IMAGENET1K_V1`` (what mmdet configs mean by ``torchvision://resnet50``),
#: NASA's ``pretrained_microscopy_models.util.get_pretrained_microscopynet_url`` (v1.1 is
#: resnet50/micronet's latest; imagenet-micronet exists as v1.0 only), mmdet 3.1's
#: ``configs/mask_rcnn/metafile.yml`` and mmrotate 1.0's ``configs/{rotated_faster_rcnn,
#: oriented_rcnn}/metafile.yml`` (tests/test_weights.py compares them with the installed ones).
PRESETS: dict[str, Preset] = {
    "imagenet": Preset(
        "backbone",
        {18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
         34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
         50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
         101: "https://download.pytorch.org/models/resnet101-63fe2227.pth"},
        "torchvision ImageNet-1k ResNet (IMAGENET1K_V1)",
        "sha256 prefix in the file name (torchvision)",
        "the default (`auto`): a general start for any image"),
    "micronet": Preset(
        "backbone",
        {50: _NASA + "resnet50_pretrained_microscopynet_v1.1.pth.tar"},
        "NASA pretrained-microscopy-models: ResNet-50 trained on MicroNet (>100k micrographs)",
        "none published",
        "unusual contrast (EM, not photographs)"),
    "imagenet-micronet": Preset(
        "backbone",
        {50: _NASA + "resnet50_pretrained_imagenet-microscopynet_v1.0.pth.tar"},
        "NASA pretrained-microscopy-models: ResNet-50, ImageNet then MicroNet",
        "none published",
        "unusual contrast, starting from ImageNet features"),
    "coco": Preset(
        "detector",
        {"mask_rcnn": _MMDET + "mask_rcnn/mask_rcnn_r50_fpn_1x_coco/"
                      "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth"},
        "mmdet model zoo: Mask R-CNN R-50-FPN 1x COCO (box AP 38.2, mask AP 34.7)",
        "sha256 prefix in the file name (OpenMMLab)",
        "few images (< 20) for task=vesicles: fine-tune a whole COCO detector"),
    "dota": Preset(
        "detector",
        {"rotated_faster_rcnn": _MMROTATE + "rotated_faster_rcnn/"
         "rotated_faster_rcnn_r50_fpn_1x_dota_le90/"
         "rotated_faster_rcnn_r50_fpn_1x_dota_le90-0393aa5c.pth",
         "oriented_rcnn": _MMROTATE + "oriented_rcnn/oriented_rcnn_r50_fpn_1x_dota_le90/"
                          "oriented_rcnn_r50_fpn_1x_dota_le90-6d2b2ce0.pth"},
        "mmrotate model zoo: rotated Faster R-CNN / Oriented R-CNN le90 R-50-FPN 1x DOTA "
        "(mAP 73.40 / 75.69)",
        "sha256 prefix in the file name (OpenMMLab)",
        "few images for task=nanorods: fine-tune a whole DOTA detector"),
}

_SCRATCH_WORDS = ("", "none", "null", "scratch")


@dataclass
class Weights:
    """What a setting resolved to: a local file (``path``) or nothing (from scratch)."""

    setting: str  # the config key, e.g. model.backbone_checkpoint
    spec: str  # what the user wrote
    path: Path | None = None
    url: str | None = None
    preset: str | None = None
    sha256: str | None = None  # of the file used
    hash_check: str = ""
    reason: str = ""  # why from scratch

    def record(self) -> dict[str, Any]:
        """Plain data for the run record and metrics.json."""
        if self.path is None:
            return {"spec": self.spec, "loaded": "from scratch",
                    **({"reason": self.reason} if self.reason else {})}
        return {"spec": self.spec, "loaded": "preset" if self.preset else
                ("url" if self.url else "file"), "preset": self.preset, "url": self.url,
                "path": str(self.path), "sha256": self.sha256, "hash_check": self.hash_check}


class WeightsUnavailable(CheckpointError):
    """The weights are neither cached nor downloadable now (offline, server unreachable)."""


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "em_lightning" /
                "weights").expanduser()


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def published_hash(url: str) -> str | None:
    """The sha256 prefix a file name carries (torch.hub's ``<name>-<hash>.<ext>``), for the
    publishers that name files so; elsewhere only a prefix with a letter counts (a dated name
    like ``model-20240101.pth`` is no hash)."""
    parsed = urllib.parse.urlparse(url)
    match = _HASH_IN_NAME.search(Path(parsed.path).name)
    if match is None:
        return None
    prefix = match.group(1)
    if parsed.hostname in PUBLISHER_HOSTS or re.search("[a-f]", prefix):
        return prefix
    return None


def cached_path(url: str) -> Path:
    """Where the file of ``url`` lives in the cache: its own name when that is unique (a hash
    in it, or a preset's file), else under a folder named by the URL's hash."""
    name = Path(urllib.parse.urlparse(url).path).name or "weights.pth"
    if published_hash(url) or any(name == Path(u).name for p in PRESETS.values()
                                  for u in p.urls.values()):
        return cache_dir() / name
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:12] / name


def _mirrored(url: str) -> str:
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    return f"{mirror.rstrip('/')}/{Path(url).name}" if mirror else url


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# hosts found unreachable in this process: ``auto`` tries each once, then goes on offline
_UNREACHABLE: dict[str, str] = {}
_WARNED: set[str] = set()


def _put_hint(url: str, dest: Path) -> str:
    return f"download {url} and put it at {dest}"


def download(url: str, dest: Path, expected: str | None, setting: str,
             once_per_host: bool = False) -> str:
    """Download ``url`` to ``dest`` (atomically), check it against ``expected`` (a sha256
    prefix) and return its sha256. Raises :class:`WeightsUnavailable` without network.
    With ``EM_LIGHTNING_WEIGHTS_MIRROR`` the file is fetched from the mirror."""
    source = _mirrored(url)
    host = urllib.parse.urlparse(source).netloc
    if offline():
        raise WeightsUnavailable(f"{setting}: {dest.name} is not cached and {ENV_OFFLINE} is set; "
                                 f"{_put_hint(url, dest)}")
    if once_per_host and host in _UNREACHABLE:
        raise WeightsUnavailable(f"{setting}: {source} unreachable ({_UNREACHABLE[host]}); "
                                 f"{_put_hint(url, dest)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    try:
        try:
            request = urllib.request.Request(source, headers={"User-Agent": "em_lightning"})
            response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, urllib.error.HTTPError) else \
                str(getattr(exc, "reason", exc))
            _UNREACHABLE[host] = reason
            raise WeightsUnavailable(f"{setting}: cannot download {source} ({reason}); "
                                     f"{_put_hint(url, dest)}") from None
        with response:
            _set_read_timeout(response)
            digest = _stream(response, tmp, source)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if expected and not digest.startswith(expected):
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"{setting}: {source} downloaded with sha256 {digest[:16]}..., but its publisher gives "
            f"{expected} (in the file name): corrupted or replaced; the file was removed")
    os.replace(tmp, dest)
    log.info("downloaded %s -> %s (sha256 %s)", source, dest, digest)
    return digest


def _set_read_timeout(response: Any) -> None:
    """The connect timeout is short (``auto`` must fail fast offline); a started download
    may stall longer. urllib has one timeout for both: raise it on the open socket."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(READ_TIMEOUT)


def _stream(response: Any, tmp: Path, url: str) -> str:
    """Copy the body into ``tmp`` with a progress bar; an early end is an error."""
    from tqdm import tqdm

    total = int(response.headers.get("Content-Length") or 0) or None
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                        unit_divisor=1024, desc=Path(url).name) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    except (OSError, ValueError) as exc:  # reset, timeout, broken chunked encoding
        raise CheckpointError(f"download of {url} broke off after {size} bytes ({exc}); "
                              f"nothing was kept, run again") from None
    if total is not None and size != total:
        raise CheckpointError(f"download of {url} broke off after {size} of {total} bytes; "
                              f"nothing was kept, run again")
    return digest.hexdigest()


def fetch(url: str, setting: str, once_per_host: bool = False,
          expected: str | None = None) -> tuple[Path, str, str]:
    """The cached file of ``url`` (downloaded once): ``(path, sha256, hash check)``."""
    expected = expected or published_hash(url)
    dest = cached_path(url)
    if dest.is_file():
        digest = file_sha256(dest)
        if expected and not digest.startswith(expected):
            raise CheckpointError(f"{setting}: {dest} has sha256 {digest[:16]}..., but {url} "
                                  f"is published with {expected}: delete the file and run again")
    else:
        digest = download(url, dest, expected, setting, once_per_host)
    check = f"sha256 starts with {expected} as published" if expected else "none published"
    return dest, digest, check


def preset_url(name: str, key: Any, setting: str) -> str:
    preset = PRESETS[name]
    if key not in preset.urls:
        have = ", ".join(str(k) for k in preset.urls)
        what = "model.detector.backbone.depth" if preset.kind == "backbone" else "model"
        raise CheckpointError(f"{setting}={name}: published for {what} in [{have}] only, "
                              f"this model has {key}")
    return preset.urls[key]


def _scheme_url(spec: str, setting: str) -> str:
    """URL (or local file) of ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` names, from
    MMEngine's own tables."""
    from mmengine.runner import checkpoint as mm

    scheme, name = spec.split("://", 1)
    if scheme in ("torchvision", "modelzoo"):
        table = mm.get_torchvision_models()
    elif scheme in ("open-mmlab", "openmmlab"):
        table = mm.get_external_models()
        name = mm.get_deprecated_model_names().get(name, name)
    else:
        table = mm.get_mmcls_models()
    if name not in table:
        import difflib

        close = difflib.get_close_matches(name, list(table), n=3)
        raise CheckpointError(f"{setting}={spec}: no such name in MMEngine's {scheme} table"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
    target = table[name]
    if not target.startswith(("http://", "https://")):  # open-mmlab: relative to mmengine home
        return str(Path(mm._get_mmengine_home()) / target)
    return target


def _model_key(kind: str, detector: dict, scope: str) -> Any:
    if kind == "backbone":
        return int((detector.get("backbone") or {}).get("depth", 50))
    if scope == "mmrotate":
        head = str((detector.get("rpn_head") or {}).get("type", ""))
        return "oriented_rcnn" if "Oriented" in head else "rotated_faster_rcnn"
    return "mask_rcnn" if "MaskRCNN" in str(detector.get("type", "")) else str(detector.get("type"))


def resolve(spec: str | os.PathLike | None, setting: str, detector: dict | None = None,
            scope: str = "mmdet") -> Weights:
    """Turn a ``backbone_checkpoint`` / ``load_from`` value into a local file (or from scratch).

    ``auto`` (backbone only) is the ImageNet preset if cached or downloadable, else from scratch
    with one loud warning; every other value that cannot be had is an error.
    """
    text = "" if spec is None else str(spec).strip()
    if text.lower() in _SCRATCH_WORDS:
        return Weights(setting, text or "null")
    detector = detector or {}
    is_backbone = setting.endswith("backbone_checkpoint")
    if text == "auto":
        if not is_backbone:
            raise CheckpointError(f"{setting}=auto: only model.backbone_checkpoint has `auto`")
        return _auto(setting, detector, scope)
    if text in PRESETS:
        preset = PRESETS[text]
        if preset.kind == "backbone" and not is_backbone:
            raise CheckpointError(f"{setting}={text}: backbone weights; use "
                                  f"model.backbone_checkpoint={text}")
        url = preset_url(text, _model_key(preset.kind, detector, scope), setting)
        path, digest, check = fetch(url, setting)
        return Weights(setting, text, path, url, text, digest, check)
    url = _scheme_url(text, setting) if re.match(r"(torchvision|modelzoo|open-?mmlab|mmcls)://",
                                                 text) else text
    if url.startswith(("http://", "https://")):
        path, digest, check = fetch(url, setting)
        return Weights(setting, text, path, url, None, digest, check)
    path = Path(url).expanduser()
    if not path.exists() and "/" not in text and "." not in text:
        raise CheckpointError(f"{setting}={text}: neither a file nor a preset; presets: "
                              + ", ".join(["auto", *PRESETS]))
    return Weights(setting, text, path, hash_check="local file",
                   sha256=file_sha256(path) if path.is_file() else None)


def _auto(setting: str, detector: dict, scope: str) -> Weights:
    depth = _model_key("backbone", detector, scope)
    url = PRESETS["imagenet"].urls.get(depth)
    if url is None:
        reason = f"no ImageNet ResNet-{depth} in the preset table"
        _warn_once(setting, f"{setting}=auto: {reason}; training FROM SCRATCH")
        return Weights(setting, "auto", reason=reason)
    try:
        path, digest, check = fetch(url, setting, once_per_host=True)
    except WeightsUnavailable as exc:
        dest = cached_path(url)
        reason = str(exc).split(": ", 1)[-1]
        _warn_once(setting, (
            f"\n{'!' * 78}\n{setting}=auto: ImageNet ResNet-{depth} weights are not cached and "
            f"cannot be downloaded now, so this model trains FROM SCRATCH (far more epochs and "
            f"images needed; see BENCHMARKS.md).\n  To use them: download {url}\n  and put it "
            f"at {dest} (or set {ENV_CACHE} to a folder holding it), or pass "
            f"{setting}=/path/to/resnet{depth}.pth.\n  {setting}=null trains from scratch "
            f"without this warning.\n{'!' * 78}"))
        return Weights(setting, "auto", reason=reason)
    return Weights(setting, "auto", path, url, "imagenet", digest, check)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s", message)
