"""Export a trained CharCNN to ONNX with its provenance inside the file.

The graph takes ``input``: float32 (N, 1, 28, 28) in [0, 1] (white ink on black, dynamic N) and
returns ``probabilities``: float32 (N, C), softmax included. The metadata properties are what
``hwr_batch.classify`` reads: ``labels`` (required), ``name``, ``input_convention``,
``datasets``, ``metrics`` (JSON), ``command``, ``seed``, ``created`` (ISO date), ``torch``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwr_batch.errors import ModelError
from training.model import WithSoftmax

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
INPUT_CONVENTION = (
    "float32 (N, 1, 28, 28) in [0, 1]; white ink on black; glyph fitted in a 20x20 box keeping "
    "aspect ratio and centred by centre of mass (hwr_batch.normalize); standardisation is "
    "inside the graph; output: class probabilities (N, C) in the order of 'labels'"
)
#: Largest |onnxruntime - torch| difference in probability accepted after export.
EXPORT_TOLERANCE = 1e-4


def build_metadata(
    *,
    labels: str,
    name: str,
    datasets: list[str] | str,
    metrics: dict[str, Any],
    command: str,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The metadata properties of a model file, every value a string (JSON where structured)."""
    meta = {
        "labels": labels,
        "name": name,
        "input_convention": INPUT_CONVENTION,
        "datasets": datasets if isinstance(datasets, str) else json.dumps(datasets),
        "metrics": json.dumps(metrics, sort_keys=True),
        "command": command,
        "seed": str(seed),
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "torch": torch.__version__,
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return meta


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    metadata: dict[str, str],
    verify_batch: torch.Tensor | None = None,
) -> float:
    """Write ``model`` (logits) as an ONNX file with softmax in the graph and ``metadata``.

    The file is written next to ``path`` and renamed into place, so a crash never leaves half
    a model. Returns the largest absolute difference between onnxruntime's and torch's
    probabilities on ``verify_batch`` (float32 (N, 1, 28, 28); random crops if None) and raises
    ModelError if it exceeds EXPORT_TOLERANCE.
    """
    import onnx

    if not metadata.get("labels"):
        raise ValueError("metadata must hold 'labels'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = WithSoftmax(model).cpu().eval()
    example = torch.zeros(2, 1, 28, 28)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # The TorchScript-based exporter is what this small graph needs (no onnxscript
        # dependency); silence its deprecation notice.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.doc_string = f"hwr-batch character model '{metadata.get('name', path.stem)}'"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    try:
        diff = verify_onnx(wrapped, tmp, verify_batch)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return diff


def verify_onnx(
    wrapped: nn.Module, path: str | os.PathLike[str], batch: torch.Tensor | None = None
) -> float:
    """Max |onnxruntime - torch| over a batch; raises ModelError above EXPORT_TOLERANCE."""
    import onnxruntime as ort

    if batch is None:
        g = torch.Generator().manual_seed(0)
        batch = torch.rand(64, 1, 28, 28, generator=g)
    batch = batch.detach().float().cpu()
    with torch.no_grad():
        expected = wrapped.cpu().eval()(batch).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: batch.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= EXPORT_TOLERANCE:
        raise ModelError(
            f"{path}: onnxruntime output differs from torch by {diff:.2e} "
            f"(> {EXPORT_TOLERANCE:.0e})"
        )
    return diff
