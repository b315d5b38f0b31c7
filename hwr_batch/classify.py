"""Character classification with onnxruntime.

A model is an ONNX file whose graph takes float32 (N, 1, 28, 28) in [0, 1], white ink on black
(the output of :func:`hwr_batch.normalize`), and returns class probabilities (N, C). Everything
else the reader needs travels in the file's metadata properties (see ``training/export.py``):

- ``labels``: the class labels in output order, as one string ("0123456789");
- ``input_convention``: a human-readable statement of the input;
- provenance: ``datasets``, ``metrics``, ``command``, ``seed``, ``created``.

A model may come with an int8 companion (``NAME.int8.onnx``, see ``defaults.INT8_SUFFIX``):
it classifies every crop, and crops whose best probability is under its ``recheck_below``
metadata value are classified again by the float model, whose answer is kept. The value is
chosen per model when it is quantised: the page reader's character error rate with the pair
must not exceed the float model's (see the model cards). The page reader's split search
compares its candidate pieces by the int8 answers alone (``predict_proba_fast``) and rechecks
only the characters it keeps (``recheck``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hwr_batch import defaults
from hwr_batch.errors import ModelError


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    n = threads if threads is not None else int(os.environ.get("HWR_THREADS", "0") or 0)
    # 0 lets onnxruntime use every core; batch workers pass 1 so processes don't fight.
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


@dataclass
class Classifier:
    """A loaded character model.

    ``predict(crops)`` takes (N, 28, 28) white ink on black, uint8 0-255 or float32 0-1.
    ``fast``: the int8 companion (or None); crops it scores under ``recheck_below`` are
    scored again by the float model.
    """

    path: str
    labels: str
    metadata: dict[str, str]
    _session: Any
    _input_name: str
    fast: Any = None
    recheck_below: float = 1.0

    def _run(self, session: Any, x: npt.NDArray[np.float32], batch_size: int) -> Any:
        parts = [
            session.run(None, {self._input_name: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)

    @property
    def name(self) -> str:
        return self.metadata.get("name", Path(self.path).stem)

    def _as_input(self, crops: npt.ArrayLike) -> npt.NDArray[np.float32]:
        x = np.asarray(crops)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (defaults.MODEL_SIZE, defaults.MODEL_SIZE):
            raise ValueError(f"crops must be (N, 28, 28), got {x.shape}")
        if x.dtype == np.uint8:
            xf = x.astype(np.float32) / 255.0
        else:
            xf = np.clip(x.astype(np.float32), 0.0, 1.0)
        return xf[:, None, :, :]

    def predict_proba(
        self, crops: npt.ArrayLike, batch_size: int = defaults.BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Class probabilities, float32 (N, len(labels))."""
        x = self._as_input(crops)
        if len(x) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self._recheck_rows(x, self._run_fast(x, batch_size), batch_size)

    def _run_fast(self, x: npt.NDArray[np.float32], batch_size: int) -> npt.NDArray[np.float32]:
        session = self._session if self.fast is None else self.fast
        return np.asarray(self._run(session, x, batch_size), np.float32)

    def _recheck_rows(
        self, x: npt.NDArray[np.float32], proba: npt.NDArray[np.float32], batch_size: int
    ) -> npt.NDArray[np.float32]:
        """Rows of ``proba`` (int8 answers on model input ``x``) under ``recheck_below``
        scored again by the float model, in place."""
        if self.fast is None:
            return proba
        unsure = np.flatnonzero(proba.max(axis=1) < self.recheck_below)
        if len(unsure):
            proba[unsure] = self._run(self._session, x[unsure], batch_size)
        return proba

    def predict_proba_fast(
        self, crops: npt.ArrayLike, batch_size: int = defaults.BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Class probabilities from the int8 companion alone (the float model without one).

        For candidates that are only compared with each other (the pieces of the split
        search); :meth:`recheck` then settles the characters that are kept.
        """
        x = self._as_input(crops)
        if len(x) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self._run_fast(x, batch_size)

    def recheck(
        self,
        crops: npt.ArrayLike,
        proba: npt.NDArray[np.float32],
        batch_size: int = defaults.BATCH_SIZE,
    ) -> npt.NDArray[np.float32]:
        """``proba`` from :meth:`predict_proba_fast` made equal to :meth:`predict_proba`'s.

        Rows under ``recheck_below`` are scored again by the float model (in place).
        """
        if self.fast is None or len(proba) == 0:
            return proba
        return self._recheck_rows(self._as_input(crops), proba, batch_size)

    def predict(
        self, crops: npt.ArrayLike, batch_size: int = defaults.BATCH_SIZE
    ) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Best label and its probability per crop: (labels list[str], confidences (N,))."""
        p = self.predict_proba(crops, batch_size)
        idx = p.argmax(axis=1)
        return [self.labels[i] for i in idx], p[np.arange(len(p)), idx]

    def topk(
        self, proba: npt.NDArray[np.float32], k: int = defaults.TOP_K
    ) -> list[tuple[tuple[str, float], ...]]:
        """Top-k (label, probability) pairs per row of ``proba``, best first."""
        order = np.argsort(-proba, axis=1)[:, :k]
        return [
            tuple((self.labels[j], float(row[j])) for j in idx)
            for row, idx in zip(proba, order, strict=True)
        ]


def model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a bundled model's name ("digits", "letters", "alnum", "digits_forms") to its
    file, or check a given path."""
    s = str(name_or_path)
    bundled = Path(str(resources.files("hwr_batch") / "models" / f"{s}.onnx"))
    named = s in defaults.CHARSETS or (s.isidentifier() and bundled.is_file())
    p = bundled if named else Path(s)
    if not p.is_file():
        raise ModelError(f"{p}: model file not found")
    return p


def _session(path: str, threads: int | None) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            path, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: not a loadable ONNX model ({exc})") from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (what an int8 companion's ``quantized_from`` holds)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def int8_companion(path: str | os.PathLike[str]) -> Path:
    """Where the int8 companion of a model file lives: ``NAME.onnx`` -> ``NAME.int8.onnx``."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".onnx") + defaults.INT8_SUFFIX)


def _fast_companion(path: str, threads: int | None) -> tuple[Any, float] | None:
    """The int8 companion's session and its recheck threshold, if it belongs to ``path``."""
    if os.environ.get(defaults.EXACT_ENV, "") not in ("", "0") or path.endswith(
        defaults.INT8_SUFFIX
    ):
        return None
    companion = int8_companion(path)
    if not companion.is_file():
        return None
    sess = _session(str(companion), threads)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if meta.get("quantized_from") != file_sha256(path):
        return None  # made from another version of the float model
    try:
        return sess, float(meta["recheck_below"])
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{companion}: no valid 'recheck_below' metadata") from exc


@lru_cache(maxsize=8)
def _load(path: str, threads: int | None) -> Classifier:
    sess = _session(path, threads)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    labels = meta.get("labels")
    if not labels:
        raise ModelError(f"{path}: model has no 'labels' metadata; export it with hwr-train")
    out_dim = sess.get_outputs()[0].shape[-1]
    if isinstance(out_dim, int) and out_dim != len(labels):
        raise ModelError(f"{path}: {out_dim} outputs but {len(labels)} labels in metadata")
    clf = Classifier(
        path=path,
        labels=labels,
        metadata=meta,
        _session=sess,
        _input_name=sess.get_inputs()[0].name,
    )
    fast = _fast_companion(path, threads)
    if fast is not None:
        clf.fast, clf.recheck_below = fast
    return clf


def load_classifier(
    name_or_path: str | os.PathLike[str] = "digits", threads: int | None = None
) -> Classifier:
    """Load a bundled model by name ("digits", "letters", "alnum") or an .onnx file by path.

    Loaded models are cached per process, so a worker loads each model once.
    """
    return _load(str(model_path(name_or_path)), threads)


def second_models(first: Classifier) -> tuple[Classifier, ...]:
    """The bundled models that give ``first``'s unsure characters a second reading (may be none).

    Only the bundled models named in ``defaults.SECOND_MODEL`` get them (a model given by path
    is read as it is), and none when ``defaults.SECOND_OPINION_ENV`` is "0". A named model
    that cannot be loaded, or that lacks some of ``first``'s labels, is left out.
    """
    names = defaults.SECOND_MODEL.get(first.name, ())
    if not names or os.environ.get(defaults.SECOND_OPINION_ENV, "") == "0":
        return ()
    if not is_bundled(first):
        return ()
    out = []
    for name in names:
        try:
            second = load_classifier(name)
        except ModelError:
            continue
        if set(first.labels) <= set(second.labels):
            out.append(second)
    return tuple(out)


def is_bundled(clf: Classifier) -> bool:
    """True when ``clf`` is read from the bundled file of its own name (not a given path)."""
    try:
        return Path(clf.path).resolve() == model_path(clf.name).resolve()
    except (ModelError, OSError):
        return False


def proba_over(model: Classifier, crops: npt.ArrayLike, labels: str) -> npt.NDArray[np.float64]:
    """``model``'s probabilities on ``crops`` over ``labels`` (a subset of its own labels),
    renormalised to sum to 1: float64 (N, len(labels))."""
    cols = [model.labels.index(lab) for lab in labels]
    p = np.asarray(model.predict_proba(crops), np.float64)[:, cols]
    return p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)


def blend_second_opinion(
    proba: npt.NDArray[np.float32],
    crops: npt.ArrayLike,
    first: Classifier,
    second: Classifier | Sequence[Classifier] | None,
    below: float | None = None,
    weight: float | None = None,
) -> npt.NDArray[np.float32]:
    """``first``'s probabilities with the unsure rows blended with ``second``'s.

    proba: float32 (N, len(first.labels)), ``first``'s answers on ``crops`` (N, 28, 28). Rows
    whose best probability is under ``below`` (default SECOND_OPINION_BELOW) become
    (1 - weight) * proba + weight * the second reading: the mean of the second models'
    probabilities over ``first``'s labels, each renormalised (weight: default
    SECOND_OPINION_WEIGHT). Other rows are unchanged.
    """
    below = defaults.SECOND_OPINION_BELOW if below is None else below
    weight = defaults.SECOND_OPINION_WEIGHT if weight is None else weight
    seconds = () if second is None else (second,) if isinstance(second, Classifier) else second
    unsure = np.flatnonzero(proba.max(axis=1) < below)
    if not seconds or len(unsure) == 0:
        return proba
    x = np.asarray(crops)[unsure]
    p2 = np.mean([proba_over(model, x, first.labels) for model in seconds], axis=0)
    out = proba.copy()
    out[unsure] = ((1.0 - weight) * proba[unsure] + weight * p2).astype(np.float32)
    return out


def verifier_path() -> Path:
    """Where the bundled single-character verifier lives (it may be absent)."""
    return Path(str(resources.files("hwr_batch") / "models" / f"{defaults.VERIFIER_MODEL}.onnx"))


def load_verifier(
    path: str | os.PathLike[str] | None = None, threads: int | None = None
) -> Classifier:
    """Load the single-character verifier (default: the bundled one).

    It is a two-output model on the classifiers' input ((N, 28, 28) white ink on black):
    ``predict_proba(crops)[:, 1]`` is P(the crop is exactly one whole character). Like a
    character model it may have an int8 companion (``verifier.int8.onnx``). Raises ModelError
    if the file is missing or is not a verifier (metadata ``task``).
    """
    p = Path(path) if path is not None else verifier_path()
    if not p.is_file():
        raise ModelError(f"{p}: verifier model file not found")
    return _load_verifier(str(p), threads)


@lru_cache(maxsize=2)
def _load_verifier(path: str, threads: int | None) -> Classifier:
    # Cached apart from the character models: a worker's model cache holds what it reads with.
    sess = _session(path, threads)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if meta.get("task") != defaults.VERIFIER_TASK or len(meta.get("labels", "")) != 2:
        raise ModelError(f"{path}: not a single-character verifier (metadata 'task')")
    ver = Classifier(
        path=path,
        labels=meta["labels"],
        metadata=meta,
        _session=sess,
        _input_name=sess.get_inputs()[0].name,
    )
    fast = _fast_companion(path, threads)
    if fast is not None:
        ver.fast, ver.recheck_below = fast
    return ver


def model_card(clf: Classifier) -> dict[str, Any]:
    """The model's metadata with JSON-valued entries decoded."""
    card: dict[str, Any] = {}
    for k, v in clf.metadata.items():
        try:
            card[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            card[k] = v
    return card
