"""Training loop: data in, best checkpoint and an exported ONNX model out.

Sources (``--source``/positional): a model recipe name ("digits", "letters", "alnum", whose
train/test splits ``training.sources`` defines), a ``name:split`` pair for ``load_split``, an
``.npz`` written by ``export_npz`` (arrays ``images`` uint8 (N, 28, 28), ``labels`` str (N,),
``groups`` str (N,)), or any dataset path that ``training.datasets`` reads.

The loop: AdamW + OneCycle, cross-entropy with label smoothing, on-device batch augmentation
(``training.augment``), an exponential moving average of the weights (what gets validated and
exported), early stopping on a validation split carved from the training data, a checkpoint
(plain ``state_dict``s, loadable with ``weights_only=True``) after every epoch, and resume.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.optim.swa_utils import AveragedModel

from hwr_batch.classify import file_sha256
from hwr_batch.errors import BadArguments, DataError
from training.augment import NO_AUGMENT, AugmentConfig, augment_batch, make_generator
from training.data import LABEL_SETS, LabeledImages
from training.export import build_metadata, export_onnx, metadata_of, set_metadata
from training.model import DEFAULT_WIDTHS, CharCNN, count_parameters

CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------- data


def _source_of(group: str) -> str:
    """'chars74k/w017' -> 'chars74k': the data set part of a group name."""
    return group.split("/", 1)[0]


def load_npz(path: Path, split: str = "train") -> LabeledImages:
    """Read an .npz of labelled images.

    Two layouts: ``images``, ``labels`` (and optionally ``groups``) for one set; or
    ``training.sources.export_npz``'s ``train_*``/``test_*`` arrays, of which ``split`` picks one.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            prefix = f"{split}_" if f"{split}_images" in z.files else ""
            if not prefix and "train_images" in z.files:
                raise DataError(f"{path}: no split {split!r} in this npz (train or test)")
            images = z[f"{prefix}images"]
            labels = z[f"{prefix}labels"].astype(str)
            groups = z[f"{prefix}groups"].astype(str) if f"{prefix}groups" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz of images/labels ({exc})") from exc
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dtype != np.uint8:
        if images.size and float(images.max()) <= 1.0:
            images = np.round(images.astype(np.float32) * 255)
        images = np.clip(images, 0, 255).astype(np.uint8)
    if groups is None:
        groups = np.full(len(labels), path.stem)
    try:
        return LabeledImages(images, labels, groups)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc


def _split_spec(spec: str, split: str) -> tuple[str, str]:
    """'digits:test' -> ('digits', 'test'); a spec without a split suffix keeps ``split``."""
    base, sep, suffix = spec.rpartition(":")
    if sep and base and suffix in ("train", "test"):
        return base, suffix
    return spec, split


def load_source(spec: str, split: str = "train") -> LabeledImages:
    """Resolve a source spec (see module docstring) to labelled images.

    ``split`` ("train" or "test") applies to recipes and two-split .npz files; a ``:train`` or
    ``:test`` suffix on the spec overrides it. Other data sets are read whole.
    """
    spec, split = _split_spec(spec, split)
    if spec in LABEL_SETS:
        from training import sources

        return sources.load_split(spec, split)
    path = Path(spec)
    if not path.exists():
        raise BadArguments(f"{spec}: no such file, folder or recipe (digits, letters, alnum)")
    if path.suffix.lower() == ".npz":
        return load_npz(path, split)
    from training import datasets

    return datasets.read_dataset(path)


def has_test_split(spec: str) -> bool:
    """True for recipes and two-split .npz files (their held-out split is the default test)."""
    spec, _ = _split_spec(spec, "train")
    if spec in LABEL_SETS:
        return True
    path = Path(spec)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "test_images" in z.files
    except (OSError, ValueError):
        return False


def encode_labels(
    data: LabeledImages, labels: str
) -> tuple[LabeledImages, npt.NDArray[np.int64], int]:
    """Keep the rows whose label is in ``labels``; return (kept data, class indices, dropped).

    When the label set has no small letters (letters, alnum), small letters map to capitals:
    a written 'a' is an 'A' to these models.
    """
    raw = data.labels.astype(str)
    if not any(c.islower() for c in labels):
        raw = np.char.upper(raw)
    lookup = {c: i for i, c in enumerate(labels)}
    idx = np.array([lookup.get(s, -1) for s in raw], np.int64)
    keep = idx >= 0
    kept = LabeledImages(data.images[keep], raw[keep], data.groups[keep])
    return kept, idx[keep], int((~keep).sum())


def split_validation(
    n_or_y: npt.NDArray[np.int64], fraction: float, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Stratified random split of row indices into (train, validation)."""
    rng = np.random.default_rng(seed)
    y = n_or_y
    train_idx: list[npt.NDArray[np.intp]] = []
    val_idx: list[npt.NDArray[np.intp]] = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        k = int(round(len(rows) * fraction)) if len(rows) > 1 else 0
        val_idx.append(rows[:k])
        train_idx.append(rows[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


# --------------------------------------------------------------------------- config


@dataclass
class FitConfig:
    """Everything a training run depends on; stored in the checkpoint and the model file."""

    source: str
    labels: str
    name: str
    out_dir: str
    output: str | None = None
    test: list[str] = field(default_factory=list)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    val_fraction: float = 0.05
    patience: int = 8
    ema_decay: float = 0.999
    widths: tuple[int, int, int] = DEFAULT_WIDTHS
    dropout: float = 0.3
    augment: bool = True
    balance: float = 0.0
    seed: int = 0
    device: str = "auto"
    dry_run: bool = False
    resume: str | None = None
    extra: list[str] = field(default_factory=list)
    init: str | None = None
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


@dataclass
class FitResult:
    onnx_path: Path
    checkpoint: Path
    metrics: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadArguments("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise BadArguments(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


# --------------------------------------------------------------------------- progress


class Progress:
    """A rich progress bar on a terminal; one plain line per epoch otherwise (stderr)."""

    def __init__(self, total_steps: int, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self._bar: Any = None
        self._task: Any = None
        self.total = total_steps

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            with self._bar:
                self._task = self._bar.add_task("training", total=self.total, status="")
                yield self
        else:
            yield self

    def advance(self, status: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, status=status)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- loop


def _batches(
    n: int, batch_size: int, g: torch.Generator, weights: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Row indices of one epoch in batches: a permutation, or ``n`` draws by ``weights``."""
    if weights is None:
        order = torch.randperm(n, generator=g)
    else:
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    return list(order.split(batch_size))


def class_weights(y: npt.NDArray[np.int64], power: float) -> torch.Tensor | None:
    """Per-row sampling weights count(class) ** -power; None when power is 0 (plain shuffle).

    power 1 samples every class equally often; 0.5 meets half-way (in log terms) between the
    data's own skew and balance. alnum needs it: MNIST gives each digit ~7,000 images and
    each letter has ~600, so an unbalanced model reads most round letters as digits.
    """
    if power <= 0:
        return None
    counts = np.bincount(y).astype(np.float64)
    w = counts[y] ** -power
    return torch.from_numpy(w / w.sum())


def ema_with_warmup(decay: float) -> Callable[[Any, Any, Any], None]:
    """EMA update for ``AveragedModel`` whose decay ramps up as (1 + n) / (10 + n).

    A fixed 0.999 needs thousands of steps to forget the random initial weights; a user's
    small data set may give a run only a few hundred, so early on the average follows the
    weights closely.
    """

    def update(averaged: Any, current: Any, num_averaged: Any) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if averaged and torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (batch-norm step counters) are copied
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def balanced_accuracy(pred: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> float:
    """Mean per-class recall over the classes present in ``y``."""
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else float("nan")


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """images: uint8 (N, 1, 28, 28) on the model's device -> float32 logits (N, C) on CPU."""
    model.eval()
    out = [
        model(images[i : i + batch_size].float().div_(255.0)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def per_source_accuracy(
    pred: npt.NDArray[np.int64], y: npt.NDArray[np.int64], groups: npt.NDArray[np.str_]
) -> dict[str, dict[str, float | int]]:
    """{'mnist': {'accuracy': .., 'n': ..}, ...} by the data-set part of the group names."""
    sources = np.array([_source_of(g) for g in groups])
    out: dict[str, dict[str, float | int]] = {}
    for s in sorted(set(sources.tolist())):
        m = sources == s
        out[s] = {"accuracy": float((pred[m] == y[m]).mean()), "n": int(m.sum())}
    return out


def _to_device_images(images: npt.NDArray[np.uint8], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)


def fit(cfg: FitConfig, log: Callable[[str], None] | None = None, quiet: bool = False) -> FitResult:
    """Train, early-stop, evaluate on the test sources and export. See module docstring."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = Path(cfg.output) if cfg.output else out_dir / f"{cfg.name}.onnx"
    ckpt_path = out_dir / CHECKPOINT_NAME

    raw = load_source(cfg.source, "train")
    if cfg.extra:
        raw = LabeledImages.concat([raw, *(load_source(spec, "train") for spec in cfg.extra)])
    if not cfg.labels:
        found = sorted(set(raw.labels.astype(str).tolist()))
        if any(len(s) != 1 for s in found):
            raise DataError(f"{cfg.source}: labels must be single characters")
        cfg.labels = "".join(found)
    data, y_all, dropped = encode_labels(raw, cfg.labels)
    if len(data) == 0:
        raise DataError(f"{cfg.source}: no image has a label in {cfg.labels!r}")
    train_rows, val_rows = split_validation(y_all, cfg.val_fraction, cfg.seed)
    if cfg.dry_run:
        train_rows = train_rows[: cfg.batch_size]
        val_rows = val_rows[: cfg.batch_size] if len(val_rows) else train_rows[:8]
    if len(val_rows) == 0:
        val_rows = train_rows[: max(1, len(train_rows) // 20)]

    train_x = _to_device_images(data.images[train_rows], device)
    train_y = torch.from_numpy(y_all[train_rows]).to(device)
    val_x = _to_device_images(data.images[val_rows], device)
    val_y = y_all[val_rows]

    # Standardisation constants from the training images themselves; they live in the model.
    sample = data.images[train_rows[:: max(1, len(train_rows) // 20000)]].astype(np.float32) / 255
    mean, std = float(sample.mean()), float(sample.std() + 1e-6)

    frozen_bn = False
    if cfg.init:
        # Fine-tuning: the starting model's own standardisation stays (its weights expect it).
        start = load_initial(Path(cfg.init), cfg.labels, cfg.widths, cfg.dropout)
        mean, std = float(start.mean), float(start.std)
        # An exported model has its batch norms folded into the convolutions: their statistics
        # are gone, so they stay frozen (identity) while the weights move.
        frozen_bn = Path(cfg.init).suffix.lower() == ".onnx"
    model = CharCNN(len(cfg.labels), cfg.widths, mean=mean, std=std, dropout=cfg.dropout)
    if cfg.init:
        model.load_state_dict(start.state_dict())
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
    epochs = 1 if cfg.dry_run else cfg.epochs
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    aug_cfg = AugmentConfig() if cfg.augment else NO_AUGMENT
    aug_gen = make_generator(cfg.seed, device)
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)

    start_epoch, best_acc, best_plain, best_state, stale = 0, -1.0, -1.0, None, 0
    sample_weights = class_weights(y_all[train_rows], cfg.balance)
    history: list[dict[str, float]] = []
    if cfg.resume:
        state = load_checkpoint(Path(cfg.resume), map_location=device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        aug_gen.set_state(state["aug_rng"].cpu())
        order_gen.set_state(state["order_rng"].cpu())
        start_epoch = int(state["epoch"]) + 1
        best_acc = float(state["best_val_balanced_accuracy"])
        best_plain = float(state["best_val_accuracy"])
        best_state = state["best_ema"]
        stale = int(state["stale"])
        history = list(state.get("history", []))

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    progress = Progress((epochs - start_epoch) * steps_per_epoch, quiet=quiet)
    say = log or progress.line
    say(
        f"{cfg.name}: {len(train_rows)} train / {len(val_rows)} validation images, "
        f"{len(cfg.labels)} classes, {count_parameters(model)} parameters, device {device}"
        + (f", {dropped} images with labels outside the set skipped" if dropped else "")
    )
    t_start = time.perf_counter()
    with progress.running():
        for epoch in range(start_epoch, epochs):
            model.train()
            if frozen_bn:
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            batches = _batches(len(train_rows), cfg.batch_size, order_gen, sample_weights)
            for step, idx in enumerate(batches):
                idx = idx.to(device)
                xb = train_x[idx].float().div_(255.0)
                xb = augment_batch(xb, aug_cfg, aug_gen).contiguous(
                    memory_format=torch.channels_last
                )
                with autocast:
                    logits = model(xb)
                loss = F.cross_entropy(
                    logits.float(), train_y[idx], label_smoothing=cfg.label_smoothing
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                ema.update_parameters(model)
                loss_sum += loss.detach()
                if step % 20 == 0 or step == len(batches) - 1:
                    progress.advance(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
                else:
                    progress.advance(f"epoch {epoch + 1}/{epochs}")
            val_pred = predict_logits(ema.module, val_x).argmax(1).numpy()
            val_acc = float((val_pred == val_y).mean())
            # Early stopping and the kept weights follow the balanced accuracy, so a rare class
            # counts as much as a frequent one (equal to accuracy on balanced data).
            val_bal = balanced_accuracy(val_pred, val_y)
            train_loss = float(loss_sum.item() / max(1, len(batches)))
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": train_loss,
                    "val_accuracy": val_acc,
                    "val_balanced_accuracy": val_bal,
                }
            )
            improved = val_bal > best_acc
            if improved:
                best_acc, best_plain, stale = val_bal, val_acc, 0
                best_state = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
            else:
                stale += 1
            say(
                f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  val {val_acc:.4%}"
                f" (balanced {val_bal:.4%})"
                f"{'  *' if improved else ''}  {time.perf_counter() - t0:.1f}s"
            )
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "aug_rng": aug_gen.get_state(),
                    "order_rng": order_gen.get_state(),
                    "epoch": epoch,
                    "best_val_balanced_accuracy": best_acc,
                    "best_val_accuracy": best_plain,
                    "best_ema": best_state,
                    "stale": stale,
                    "history": history,
                    "config": json.dumps(cfg.to_json()),
                },
            )
            if stale >= cfg.patience:
                say(f"early stop: no validation gain for {cfg.patience} epochs")
                break

    final = CharCNN(len(cfg.labels), cfg.widths, mean=mean, std=std, dropout=cfg.dropout)
    assert best_state is not None
    final.load_state_dict(best_state)
    final.eval()
    metrics: dict[str, Any] = {
        "validation_accuracy": best_plain,
        "validation_balanced_accuracy": best_acc,
        "epochs_run": len(history),
        "train_images": int(len(train_rows)),
        "train_seconds": round(time.perf_counter() - t_start, 1),
        "parameters": count_parameters(final),
    }
    datasets = sorted({_source_of(g) for g in data.groups[train_rows]})
    base_spec = _split_spec(cfg.source, "train")[0]
    tests = cfg.test or ([f"{base_spec}:test"] if has_test_split(cfg.source) else [])
    if tests:
        final_dev = final.to(device)
        for spec in tests:
            t_data, t_y, t_dropped = encode_labels(load_source(spec, "test"), cfg.labels)
            if cfg.dry_run:
                t_data, t_y = t_data.subset(np.arange(min(len(t_data), 64))), t_y[:64]
            pred = predict_logits(final_dev, _to_device_images(t_data.images, device))
            p = pred.argmax(1).numpy() if len(pred) else np.zeros(0, np.int64)
            metrics.setdefault("test", {})[spec] = {
                "accuracy": float((p == t_y).mean()) if len(t_y) else float("nan"),
                "n": int(len(t_y)),
                "skipped_labels": t_dropped,
                "per_source": per_source_accuracy(p, t_y, t_data.groups),
            }
            say(f"test {spec}: {metrics['test'][spec]['accuracy']:.4%} on {len(t_y)} images")
        final = final.cpu()
    meta = build_metadata(
        labels=cfg.labels,
        name=cfg.name,
        datasets=datasets,
        metrics=metrics,
        command=cfg.command or "hwr-train fit",
        seed=cfg.seed,
        extra={"train_config": cfg.to_json(), "architecture": f"CharCNN{list(cfg.widths)}"},
    )
    verify = torch.from_numpy(val_x[:256].float().div(255.0).cpu().numpy())
    diff = export_onnx(final, onnx_path, meta, verify_batch=verify)
    metrics["export_max_abs_diff"] = diff
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    say(f"wrote {onnx_path} (onnxruntime vs torch max diff {diff:.1e})")
    return FitResult(onnx_path=onnx_path, checkpoint=ckpt_path, metrics=metrics)


# --------------------------------------------------------------------------- starting weights


def load_initial(path: Path, labels: str, widths: tuple[int, int, int], dropout: float) -> CharCNN:
    """A CharCNN holding the weights of ``path`` to start a fine-tuning run from.

    path: a ``checkpoint.pt`` of :func:`fit` (its best EMA weights) or an exported ``.onnx``
    model (batch norms folded into the convolutions: the module's batch norms become identities
    and the folded biases their shifts). Either must have the same labels and widths.
    """
    if path.suffix.lower() != ".onnx":
        model, _ = model_from_checkpoint(path)
        if model.num_classes != len(labels) or tuple(model.widths) != tuple(widths):
            raise BadArguments(f"{path}: not a {len(labels)}-class CharCNN{list(widths)}")
        return model
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    meta_labels = metadata_of(proto).get("labels")
    if meta_labels is not None and meta_labels != labels:
        raise BadArguments(f"{path}: labels {meta_labels!r}, this run trains {labels!r}")
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv_inputs = [n.input for n in graph.node if n.op_type == "Conv"]
    model = CharCNN(
        len(labels),
        widths,
        mean=float(init["model.mean"]),
        std=float(init["model.std"]),
        dropout=dropout,
    )
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(conv_inputs) != len(convs) or any(len(c) < 3 for c in conv_inputs):
        raise BadArguments(f"{path}: not an exported CharCNN{list(widths)} (conv layers differ)")
    with torch.no_grad():
        for conv, bn, names in zip(convs, norms, conv_inputs, strict=True):
            weight, bias = init[names[1]], init[names[2]]
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise BadArguments(
                    f"{path}: conv weight {weight.shape}, CharCNN{list(widths)} has "
                    f"{tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(torch.from_numpy(np.array(weight)))
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(np.array(bias)))
        head = model.head[3]
        assert isinstance(head, nn.Linear)
        head.weight.copy_(torch.from_numpy(np.array(init["model.head.3.weight"])))
        head.bias.copy_(torch.from_numpy(np.array(init["model.head.3.bias"])))
    return model


def average_models(a: Path, b: Path, weight: float, out: Path, command: str = "") -> float:
    """Write to ``out`` the model whose weights are (1 - weight) * a's + weight * b's.

    a, b: exported .onnx models of the same labels and architecture, b fine-tuned from a (an
    average of two fine-tunes of one start stays a good model; of unrelated models it does
    not). The metadata is b's, with ``averaged_from`` (both files' SHA-256 and the weight) and
    ``command``. Returns the export check's largest probability difference.
    """
    import onnx

    if not 0.0 <= weight <= 1.0:
        raise BadArguments(f"--weight {weight}: expected 0 <= w <= 1")
    meta = metadata_of(onnx.load(str(b)))
    labels = meta.get("labels", "")
    widths = _charcnn_widths(b, meta)
    model_a = load_initial(a, labels, widths, 0.3)
    model_b = load_initial(b, labels, widths, 0.3)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    model_a.load_state_dict(
        {
            k: (1 - weight) * v + weight * sb[k] if v.is_floating_point() else v
            for k, v in sa.items()
        }
    )
    model_a.eval()
    meta["averaged_from"] = json.dumps(
        {
            "a": file_sha256(a),
            "b": file_sha256(b),
            "weight_of_b": weight,
        }
    )
    meta["command"] = command or meta.get("command", "")
    meta.pop("quantized_from", None)
    return export_onnx(model_a, out, meta)


class Ensemble(nn.Module):
    """Several classifiers of the same labels read as one: the mean of their probabilities.

    Its output is the log of that mean, so the softmax that :func:`export_onnx` puts in the
    graph gives the mean back exactly (the mean already sums to 1).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)
        return torch.log(probs.clamp_min(1e-12))


def _charcnn_widths(path: Path, meta: dict[str, str]) -> tuple[int, int, int]:
    arch = meta.get("architecture", "")
    try:
        w0, w1, w2 = (int(w) for w in arch[arch.find("[") + 1 : arch.find("]")].split(","))
    except ValueError:
        raise BadArguments(f"{path}: no architecture metadata of a CharCNN") from None
    return w0, w1, w2


def ensemble_models(
    paths: list[Path],
    out: Path,
    name: str = "",
    command: str = "",
    tests: Sequence[str] = (),
) -> float:
    """Write to ``out`` one model whose probabilities are the mean of ``paths``' models'.

    paths: two or more exported CharCNN .onnx files trained apart (other seeds, sizes or data),
    so that their mistakes differ. Every member must know the first one's labels; a member with
    more (alnum beside letters) is read over the first's labels only, renormalised. The
    metadata is the first model's, with ``name`` (default: the first's), ``ensemble_of``
    (each member's SHA-256, name, architecture and seed), ``command`` and ``metrics``: the
    ensemble's own accuracy on each held-out source of ``tests`` (empty without), measured on
    the written file with onnxruntime. Returns the export check's largest probability
    difference.
    """
    import onnx

    if len(paths) < 2:
        raise BadArguments("an ensemble needs at least two models")
    members: list[nn.Module] = []
    described = []
    meta: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise BadArguments(f"{path}: model file not found")
        m = metadata_of(onnx.load(str(path)))
        if not meta:
            meta = dict(m)
        own = m.get("labels", "")
        if not set(meta["labels"]) <= set(own):
            raise BadArguments(f"{path}: labels {own!r} do not hold {meta['labels']!r}")
        model = load_initial(path, own, _charcnn_widths(path, m), 0.0).eval()
        if own != meta["labels"]:
            # Keep only the first model's classes, in its order: a softmax over a subset of
            # the logits is the member's probabilities over those labels, renormalised.
            rows = torch.tensor([own.index(c) for c in meta["labels"]])
            old_head = cast(nn.Linear, model.head[-1])
            head = nn.Linear(old_head.in_features, len(rows))
            with torch.no_grad():
                head.weight.copy_(old_head.weight[rows])
                head.bias.copy_(old_head.bias[rows])
            model.head[-1] = head
            model.num_classes = len(rows)
        members.append(model)
        described.append(
            {
                "sha256": file_sha256(path),
                "name": m.get("name", path.stem),
                "architecture": m.get("architecture", ""),
                "seed": m.get("seed", ""),
            }
        )
    meta["name"] = name or meta.get("name", out.stem)
    meta["architecture"] = "Ensemble[" + ", ".join(d["architecture"] for d in described) + "]"
    meta["ensemble_of"] = json.dumps(described, sort_keys=True)
    meta["command"] = command or meta.get("command", "")
    for key in ("quantized_from", "averaged_from", "train_config"):
        meta.pop(key, None)
    meta["metrics"] = json.dumps({"test": {}})
    if not tests:
        return export_onnx(Ensemble(members).eval(), out, meta)
    from training.evaluate import evaluate

    # Measured on a written copy, then the figures go into the file's own metadata.
    draft = out.with_name(out.stem + ".draft.onnx")
    diff = export_onnx(Ensemble(members).eval(), draft, meta)
    try:
        found = {}
        for spec in tests:
            m = evaluate(draft, spec)
            found[spec] = {k: m[k] for k in ("accuracy", "n", "per_source", "skipped_labels")}
        proto = onnx.load(str(draft))
        metrics = json.dumps({"test": found}, sort_keys=True)
        set_metadata(proto, {**metadata_of(proto), "metrics": metrics})
        tmp = out.with_name(out.name + ".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(out)
    finally:
        draft.unlink(missing_ok=True)
    return diff


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save of plain state dicts and numbers, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickle of arbitrary objects)."""
    if not path.is_file():
        raise BadArguments(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise BadArguments(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "best_ema" not in state:
        raise BadArguments(f"{path}: not an hwr-train checkpoint")
    return state


def model_from_checkpoint(path: Path) -> tuple[CharCNN, dict[str, Any]]:
    """The best (EMA) model of a checkpoint and its training config."""
    state = load_checkpoint(path)
    cfg = json.loads(state["config"])
    best = state["best_ema"]
    model = CharCNN(
        len(cfg["labels"]),
        tuple(cfg["widths"]),
        mean=float(best["mean"]),
        std=float(best["std"]),
        dropout=cfg["dropout"],
    )
    model.load_state_dict(best)
    return model.eval(), cfg


def command_line(argv: list[str]) -> str:
    return "hwr-train " + shlex.join(argv)
