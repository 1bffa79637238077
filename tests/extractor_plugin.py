"""An extractor of one's own, plugged in as `extractor: extractor_plugin:TinyBoxes` (the
module must be importable on every Ray node: installed, or on PYTHONPATH). Five boxes per
image (the whole image and its quadrants), each with a small conv net's features pooled
by RoIAlign, and a 4-class distribution."""

from __future__ import annotations

import time

import torch
from torch import nn

from vlpdist.shards.extract.extractors import Extractor, roi_align_mean

BOXES = torch.tensor(
    [[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]],
    dtype=torch.float32,
)


class TinyBoxesModule(nn.Module):
    def __init__(self, channels: int, seconds_per_batch: float):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, 2, 1))  # fmt: skip
        self.classes = nn.Linear(channels, 4)
        self.seconds_per_batch = seconds_per_batch

    def forward(self, pixels, content_hw):
        if self.seconds_per_batch:  # a slow model, for the test that kills a run midway
            time.sleep(self.seconds_per_batch)
        fmap = self.conv(pixels)
        size = pixels.shape[-1]
        out = []
        for i, (h, w) in enumerate(content_hw.tolist()):
            boxes = BOXES.to(pixels.device)
            on_square = boxes * boxes.new_tensor([w / size, h / size, w / size, h / size])
            feats = roi_align_mean(fmap[i], on_square)
            out.append((feats, boxes, self.classes(feats).softmax(-1)))
        return out


class TinyBoxes(Extractor):
    name = "tiny_boxes"
    OPTIONS = {"input_size": 64, "channels": 8, "seconds_per_batch": 0.0}

    def make_module(self) -> nn.Module:
        return TinyBoxesModule(
            int(self.options["channels"]), float(self.options["seconds_per_batch"])
        )
