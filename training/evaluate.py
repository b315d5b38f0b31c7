"""Evaluate an exported model the way the reader runs it: through hwr_batch.load_classifier.

Writes to a report folder:

- ``metrics.json``: accuracy, per-class precision/recall/support, accuracy per source, the
  confusion matrix, and counts of the look-alike confusions (O/0, I/1, S/5, Z/2, B/8) when the
  model knows both characters of a pair;
- ``confusion.png``: the confusion matrix (row = truth, column = prediction), log-scaled shading;
- ``mistakes.png``: a grid of the most confident mistakes, each crop with "truth>pred conf".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

import hwr_batch
from hwr_batch.errors import DataError
from training.fit import encode_labels, load_source, per_source_accuracy

#: Pairs that handwriting makes ambiguous when a model reads both digits and letters.
LOOKALIKE_PAIRS = (("O", "0"), ("I", "1"), ("S", "5"), ("Z", "2"), ("B", "8"))


def confusion_matrix(
    y: npt.NDArray[np.int64], pred: npt.NDArray[np.int64], n: int
) -> npt.NDArray[np.int64]:
    """int64 (n, n): row = true class, column = predicted class."""
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def per_class(cm: npt.NDArray[np.int64], labels: str) -> dict[str, dict[str, float | int]]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    out: dict[str, dict[str, float | int]] = {}
    for i, c in enumerate(labels):
        out[c] = {
            "precision": float(tp[i] / predicted[i]) if predicted[i] else float("nan"),
            "recall": float(tp[i] / support[i]) if support[i] else float("nan"),
            "support": int(support[i]),
        }
    return out


def lookalike_confusions(cm: npt.NDArray[np.int64], labels: str) -> dict[str, dict[str, int]]:
    """For each pair a/b the model knows: how often a was read as b and b as a."""
    out: dict[str, dict[str, int]] = {}
    for a, b in LOOKALIKE_PAIRS:
        if a in labels and b in labels:
            i, j = labels.index(a), labels.index(b)
            out[f"{a}/{b}"] = {
                f"{a}->{b}": int(cm[i, j]),
                f"{b}->{a}": int(cm[j, i]),
                "total": int(cm[i, j] + cm[j, i]),
            }
    return out


def render_confusion(cm: npt.NDArray[np.int64], labels: str, path: Path) -> None:
    """Draw the confusion matrix as a PNG with opencv (no plotting library needed)."""
    n = len(labels)
    cell = 36 if n <= 12 else 22
    margin = 40
    size = margin + n * cell + 10
    img = np.full((size, size, 3), 255, np.uint8)
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    frac = cm / rows
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(n):
        for j in range(n):
            x0, y0 = margin + j * cell, margin + i * cell
            f = frac[i, j]
            # Log-like shading so that rare confusions are visible next to the diagonal.
            shade = 0.0 if cm[i, j] == 0 else min(1.0, 0.25 + 0.75 * np.log10(1 + 99 * f) / 2)
            colour = (
                (int(255 * (1 - shade)), int(255 * (1 - 0.6 * shade)), 255)
                if i != j
                else (255, int(255 * (1 - 0.5 * shade)), int(255 * (1 - shade)))
            )
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            if cm[i, j]:
                txt = str(int(cm[i, j])) if cm[i, j] < 1000 else f"{cm[i, j] // 1000}k"
                scale = 0.3 if cell < 30 else 0.38
                cv2.putText(
                    img, txt, (x0 + 2, y0 + cell // 2 + 4), font, scale, (0, 0, 0), 1, cv2.LINE_AA
                )
        cv2.putText(
            img,
            labels[i],
            (12, margin + i * cell + cell // 2 + 5),
            font,
            0.5,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            img,
            labels[i],
            (margin + i * cell + cell // 2 - 5, 28),
            font,
            0.5,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    cv2.putText(img, "pred", (margin, 12), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(img, "true", (2, margin - 4), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    _write_png(path, img)


def render_mistakes(
    images: npt.NDArray[np.uint8],
    truth: list[str],
    pred: list[str],
    conf: npt.NDArray[np.float32],
    path: Path,
    columns: int = 10,
) -> None:
    """A grid of crops (white on black, 3x size) each captioned 'truth>pred conf'."""
    tile_w, tile_h, zoom = 96, 104, 3
    n = len(images)
    rows = max(1, -(-n // columns))
    img = np.full((rows * tile_h, columns * tile_w), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, columns)
        crop = cv2.resize(images[k], (28 * zoom, 28 * zoom), interpolation=cv2.INTER_NEAREST)
        y0, x0 = r * tile_h, c * tile_w + 6
        img[y0 : y0 + 28 * zoom, x0 : x0 + 28 * zoom] = crop
        cv2.putText(
            img,
            f"{truth[k]}>{pred[k]} {conf[k]:.2f}",
            (x0, y0 + tile_h - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            0,
            1,
            cv2.LINE_AA,
        )
    _write_png(path, img)


def _write_png(path: Path, img: npt.NDArray[np.uint8]) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)


def evaluate(
    model: str | os.PathLike[str],
    dataset: str,
    report_dir: str | os.PathLike[str] | None = None,
    worst: int = 50,
    threads: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (a name or .onnx path) on ``dataset`` (any source spec of fit).

    Classifies through ``hwr_batch.load_classifier``, i.e. onnxruntime, exactly as the page
    reader does. Returns the metrics dict; with ``report_dir`` also writes the report files.
    """
    clf = hwr_batch.load_classifier(model, threads=threads)
    data, y, skipped = encode_labels(load_source(dataset, "test"), clf.labels)
    if len(data) == 0:
        raise DataError(f"{dataset}: no image has a label the model knows ({clf.labels!r})")
    proba = clf.predict_proba(data.images)
    pred = proba.argmax(axis=1)
    conf = proba[np.arange(len(pred)), pred]
    cm = confusion_matrix(y, pred, len(clf.labels))
    metrics: dict[str, Any] = {
        "model": str(model),
        "model_name": clf.name,
        "dataset": dataset,
        "n": int(len(y)),
        "skipped_labels": skipped,
        "accuracy": float((pred == y).mean()),
        "errors": int((pred != y).sum()),
        "per_source": per_source_accuracy(pred, y, data.groups),
        "per_class": per_class(cm, clf.labels),
        "lookalike_confusions": lookalike_confusions(cm, clf.labels),
        "labels": clf.labels,
        "confusion_matrix": cm.tolist(),
    }
    if report_dir is not None:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        render_confusion(cm, clf.labels, out / "confusion.png")
        wrong = np.flatnonzero(pred != y)
        wrong = wrong[np.argsort(-conf[wrong])][:worst]
        render_mistakes(
            data.images[wrong],
            [clf.labels[i] for i in y[wrong]],
            [clf.labels[i] for i in pred[wrong]],
            conf[wrong],
            out / "mistakes.png",
        )
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(out / "metrics.json")
    return metrics


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """A short human-readable summary of :func:`evaluate`'s metrics."""
    lines = [
        f"{metrics['model_name']} on {metrics['dataset']}: accuracy {metrics['accuracy']:.4%} "
        f"({metrics['errors']} errors in {metrics['n']})"
        + (
            f", {metrics['skipped_labels']} images with unknown labels skipped"
            if metrics["skipped_labels"]
            else ""
        )
    ]
    if len(metrics["per_source"]) > 1:
        for src, v in metrics["per_source"].items():
            lines.append(f"  {src}: {v['accuracy']:.4%} of {v['n']}")
    for pair, v in metrics["lookalike_confusions"].items():
        a, b = pair.split("/")
        lines.append(f"  {pair}: {a}->{b} {v[f'{a}->{b}']}, {b}->{a} {v[f'{b}->{a}']}")
    return lines
