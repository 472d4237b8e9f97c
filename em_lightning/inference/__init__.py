"""Prediction on new images: tiling and seam merging, model running, results and reports.

``tiling`` (tile grid, owned regions), ``detections`` (objects with cropped masks, COCO RLE),
``merge`` (the seam rule), ``engine`` (model runner + tiled, batched predictor), ``inputs``
(file discovery, skipping unreadable files), ``results`` (measurements, COCO entries,
overlays), ``outputs`` (tables, figures, HTML report shared by predict and analyze),
``parts`` and ``manifest`` (each image's results on disk as it finishes; resume, shards).
Modules are imported directly (``from em_lightning.inference.engine import ...``) so that
importing one does not pull in torch or matplotlib needlessly.
"""
