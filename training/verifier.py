"""The "is this exactly one character?" verifier: its data, its training and its export.

The page reader splits touching characters by recognition (:mod:`hwr_batch.segment`): each
candidate piece of a wide group is classified and the cheapest path through the cuts wins. A
character classifier has never seen two characters at once nor half of one, so it reads a
touching "91" as a 9 at 0.97 and the split search has nothing to prefer the split with. The
verifier is a small CNN on the same 28x28 input that answers P(one whole character).

Data (never from test splits when training): strips of one, two or three training-split
characters laid out as :mod:`training.pagegen` lays out a word (same glyph rendering, heights,
rotation, pen, touching overlap and gaps), drawn on paper with blur and noise, thresholded to an
ink mask; then every candidate the reader itself would score is cut from the strip with the
reader's own code (``segment._cut_candidates`` / ``segment._piece``, the same piece-width
limits and spans), plus random vertical and slanted cuts, and normalised with
``segment.model_input``. Each candidate is labelled by which character owns its ink:

- one character: at least PURE of its ink belongs to one character and it holds at least
  WHOLE of that character's ink (a correct cut of an overlapping pair keeps a sliver of the
  neighbour, which is still one character);
- not one character: two characters' ink (the dominant one under MIXED), or a fragment
  (under FRAGMENT of its character);
- in between: dropped (neither answer is right).

``python -m training.verifier`` (or ``hwr-train verifier``) builds the data, trains, reports
held-out figures on candidates made the same way from the *test* splits and exports ONNX.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hwr_batch import defaults
from hwr_batch.segment import _cut_candidates, _piece, model_input
from training.data import LabeledImages
from training.model import CharCNN, count_parameters
from training.pagegen import PageStyle, _render_glyph

#: Small widths: the verifier runs next to the classifier on the split candidates only, and
#: its question (one whole glyph or not) needs less capacity than 36 classes.
VERIFIER_WIDTHS = (16, 32, 64)
#: Labelling thresholds (fractions of ink), see the module docstring.
PURE = 0.9
WHOLE = 0.85
MIXED = 0.75
FRAGMENT = 0.6
#: Training candidates that calibrate the int8 companion's activation ranges.
CALIBRATION_CANDIDATES = 2048
#: Output order of the exported model: index 1 is P(one character).
OUTPUTS = ("not_one_character", "one_character")
TASK = "single-character verifier"
#: Strip makeup: probabilities of 1, 2 and 3 characters, and that neighbours touch.
STRIP_SIZES = (0.55, 0.33, 0.12)
P_TOUCH = 0.75
#: A one-character strip also yields its cut pieces (fragments) with this probability, else
#: only the whole: every strip gives many pieces, and without this the whole characters (what
#: the reader shows the verifier most) would be a few percent of the data. A first model
#: trained with every strip cut (4% whole characters) rejected 25% of the characters of
#: generated digit pages that the reader had segmented right (1s, 7s and 4s most).
P_CUT_SINGLE = 0.35


@dataclass
class VerifierData:
    """Candidates and labels: images uint8 (N, 28, 28) white on black, labels int64 (N,)
    (1 = one character), kind str (N,): "whole1", "whole2+", "piece", "fragment"."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    kind: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.labels)


def _strip(
    glyphs: list[npt.NDArray[np.float32]],
    char_h: float,
    touch: list[bool],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Lay glyphs (float ink (h, w) at page scale) side by side as pagegen lays a word.

    Returns (gray uint8 (H, W) dark ink on light paper, ink mask (H, W), owner int (H, W): the
    glyph whose ink a pixel is, -1 for paper).
    """
    xs: list[int] = []
    ys: list[int] = []
    x = 0.0
    pad = int(0.3 * char_h)
    baseline = 1.5 * char_h + pad
    for i, g in enumerate(glyphs):
        if i:
            if touch[i - 1]:
                x -= float(rng.uniform(0.08, 0.2)) * min(g.shape[1], char_h * 0.6)
            else:
                x += float(rng.uniform(0.0, 0.12)) * char_h
        y_bottom = baseline + float(rng.normal(0, 0.06)) * char_h
        xs.append(int(round(x)) + pad)
        ys.append(int(round(y_bottom - g.shape[0])))
        x += g.shape[1]
    width = int(max(xi + g.shape[1] for xi, g in zip(xs, glyphs, strict=True))) + pad
    height = int(max(yi + g.shape[0] for yi, g in zip(ys, glyphs, strict=True))) + pad
    y_off = -min(0, min(ys)) + 0
    layers = np.zeros((len(glyphs), height + y_off, width), np.float32)
    for k, (g, xi, yi) in enumerate(zip(glyphs, xs, ys, strict=True)):
        layers[k, yi + y_off : yi + y_off + g.shape[0], xi : xi + g.shape[1]] = g
    ink = layers.max(axis=0)
    owner = np.where(ink > 0.5, layers.argmax(axis=0), -1).astype(np.int64)
    paper = float(rng.uniform(225, 250))
    ink_level = float(rng.uniform(20, 70))
    gray = paper * (1.0 - ink) + ink_level * ink
    sigma = float(rng.uniform(0.0, 0.8))
    if sigma > 0.2:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    gray = gray + rng.normal(0, float(rng.uniform(0, 6)), gray.shape).astype(np.float32)
    gray8 = np.clip(gray + 0.5, 0, 255).astype(np.uint8)
    mask = gray8 < (paper + ink_level) / 2
    return gray8, mask, owner


def _label(
    piece_mask: npt.NDArray[np.bool_], owner: npt.NDArray[np.int64], totals: npt.NDArray[np.int64]
) -> int | None:
    """1 (one character), 0 (not one), None (in between) from who owns the piece's ink."""
    who = owner[piece_mask]
    who = who[who >= 0]
    if len(who) == 0:
        return None
    counts = np.bincount(who, minlength=len(totals))
    top = int(counts.argmax())
    purity = counts[top] / len(who)
    coverage = counts[top] / max(int(totals[top]), 1)
    if purity >= PURE and coverage >= WHOLE:
        return 1
    if purity < MIXED or coverage < FRAGMENT:
        return 0
    return None


def _between(shape: tuple[int, int], a: tuple[float, float], b: tuple[float, float]) -> Any:
    h, w = shape
    dy = np.arange(h, dtype=np.float64) - (h - 1) / 2
    lo = np.rint(a[0] + a[1] * dy)
    hi = np.rint(b[0] + b[1] * dy)
    xs = np.arange(w)
    return (xs[None, :] >= lo[:, None]) & (xs[None, :] < hi[:, None])


def strip_candidates(
    data: LabeledImages, n_strips: int, seed: int, style: PageStyle | None = None
) -> VerifierData:
    """Labelled verifier candidates from ``n_strips`` strips of characters of ``data``.

    data: the characters to draw from (a training split for training, a test split for the
    held-out figures). style: pagegen geometry (character height, rotation, pen, breaks);
    default: pagegen's "scan" look.
    """
    st = style or PageStyle(p_broken=0.05)
    rng = np.random.default_rng(seed)
    images: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    kinds: list[str] = []
    n_data = len(data)
    slants = defaults.SPLIT_SLANTS
    for _ in range(n_strips):
        char_h = float(rng.uniform(*st.char_height))
        pen = int(rng.integers(st.pen_width[0], st.pen_width[1] + 1))
        k = int(rng.choice(len(STRIP_SIZES), p=STRIP_SIZES)) + 1
        glyphs: list[npt.NDArray[np.float32]] = []
        while len(glyphs) < k:
            img = data.images[int(rng.integers(n_data))]
            h = char_h * float(rng.uniform(1 - st.size_jitter, 1 + st.size_jitter))
            ang = float(rng.uniform(-st.char_rotation_deg, st.char_rotation_deg))
            g = _render_glyph(img, h, ang, pen, bool(rng.random() < st.p_broken), rng)
            if g is not None:
                glyphs.append(g)
        touch = [bool(rng.random() < P_TOUCH) for _ in range(k - 1)]
        gray, mask, owner = _strip(glyphs, char_h, touch, rng)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        own = mask[y0:y1, x0:x1]
        own_owner = owner[y0:y1, x0:x1]
        totals = np.bincount(own_owner[own & (own_owner >= 0)], minlength=k).astype(np.int64)
        rim = cv2.dilate(own.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        crop = np.where(rim, gray[y0:y1, x0:x1], np.uint8(255)).astype(np.uint8)
        # The page's text height as the reader estimates it: about the character height.
        th = char_h * float(rng.uniform(0.85, 1.1))
        whole_label = _label(own, own_owner, totals) if k == 1 else 0
        if whole_label is not None:
            images.append(model_input(crop))
            labels.append(whole_label)
            kinds.append("whole1" if k == 1 else "whole2+")
        if k == 1 and rng.random() >= P_CUT_SINGLE:
            continue
        hh, ww = own.shape
        cuts = _cut_candidates(own, th)
        points = [(0.0, 0.0), *cuts, (float(ww), 0.0)]
        spans: list[tuple[tuple[float, float], tuple[float, float], str]] = []
        min_w = defaults.SPLIT_MIN_PIECE * th
        max_w = defaults.SPLIT_MAX_PIECE * th
        for i in range(len(points)):
            for j in range(i + 1, min(len(points), i + 1 + defaults.SPLIT_MAX_SPAN)):
                a, b = points[i], points[j]
                if (i == 0 and j == len(points) - 1) or not min_w <= b[0] - a[0] <= max_w:
                    continue
                spans.append((a, b, "piece"))
        # Fragments the cut search may not propose: one random straight or slanted cut.
        for _ in range(2):
            c = float(rng.uniform(0.15, 0.85)) * ww
            s = float(rng.choice(slants))
            spans.append(((0.0, 0.0), (c, s), "fragment"))
            spans.append(((c, s), (float(ww), 0.0), "fragment"))
        for a, b, kind in spans:
            cut = _piece(crop, own, a, b)
            if cut is None:
                continue
            sub, (dx, dy, pw, ph) = cut
            m = own & _between((hh, ww), a, b)
            lab = _label(m, own_owner, totals)
            if lab is None or pw < 2 or ph < 2:
                continue
            images.append(model_input(sub))
            labels.append(lab)
            kinds.append(kind)
    arr = np.rint(np.clip(np.stack(images), 0, 1) * 255).astype(np.uint8)
    return VerifierData(arr, np.asarray(labels, np.int64), np.asarray(kinds))


@dataclass
class VerifierConfig:
    """How a verifier is built (recorded in the model's metadata)."""

    out_dir: str = "runs/verifier"
    output: str = "hwr_batch/models/verifier.onnx"
    sources: tuple[str, ...] = ("digits", "letters")
    strips: int = 12000
    test_strips: int = 1500
    epochs: int = 8
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, int, int] = VERIFIER_WIDTHS
    seed: int = 0
    threads: int = 2
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _split_data(model: str, split: str) -> LabeledImages:
    from training import sources

    return sources.load_split(model, split)


def build_data(
    cfg: VerifierConfig,
    split: str,
    n_strips: int,
    seed: int,
    load: Callable[[str, str], LabeledImages] = _split_data,
) -> VerifierData:
    """Candidates from ``n_strips`` strips per source model of ``cfg.sources`` (one split)."""
    parts = [
        strip_candidates(load(src, split), n_strips, seed + 7919 * i)
        for i, src in enumerate(cfg.sources)
    ]
    return VerifierData(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.kind for p in parts]),
    )


def figures(p_one: npt.NDArray[np.float32], data: VerifierData) -> dict[str, Any]:
    """Held-out figures at P(one) >= 0.5: accuracy overall and per candidate kind, and how
    often a whole single character is rejected."""
    pred = (p_one >= 0.5).astype(np.int64)
    out: dict[str, Any] = {
        "n": int(len(data)),
        "accuracy": float((pred == data.labels).mean()),
        "positives": float(data.labels.mean()),
    }
    for kind in sorted(set(data.kind.tolist())):
        sel = data.kind == kind
        out[f"accuracy_{kind}"] = float((pred[sel] == data.labels[sel]).mean())
    single = (data.kind == "whole1") & (data.labels == 1)
    out["single_rejected"] = float((pred[single] == 0).mean()) if single.any() else None
    two = data.kind == "whole2+"
    out["pairs_accepted"] = float((pred[two] == 1).mean()) if two.any() else None
    return out


def _predict(model: nn.Module, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 1024):
            x = torch.from_numpy(images[i : i + 1024]).float().div_(255.0)[:, None]
            out.append(torch.softmax(model(x), dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _predict_onnx(path: str | Path, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32)[:, None] / 255.0
    name = sess.get_inputs()[0].name
    parts = [sess.run(None, {name: x[i : i + 1024]})[0][:, 1] for i in range(0, len(x), 1024)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def train_verifier(
    cfg: VerifierConfig,
    load: Callable[[str, str], LabeledImages] = _split_data,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build data, train, evaluate on test-split candidates, export ONNX. Returns metrics.

    The run folder keeps the data (``data.npz``, rebuilt only when missing) and a checkpoint
    after every epoch (``checkpoint.pt``, a state_dict with the epoch; an interrupted run
    resumes from it).
    """
    from training.export import build_metadata, export_onnx

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "data.npz"
    t0 = time.perf_counter()
    if cache.exists():
        z = np.load(cache)
        train = VerifierData(z["images"], z["labels"], z["kind"])
        test = VerifierData(z["test_images"], z["test_labels"], z["test_kind"])
    else:
        train = build_data(cfg, "train", cfg.strips, cfg.seed, load)
        test = build_data(cfg, "test", cfg.test_strips, cfg.seed + 1, load)
        np.savez_compressed(
            cache,
            images=train.images,
            labels=train.labels,
            kind=train.kind,
            test_images=test.images,
            test_labels=test.labels,
            test_kind=test.kind,
        )
    log(
        f"data: {len(train)} train candidates ({train.labels.mean():.0%} one character), "
        f"{len(test)} test, {time.perf_counter() - t0:.0f} s"
    )
    model = CharCNN(2, widths=cfg.widths, dropout=0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, (len(train) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )
    ckpt = out / "checkpoint.pt"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("config") == json.dumps(_config_dict(cfg), sort_keys=True):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start = int(state["epoch"])
            log(f"resumed after epoch {start}")
    x_all = torch.from_numpy(train.images)
    y_all = torch.from_numpy(train.labels)
    # Classes weighted to equal total weight: the model answers as if one character and not one
    # were equally likely, so -log P(one) does not charge every extra piece the data's prior.
    pos = min(max(float(train.labels.mean()), 0.01), 0.99)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([0.5 / (1 - pos), 0.5 / pos]))
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start, cfg.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        t = time.perf_counter()
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            x = x_all[idx].float().div_(255.0)[:, None]
            # Mirror images are as much (or as little) one character as the originals.
            if torch.rand(1, generator=gen).item() < 0.5:
                x = x.flip(3)
            loss = loss_fn(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = figures(_predict(model, test.images), test)["accuracy"]
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {total / len(train):.4f}, "
            f"test accuracy {acc:.4f}, {time.perf_counter() - t:.0f} s"
        )
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "config": json.dumps(_config_dict(cfg), sort_keys=True),
            },
            ckpt,
        )
    metrics = {
        "test": figures(_predict(model, test.images), test),
        "train_candidates": int(len(train)),
        "parameters": count_parameters(model),
    }
    meta = build_metadata(
        labels="01",
        name="verifier",
        datasets=[f"{s}:train" for s in cfg.sources],
        metrics=metrics,
        command=cfg.command,
        seed=cfg.seed,
        extra={"task": TASK, "outputs": list(OUTPUTS), "train_config": _config_dict(cfg)},
    )
    g = torch.Generator().manual_seed(0)
    export_onnx(model, cfg.output, meta, torch.rand(64, 1, 28, 28, generator=g))
    # The int8 companion the reader runs (half the float model's time a crop on one core); it is
    # never rechecked by the float model (recheck_below 0), so its figures are reported too.
    from hwr_batch.classify import int8_companion
    from training.export import quantize_int8

    rng = np.random.default_rng(cfg.seed)
    # Whole batches of 256 (what quantize_int8 feeds): the percentile calibrator cannot stack
    # a short last batch with the others.
    n_cal = min(len(train), CALIBRATION_CANDIDATES)
    n_cal = n_cal // 256 * 256 or n_cal
    calibration = train.images[rng.permutation(len(train))[:n_cal]]
    companion = int8_companion(cfg.output)
    quantize_int8(
        cfg.output,
        companion,
        calibration,
        0.0,
        calibration_source=f"{len(calibration)} training candidates of hwr-train verifier",
    )
    metrics["test_int8"] = figures(_predict_onnx(companion, test.images), test)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log(f"wrote {cfg.output}: {json.dumps(metrics['test'], sort_keys=True)}")
    return metrics


def _config_dict(cfg: VerifierConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in ("command", "out_dir", "output", "extra"):
        d.pop(k)
    return d
