"""Weights by name, URL or file (em_lightning.models.weights), all offline: a loopback HTTP
server serves generated checkpoints in the real key layouts (torchvision ResNet, NASA MicroNet,
an mmdet model-zoo checkpoint with its ``meta``)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from em_lightning.errors import CheckpointError
from em_lightning.models import weights
from em_lightning.models.builder import build_detector
from tests.conftest import compose_cfg

SITE = Path(torch.__file__).resolve().parent.parent


class LoopbackServer:
    """Files by URL path on 127.0.0.1; records every request; ``truncate`` paths announce
    their full length and close the connection half-way through the body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.truncate: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in owner.truncate:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache and a fresh process state (no host marked unreachable, no warning yet)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.ENV_CACHE, str(folder))
    monkeypatch.delenv(weights.ENV_OFFLINE, raising=False)
    monkeypatch.delenv(weights.ENV_MIRROR, raising=False)
    monkeypatch.setattr(weights, "_UNREACHABLE", {})
    monkeypatch.setattr(weights, "_WARNED", set())
    return folder


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def hashed_name(stem: str, body: bytes, ext: str = "pth") -> str:
    """``<stem>-<sha256 prefix>.<ext>``, torchvision's / OpenMMLab's naming."""
    prefix = hashlib.sha256(body).hexdigest()[:8]
    assert any(c in "abcdef" for c in prefix)  # fixed content: a prefix with a letter
    return f"{stem}-{prefix}.{ext}"


def resnet_state(depth: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for buf in model.buffers():  # BN statistics too, so every tensor is checked
        if buf.dtype.is_floating_point:
            buf.copy_(torch.rand_like(buf) + 0.5)
    return model.state_dict()


def tiny_cfg(*extra: str, task: str = "vesicles"):
    return compose_cfg([f"task={task}", "experiment=tiny", *extra])


def detector_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg.model.detector, resolve=True)


def assert_backbone_equals(model, state: dict[str, torch.Tensor]) -> int:
    own = model.detector.backbone.state_dict()
    compared = [k for k in state if not k.startswith("fc.") and k in own]
    assert len(compared) >= 100
    for key in compared:
        assert torch.equal(own[key], state[key]), key
    return len(compared)


# ------------------------------------------------------------------ the table


def _metafile_weights(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    return [m["Weights"] for m in data["Models"] if "Weights" in m]


def test_table_urls_and_hashes_are_the_publishers():
    from mmengine.runner.checkpoint import get_torchvision_models

    tv = get_torchvision_models()
    imagenet = weights.PRESETS["imagenet"].urls
    for depth, url in imagenet.items():
        enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
        assert url == enum.url == tv[f"resnet{depth}"]
        assert weights.published_hash(url) == url.rsplit("-", 1)[1].split(".")[0]
    assert weights.published_hash(imagenet[18]) == "f37072fd"
    coco = weights.PRESETS["coco"].urls["mask_rcnn"]
    assert coco in _metafile_weights(SITE / "mmdet/.mim/configs/mask_rcnn/metafile.yml")
    assert weights.published_hash(coco) == "d4b0c5d6"
    dota = weights.PRESETS["dota"].urls
    mmrotate = SITE / "mmrotate/.mim/configs"
    assert dota["rotated_faster_rcnn"] in _metafile_weights(
        mmrotate / "rotated_faster_rcnn/metafile.yml")
    assert dota["oriented_rcnn"] in _metafile_weights(mmrotate / "oriented_rcnn/metafile.yml")
    assert [weights.published_hash(u) for u in dota.values()] == ["0393aa5c", "6d2b2ce0"]
    for name in ("micronet", "imagenet-micronet"):  # NASA publishes no hash
        preset = weights.PRESETS[name]
        assert preset.hash_note == "none published"
        assert weights.published_hash(preset.urls[50]) is None
    # a dated name on another host is no hash; a hex suffix with a letter is
    assert weights.published_hash("https://example.org/model-20240101.pth") is None
    assert weights.published_hash("https://example.org/model-20240a01.pth") == "20240a01"


def test_schemes_resolve_with_mmengines_tables():
    import json

    import mmengine

    assert weights._scheme_url("torchvision://resnet50", "k") == \
        weights.PRESETS["imagenet"].urls[50]
    table = json.loads((Path(mmengine.__path__[0]) / "hub/openmmlab.json").read_text())
    assert weights._scheme_url("open-mmlab://detectron2/resnet50_caffe", "k") == \
        table["detectron2/resnet50_caffe"]
    with pytest.raises(CheckpointError, match="did you mean resnet50"):
        weights._scheme_url("torchvision://resnet5O", "model.backbone_checkpoint")


def test_presets_follow_the_model(server, monkeypatch):
    """Each preset asks for the file of the configured model (depth, detector) under its
    published name; served content that is not the published file fails the hash check."""
    monkeypatch.setenv(weights.ENV_MIRROR, server.base)
    cases = [
        ("imagenet", "model.backbone_checkpoint", tiny_cfg(), "resnet18-f37072fd.pth"),
        ("coco", "model.load_from", tiny_cfg(),
         "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth"),
        ("dota", "model.load_from", tiny_cfg(task="nanorods"),
         "rotated_faster_rcnn_r50_fpn_1x_dota_le90-0393aa5c.pth"),
        ("dota", "model.load_from", tiny_cfg("model=oriented_rcnn", task="nanorods"),
         "oriented_rcnn_r50_fpn_1x_dota_le90-6d2b2ce0.pth"),
    ]
    for preset, setting, cfg, name in cases:
        server.files[f"/{name}"] = b"not the published file" * 100
        with pytest.raises(CheckpointError, match=f"publisher gives {name[-12:-4]}.*removed"):
            weights.resolve(preset, setting, detector_dict(cfg), cfg.model.scope)
        assert server.requests[-1] == f"/{name}"
    assert not list(Path(weights.cache_dir()).rglob("*"))  # mismatches keep nothing


def test_wrong_preset_use_is_a_clear_error():
    det18 = detector_dict(tiny_cfg())
    with pytest.raises(CheckpointError, match=r"depth in \[50\] only, this model has 18"):
        weights.resolve("micronet", "model.backbone_checkpoint", det18)
    with pytest.raises(CheckpointError, match="use model.backbone_checkpoint=imagenet"):
        weights.resolve("imagenet", "model.load_from", det18)
    with pytest.raises(CheckpointError, match="neither a file nor a preset.*micronet"):
        weights.resolve("imagnet", "model.backbone_checkpoint", det18)
    with pytest.raises(CheckpointError, match="only model.backbone_checkpoint has `auto`"):
        weights.resolve("auto", "model.load_from", det18)
    assert weights.resolve("null", "model.load_from").record()["loaded"] == "from scratch"


# ------------------------------------------------------------------ downloads


def test_download_is_cached_checked_and_loaded(server, cache):
    state = resnet_state(18, seed=0)
    body = saved(state)
    name = hashed_name("resnet18", body)
    server.files[f"/{name}"] = body
    model = instantiate(tiny_cfg(f"model.backbone_checkpoint={server.url(name)}").model)
    assert_backbone_equals(model, state)
    assert (cache / name).read_bytes() == body
    record = model.pretrained["backbone_checkpoint"]
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["hash_check"] == f"sha256 starts with {name[-12:-4]} as published"
    assert record["url"] == server.url(name) and record["loaded"] == "url"
    assert model.pretrained["load_from"] == {"spec": "null", "loaded": "from scratch"}
    assert server.requests == [f"/{name}"]
    server.close()  # cache hit: no request, works without the server
    again = weights.resolve(server.url(name), "model.backbone_checkpoint")
    assert again.path == cache / name and again.sha256 == record["sha256"]
    assert server.requests == [f"/{name}"]


def test_auto_downloads_imagenet_once(server, monkeypatch, cache):
    """``auto`` = the ImageNet preset of the configured depth (table pointed at the loopback
    server by its base URL): downloaded once, then taken from the cache."""
    state = resnet_state(18, seed=5)
    body = saved(state)
    name = hashed_name("resnet18", body)
    server.files[f"/{name}"] = body
    imagenet = weights.PRESETS["imagenet"]
    monkeypatch.setitem(weights.PRESETS, "imagenet", dataclasses.replace(
        imagenet, urls={**imagenet.urls, 18: server.url(name)}))
    for _ in range(2):
        model = instantiate(tiny_cfg("model.backbone_checkpoint=auto").model)
        assert_backbone_equals(model, state)
        record = model.pretrained["backbone_checkpoint"]
        assert record["preset"] == "imagenet" and record["path"] == str(cache / name)
    assert server.requests == [f"/{name}"]


def test_interrupted_download_leaves_nothing(server, cache):
    body = saved(resnet_state(18, seed=1))
    name = hashed_name("resnet18", body)
    server.files[f"/{name}"] = body
    server.truncate.add(f"/{name}")
    with pytest.raises(CheckpointError, match=f"broke off after {len(body) // 2} of {len(body)}"):
        weights.resolve(server.url(name), "model.backbone_checkpoint")
    assert not list(cache.rglob("*.pth*"))  # neither the file nor a partial one
    server.truncate.clear()  # the next run downloads it whole
    assert weights.resolve(server.url(name), "k.backbone_checkpoint").path.read_bytes() == body


def test_micronet_layout_loads_into_resnet50(server, monkeypatch):
    """NASA's encoders: torchvision key names in a ``.pth.tar`` (here with a classifier of
    another size, which the backbone does not take); no hash published."""
    state = resnet_state(50, seed=2)
    state["fc.weight"], state["fc.bias"] = torch.zeros(7, 2048), torch.zeros(7)
    name = Path(weights.PRESETS["micronet"].urls[50]).name
    server.files[f"/{name}"] = saved(state)
    monkeypatch.setenv(weights.ENV_MIRROR, server.base)
    r50 = ["model.detector.backbone.depth=50",
           "model.detector.neck.in_channels=[256,512,1024,2048]"]
    model = instantiate(tiny_cfg("model.backbone_checkpoint=micronet", *r50).model)
    assert assert_backbone_equals(model, state) > 300
    record = model.pretrained["backbone_checkpoint"]
    assert record["preset"] == "micronet" and record["hash_check"] == "none published"
    assert record["url"] == weights.PRESETS["micronet"].urls[50]  # the real URL is recorded


def test_mmdet_zoo_checkpoint_with_meta(server, cache):
    """A model-zoo file (``meta`` with 80 COCO classes, ``state_dict``, ``optimizer``) by URL
    as ``load_from``: every shared tensor loads, the class heads of other classes stay fresh."""
    cfg = tiny_cfg()
    torch.manual_seed(3)
    zoo = build_detector(detector_dict(cfg), 80).state_dict()
    classes = tuple(f"coco_{i}" for i in range(80))
    body = saved({"meta": {"mmdet_version": "2.0.0", "CLASSES": classes, "epoch": 12},
                  "state_dict": zoo, "optimizer": {"state": {}, "param_groups": []}})
    name = hashed_name("mask_rcnn_r50_fpn_1x_coco_20200205", body)
    server.files[f"/{name}"] = body
    model = instantiate(tiny_cfg(f"model.load_from={server.url(name)}").model)
    own = model.detector.state_dict()
    same = [k for k in zoo if own[k].shape == zoo[k].shape]
    assert len(same) > 150
    for key in same:
        assert torch.equal(own[key], zoo[key]), key
    assert own["roi_head.bbox_head.fc_cls.weight"].shape[0] == 4  # 3 classes + background
    assert model.pretrained["load_from"]["sha256"] == hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------------ no network


def test_connection_refused_auto_warns_once_and_trains_from_scratch(monkeypatch, caplog, cache):
    monkeypatch.setenv(weights.ENV_MIRROR, f"http://127.0.0.1:{dead_port()}")
    with caplog.at_level(logging.WARNING, logger="em_lightning.models.weights"):
        model = instantiate(tiny_cfg("model.backbone_checkpoint=auto").model)
        again = weights.resolve("auto", "model.backbone_checkpoint", {"backbone": {"depth": 18}})
    record = model.pretrained["backbone_checkpoint"]
    assert record["loaded"] == "from scratch" and "refused" in record["reason"]
    assert again.path is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "FROM SCRATCH" in text and weights.PRESETS["imagenet"].urls[18] in text
    assert str(cache / "resnet18-f37072fd.pth") in text


def test_explicit_preset_without_network_is_a_one_line_error(monkeypatch, cache, capsys):
    """No silent fallback: the entry point stops with one message naming URL and path."""
    from em_lightning.cli import ReportedError, user_errors

    monkeypatch.setenv(weights.ENV_MIRROR, f"http://127.0.0.1:{dead_port()}")
    build = user_errors("train")(lambda cfg: instantiate(cfg.model))
    with pytest.raises(ReportedError):
        build(tiny_cfg("model.backbone_checkpoint=imagenet"))
    message = capsys.readouterr().err.splitlines()[0]
    assert message.startswith("error: model.backbone_checkpoint: cannot download ")
    assert "refused" in message and weights.PRESETS["imagenet"].urls[18] in message
    assert message.endswith(f"put it at {cache / 'resnet18-f37072fd.pth'}")


def test_auto_tries_an_unreachable_server_once_per_process():
    """A server that accepts and hangs up at once: ``auto`` connects one time only."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    mirror = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(weights.ENV_MIRROR, mirror)
            for _ in range(3):
                assert weights.resolve("auto", "model.backbone_checkpoint",
                                       {"backbone": {"depth": 34}}).path is None
            assert len(accepted) == 1
            with pytest.raises(CheckpointError, match="cannot download"):  # explicit: tries
                weights.resolve("imagenet", "model.backbone_checkpoint",
                                {"backbone": {"depth": 34}})
            assert len(accepted) == 2
    finally:
        listener.close()


def test_offline_mode_names_the_path_and_uses_a_file_put_there(server, monkeypatch, cache):
    monkeypatch.setenv(weights.ENV_MIRROR, server.base)
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    det50 = {"backbone": {"depth": 50}}
    url = weights.PRESETS["imagenet-micronet"].urls[50]
    target = cache / Path(url).name
    with pytest.raises(CheckpointError, match="EM_LIGHTNING_OFFLINE") as err:
        weights.resolve("imagenet-micronet", "model.backbone_checkpoint", det50)
    assert f"download {url} and put it at {target}" in str(err.value)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights put there by hand")
    found = weights.resolve("imagenet-micronet", "model.backbone_checkpoint", det50)
    assert found.path == target and found.url == url and found.preset == "imagenet-micronet"
    assert server.requests == []


def test_local_file_with_dataparallel_prefix(tmp_path):
    state = resnet_state(18, seed=4)
    path = tmp_path / "encoder.pth.tar"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = instantiate(tiny_cfg(f"model.backbone_checkpoint={path}").model)
    assert_backbone_equals(model, state)
    record = model.pretrained["backbone_checkpoint"]
    assert record["loaded"] == "file" and record["sha256"] == hashlib.sha256(
        path.read_bytes()).hexdigest()
