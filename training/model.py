"""The character CNN: conv-BN-ReLU blocks, input normalisation inside the module.

The module takes raw float32 (N, 1, 28, 28) in [0, 1], white ink on black (the output of
``hwr_batch.normalize``), and returns logits (N, C). The mean/std that standardise the input are
buffers of the module, so they travel in the checkpoint and in the exported ONNX graph and are
written down nowhere else.
"""

from __future__ import annotations

import torch
from torch import nn

#: Default widths of the three stages (28x28, 14x14, 7x7). Chosen by measurement: the digits
#: model must classify >= 5,000 crops/s on 2 CPU threads under onnxruntime at batch 256. On the
#: 2-core dev machine (AMD EPYC) (32, 48, 96) ran ~8,200 crops/s (163k parameters) and
#: (32, 64, 128) ~5,000 crops/s (282k), too close to the bar for the digits model.
DEFAULT_WIDTHS = (32, 48, 96)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CharCNN(nn.Module):
    """Small VGG-style CNN for 28x28 character crops.

    Stages: [conv(1->w0)] pool [conv(w0->w1), conv(w1->w1)] pool [conv(w1->w2), conv(w2->w2)]
    global-average-pool, dropout, linear. Each conv is 3x3, batch-normalised, ReLU.

    num_classes: number of output classes.
    widths: channels of the three stages.
    mean, std: input standardisation, applied inside ``forward``.
    dropout: before the classifier.
    """

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, int, int] = DEFAULT_WIDTHS,
        mean: float = 0.13,
        std: float = 0.31,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.features = nn.Sequential(
            _conv_bn_relu(1, w0),
            nn.MaxPool2d(2),  # 14x14
            _conv_bn_relu(w0, w1),
            _conv_bn_relu(w1, w1),
            nn.MaxPool2d(2),  # 7x7
            _conv_bn_relu(w1, w2),
            _conv_bn_relu(w2, w2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(w2, num_classes),
        )
        self.num_classes = num_classes
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 (N, 1, 28, 28) in [0, 1] -> logits float32 (N, num_classes)."""
        x = (x - self.mean) / self.std
        return self.head(self.features(x))


class WithSoftmax(nn.Module):
    """Wraps a classifier so that its output is probabilities: what the ONNX graph returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
