"""Training package: augmentation, fit --dry-run, checkpoints, export round trip, evaluate, CLI.

Fixtures are tiny data sets drawn here with OpenCV; nothing reads ../shared except the slow
model evaluations, which skip when it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import hwr_batch  # noqa: E402
from hwr_batch.errors import ExitCode, ModelError  # noqa: E402
from training.augment import NO_AUGMENT, AugmentConfig, augment_batch, make_generator  # noqa: E402
from training.cli import main  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.export import (  # noqa: E402
    build_metadata,
    export_onnx,
    quantize_int8,
    verify_onnx,
)
from training.fit import load_checkpoint, load_source  # noqa: E402
from training.model import CharCNN, WithSoftmax  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
META_KEYS = {
    "labels",
    "name",
    "input_convention",
    "datasets",
    "metrics",
    "command",
    "seed",
    "created",
    "torch",
}


def _glyph(ch: str, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 white-on-black character drawn with a Hershey font, slightly jittered."""
    img = np.zeros((28, 28), np.uint8)
    scale = rng.uniform(0.7, 0.9)
    org = (int(rng.integers(5, 9)), int(rng.integers(20, 24)))
    cv2.putText(
        img, ch, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, int(rng.integers(2, 4)), cv2.LINE_AA
    )
    return img


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An .npz of 3 classes x 40 drawn glyphs with two writer groups."""
    rng = np.random.default_rng(0)
    chars = "017"
    images = np.stack([_glyph(c, rng) for c in chars for _ in range(40)])
    labels = np.array([c for c in chars for _ in range(40)])
    groups = np.array([f"drawn/w{i % 2}" for i in range(len(labels))])
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez_compressed(path, images=images, labels=labels, groups=groups)
    return path


@pytest.fixture(scope="module")
def trained(tiny_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder from `hwr-train fit --dry-run` on the tiny data."""
    out = tmp_path_factory.mktemp("run")
    rc = main(
        [
            "fit",
            str(tiny_npz),
            "--dry-run",
            "--device",
            "cpu",
            "--out",
            str(out),
            "-q",
            "--test",
            str(tiny_npz),
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    return out


# --------------------------------------------------------------------------- augmentation


def test_augment_is_seeded_and_stays_in_range() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(np.stack([_glyph("4", rng) for _ in range(32)])[:, None] / 255.0).float()
    a = augment_batch(x, AugmentConfig(), make_generator(5, "cpu"))
    b = augment_batch(x, AugmentConfig(), make_generator(5, "cpu"))
    c = augment_batch(x, AugmentConfig(), make_generator(6, "cpu"))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.isnan(a).any()
    # Augmented glyphs still hold ink, and differ from the originals.
    assert (a.flatten(1).sum(1) > 5).all()
    assert float((a - x).abs().mean()) > 0.01
    assert torch.equal(augment_batch(x, NO_AUGMENT, make_generator(0, "cpu")), x)


def test_augment_geometry_only_moves_ink() -> None:
    """Pure rotation/shift keeps the total ink roughly constant (no flips, no blow-ups)."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(np.stack([_glyph("2", rng) for _ in range(16)])[:, None] / 255.0).float()
    geo = AugmentConfig(
        p_elastic=0,
        p_thicken=0,
        p_thin=0,
        p_blur=0,
        p_noise=0,
        scale_min=1.0,
        scale_max=1.0,
        aspect=0.0,
    )
    y = augment_batch(x, geo, make_generator(0, "cpu"))
    ratio = y.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert ((ratio > 0.8) & (ratio < 1.2)).all()


# --------------------------------------------------------------------------- fit / export


def test_fit_dry_run_writes_a_loadable_model(trained: Path) -> None:
    onnx_path = trained / "tiny.onnx"
    assert onnx_path.is_file()
    assert (trained / "checkpoint.pt").is_file()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["export_max_abs_diff"] <= 1e-4
    clf = hwr_batch.load_classifier(onnx_path)
    assert clf.labels == "017"
    assert set(clf.metadata) >= META_KEYS
    assert json.loads(clf.metadata["datasets"]) == ["drawn"]
    assert json.loads(clf.metadata["metrics"])["test"]
    assert clf.metadata["seed"] == "3"
    assert "--dry-run" in clf.metadata["command"]
    labels, conf = clf.predict(np.zeros((5, 28, 28), np.uint8))
    assert len(labels) == 5 and set(labels) <= set("017")
    assert conf.shape == (5,) and ((conf > 0) & (conf <= 1)).all()


def test_checkpoint_loads_weights_only_and_exports(trained: Path, tmp_path: Path) -> None:
    state = load_checkpoint(trained / "checkpoint.pt")
    assert {"model", "ema", "optimizer", "best_ema", "config"} <= set(state)
    out = tmp_path / "again.onnx"
    assert main(["export", str(trained / "checkpoint.pt"), str(out)]) == 0
    assert hwr_batch.load_classifier(out).labels == "017"


def test_interrupted_fit_resumes_where_it_stopped(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.fit as fit_mod

    real_save = fit_mod.save_checkpoint

    def save_then_interrupt(path: Path, state: dict) -> None:
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # Ctrl-C right after epoch 2 was checkpointed

    args = [
        "fit",
        str(tiny_npz),
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "-q",
        "--batch-size",
        "64",
        "--patience",
        "9",
        "--epochs",
        "4",
    ]
    monkeypatch.setattr(fit_mod, "save_checkpoint", save_then_interrupt)
    assert main(args) == ExitCode.interrupted
    first = load_checkpoint(tmp_path / "checkpoint.pt")
    assert first["epoch"] == 1 and len(first["history"]) == 2
    assert not (tmp_path / "tiny.onnx").exists()
    monkeypatch.setattr(fit_mod, "save_checkpoint", real_save)
    assert main([*args, "--resume", str(tmp_path / "checkpoint.pt")]) == 0
    done = load_checkpoint(tmp_path / "checkpoint.pt")
    assert [h["epoch"] for h in done["history"]] == [1, 2, 3, 4]
    assert done["history"][:2] == first["history"]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 4
    assert (tmp_path / "tiny.onnx").is_file()


def test_training_learns_the_tiny_set(tiny_npz: Path, tmp_path: Path) -> None:
    """A few real epochs on 3 drawn classes must beat chance by far: the loop really trains."""
    rc = main(
        [
            "fit",
            str(tiny_npz),
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "-q",
            "--epochs",
            "6",
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--no-augment",
            "--val-fraction",
            "0.1",
        ]
    )
    assert rc == 0
    m = evaluate(tmp_path / "tiny.onnx", str(tiny_npz))
    assert m["accuracy"] > 0.8


def test_export_round_trip_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CharCNN(12, (8, 16, 24), mean=0.1, std=0.3).eval()
    # Non-trivial batch-norm statistics, so folding them into the graph is exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    meta = build_metadata(
        labels="0123456789AB", name="t", datasets=["x"], metrics={"a": 1}, command="test", seed=7
    )
    path = tmp_path / "m.onnx"
    diff = export_onnx(model, path, meta)
    assert diff <= 1e-4
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert set(props) >= META_KEYS and props["labels"] == "0123456789AB"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7, 300):  # dynamic batch
        x = torch.rand(n, 1, 28, 28)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = WithSoftmax(model)(x).numpy()
        assert got.shape == (n, 12)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
        assert np.abs(got - want).max() <= 1e-4


def test_verify_catches_a_model_that_differs(tmp_path: Path) -> None:
    a = CharCNN(3, (4, 4, 4)).eval()
    meta = build_metadata(labels="abc", name="a", datasets=[], metrics={}, command="", seed=0)
    export_onnx(a, tmp_path / "a.onnx", meta)
    b = CharCNN(3, (4, 4, 4)).eval()
    with torch.no_grad():
        b.head[-1].bias.add_(3.0 * torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ModelError, match="differs from torch"):
        verify_onnx(WithSoftmax(b), tmp_path / "a.onnx")


# --------------------------------------------------------------------------- int8 companions


def _float_model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = CharCNN(3, (8, 12, 16)).eval()
    meta = build_metadata(labels="017", name="t", datasets=[], metrics={}, command="", seed=seed)
    export_onnx(model, path, meta)
    return path


def _reload(path: Path) -> hwr_batch.Classifier:
    from hwr_batch import classify

    classify._load.cache_clear()
    return hwr_batch.load_classifier(path)


def test_int8_companion_is_paired_rechecked_and_refused_when_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    import onnxruntime as ort

    from hwr_batch.classify import file_sha256, int8_companion

    monkeypatch.delenv("HWR_EXACT", raising=False)
    path = _float_model(tmp_path / "t.onnx", 0)
    rng = np.random.default_rng(0)
    images = np.stack([_glyph(c, rng) for c in "017" for _ in range(30)])
    companion = int8_companion(path)
    assert companion.name == "t.int8.onnx"
    stats = quantize_int8(path, companion, images, 1.0, calibration_source="drawn glyphs")
    assert stats["argmax_agreement"] >= 0.9
    props = {p.key: p.value for p in onnx.load(str(companion)).metadata_props}
    assert props["quantized_from"] == file_sha256(path)
    assert float(props["recheck_below"]) == 1.0 and props["labels"] == "017"
    ops = {n.op_type for n in onnx.load(str(companion)).graph.node}
    assert "QuantizeLinear" in ops and "Softmax" in ops

    x = images.astype(np.float32)[:, None] / 255.0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exact = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    clf = _reload(path)
    assert clf.fast is not None and clf.recheck_below == 1.0
    # Every crop under probability 1 is re-scored by the float model.
    np.testing.assert_allclose(clf.predict_proba(images), exact, atol=1e-6)
    # The split search's path: int8 alone, then the kept crops rechecked to the same answer.
    int8_only = clf.predict_proba_fast(images)
    assert not np.allclose(int8_only, exact, atol=1e-6)
    np.testing.assert_allclose(clf.recheck(images, int8_only.copy()), exact, atol=1e-6)

    quantize_int8(path, companion, images, 0.0, calibration_source="drawn glyphs")
    clf = _reload(path)
    fast = clf.predict_proba(images)
    assert clf.recheck_below == 0.0
    assert not np.allclose(fast, exact, atol=1e-6)  # the int8 answers, not the float ones
    assert (fast.argmax(1) == exact.argmax(1)).mean() >= 0.9

    monkeypatch.setenv("HWR_EXACT", "1")
    assert _reload(path).fast is None
    monkeypatch.delenv("HWR_EXACT")
    _float_model(path, 1)  # the float model retrained: the companion is stale
    assert _reload(path).fast is None


@pytest.mark.parametrize("name", ["digits", "letters", "alnum"])
def test_shipped_int8_companions_belong_to_their_models(name: str) -> None:
    clf = hwr_batch.load_classifier(name)
    if os.environ.get("HWR_EXACT", "") not in ("", "0"):
        pytest.skip("HWR_EXACT set")
    assert clf.fast is not None, f"{name}.int8.onnx missing or made from another {name}.onnx"


# --------------------------------------------------------------------------- evaluate


def test_evaluate_writes_report(
    trained: Path, tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    rc = main(["evaluate", str(trained / "tiny.onnx"), str(tiny_npz), "--report", str(report)])
    assert rc == 0
    assert "accuracy" in capsys.readouterr().out
    for name in ("metrics.json", "confusion.png", "mistakes.png"):
        assert (report / name).stat().st_size > 0
    m = json.loads((report / "metrics.json").read_text())
    assert m["n"] == 120
    assert np.array(m["confusion_matrix"]).sum() == 120
    assert set(m["per_class"]) == set("017")
    assert m["per_source"]["drawn"]["n"] == 120
    assert 0.0 <= m["accuracy"] <= 1.0
    assert cv2.imread(str(report / "confusion.png")) is not None


def test_evaluate_counts_lookalike_confusions(tmp_path: Path) -> None:
    """An alnum model that always answers '0': every 'O' counts as an O->0 confusion."""
    model = CharCNN(36, (4, 4, 4)).eval()
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
        model.head[-1].bias[0] = 10.0
    labels = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    export_onnx(
        model,
        tmp_path / "m.onnx",
        build_metadata(labels=labels, name="zero", datasets=[], metrics={}, command="", seed=0),
    )
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(
        data,
        images=np.stack([_glyph(c, rng) for c in "OOO008"]),
        labels=np.array(list("OOO008")),
        groups=np.array(["s/a"] * 6),
    )
    m = evaluate(tmp_path / "m.onnx", str(data), tmp_path / "rep")
    assert m["lookalike_confusions"]["O/0"] == {"O->0": 3, "0->O": 0, "total": 3}
    assert m["lookalike_confusions"]["B/8"]["total"] == 0
    assert m["accuracy"] == pytest.approx(2 / 6)


def test_sources_of_other_forms(tmp_path: Path) -> None:
    """fit/evaluate read a Kaggle CSV and a folder of class folders through training.datasets."""
    rng = np.random.default_rng(3)
    rows = [[k, *_glyph("ABC"[k], rng).ravel()] for k in (0, 1, 2, 0)]
    csv_path = tmp_path / "az.csv"
    csv_path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    data = load_source(str(csv_path))
    assert list(data.labels) == ["A", "B", "C", "A"]
    folder = tmp_path / "imgs"
    for ch in "XY":
        (folder / ch).mkdir(parents=True)
        cv2.imwrite(str(folder / ch / "1.png"), 255 - _glyph(ch, rng))
    assert sorted(load_source(str(folder)).labels) == ["X", "Y"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["fit", "no/such/file.npz"], ExitCode.bad_arguments, "no/such/file.npz"),
        (["fit"], ExitCode.bad_arguments, "required"),
        (["fit", "digits", "--epochs", "0"], ExitCode.bad_arguments, "--epochs"),
        (["fit", "digits", "--widths", "3,4"], ExitCode.bad_arguments, "--widths"),
        (["evaluate", "missing.onnx", "digits"], ExitCode.bad_arguments, "missing.onnx"),
        (["export", "nothing.pt", "x.onnx"], ExitCode.bad_arguments, "nothing.pt"),
        (["frobnicate"], ExitCode.bad_arguments, "frobnicate"),
    ],
)
def test_bad_arguments_give_one_line(
    argv: list[str], code: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("hwr-train: error:")


def test_bad_data_gives_one_line_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert main(["fit", str(bad), "--dry-run", "--device", "cpu"]) == ExitCode.bad_data
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.npz" in err[0]
    wrong = tmp_path / "letters.npz"
    np.savez(wrong, images=np.zeros((4, 28, 28), np.uint8), labels=np.array(list("abcd")))
    assert main(["fit", str(wrong), "--labels", "digits", "--dry-run"]) == ExitCode.bad_data
    assert "no image has a label" in capsys.readouterr().err


def test_console_entry_point_one_line(tmp_path: Path) -> None:
    """The real process: no traceback, one line, exit code 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "evaluate", str(tmp_path / "x.onnx"), "digits"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == ExitCode.bad_arguments
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- shipped models


@pytest.mark.parametrize("name", ["digits", "letters", "alnum", "digits_forms"])
def test_shipped_models_carry_provenance(name: str) -> None:
    clf = hwr_batch.load_classifier(name)
    assert (
        clf.labels
        == {
            "digits": "0123456789",
            "digits_forms": "0123456789",
            "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "alnum": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        }[name]
    )
    assert set(clf.metadata) >= META_KEYS
    assert clf.metadata["name"] == name
    assert json.loads(clf.metadata["metrics"])["test"]
    card = REPO / "hwr_batch" / "models" / f"{name}.md"
    assert card.is_file()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/datasets not present")
def test_digits_model_meets_the_bar() -> None:
    m = evaluate("digits", "digits:test")
    assert m["per_source"]["mnist"]["accuracy"] >= 0.996
    assert m["per_source"]["usps"]["accuracy"] >= 0.97


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "letters").is_dir(), reason="../shared/datasets not present")
def test_letters_model_meets_the_bar() -> None:
    m = evaluate("letters", "letters:test")
    assert m["accuracy"] >= 0.95


def test_convert_is_wired_into_hwr_train(tmp_path: Path) -> None:
    """`hwr-train convert` (training/convert.py) writes class folders that fit can train on."""
    rng = np.random.default_rng(4)
    rows = [[k % 2, *_glyph("AB"[k % 2], rng).ravel()] for k in range(6)]
    csv_path = tmp_path / "az.csv"
    csv_path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    folder = tmp_path / "pngs"
    assert main(["convert", str(csv_path), str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["A", "B"]
    out = tmp_path / "run"
    assert main(["fit", str(folder), "--dry-run", "--device", "cpu", "--out", str(out), "-q"]) == 0
    assert hwr_batch.load_classifier(out / "pngs.onnx").labels == "AB"


# --------------------------------------------------------------------------- fine-tuning


def test_exported_model_loads_back_for_fine_tuning(trained: Path) -> None:
    """An exported model (batch norms folded) comes back as a CharCNN that answers the same."""
    from training.fit import load_initial

    onnx_path = trained / "tiny.onnx"
    model = load_initial(onnx_path, "017", (32, 48, 96), 0.3).eval()
    x = np.random.default_rng(1).random((16, 28, 28), dtype=np.float32)
    want = hwr_batch.load_classifier(onnx_path).predict_proba(x)
    got = torch.softmax(model(torch.from_numpy(x[:, None])), 1).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(hwr_batch.errors.BadArguments, match="labels"):
        load_initial(onnx_path, "0123", (32, 48, 96), 0.3)


def test_fit_init_and_extra_continue_from_a_model(
    trained: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    """--init starts from the given model (a near-zero learning rate leaves it as it was) and
    --extra adds training rows."""
    extra = tmp_path / "extra.npz"
    with np.load(tiny_npz) as z:
        np.savez_compressed(extra, images=z["images"][:30], labels=z["labels"][:30])
    out = tmp_path / "ft"
    args = ["fit", str(tiny_npz), "--device", "cpu", "--out", str(out), "-q", "--epochs", "1"]
    rc = main([*args, "--init", str(trained / "tiny.onnx"), "--extra", str(extra), "--lr", "1e-9"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] > 120  # 120 rows less validation, plus the 30 extra
    x = np.random.default_rng(2).random((16, 28, 28), dtype=np.float32)
    before = hwr_batch.load_classifier(trained / "tiny.onnx").predict_proba(x)
    after = hwr_batch.load_classifier(out / "tiny.onnx").predict_proba(x)
    np.testing.assert_allclose(after, before, atol=1e-3)


def test_average_of_a_model_and_its_fine_tune(trained: Path, tmp_path: Path) -> None:
    """hwr-train average: weight 0 gives the first model back, 1 the second; the result keeps
    the second's metadata and names both sources."""
    onnx_path = trained / "tiny.onnx"
    x = np.random.default_rng(3).random((8, 28, 28), dtype=np.float32)
    want = hwr_batch.load_classifier(onnx_path).predict_proba(x)
    out = tmp_path / "avg.onnx"
    assert main(["average", str(onnx_path), str(onnx_path), str(out), "--weight", "0.3"]) == 0
    avg = hwr_batch.load_classifier(out)
    np.testing.assert_allclose(avg.predict_proba(x), want, atol=1e-5)
    assert avg.labels == "017"
    assert json.loads(avg.metadata["averaged_from"])["weight_of_b"] == 0.3
    assert main(["average", str(onnx_path), str(onnx_path), str(out), "--weight", "2"]) == 2


def test_ensemble_reads_as_the_mean_of_its_members(
    trained: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    """hwr-train ensemble: one file whose probabilities are the mean of its members'; members
    of other labels are refused."""
    import onnx

    from training.export import export_onnx, metadata_of
    from training.fit import load_initial

    first = trained / "tiny.onnx"
    meta = metadata_of(onnx.load(str(first)))
    other = load_initial(first, "017", (32, 48, 96), 0.0).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    second = tmp_path / "other.onnx"
    export_onnx(other, second, meta)
    x = np.random.default_rng(4).random((12, 28, 28), dtype=np.float32)
    want = (
        hwr_batch.load_classifier(first).predict_proba(x)
        + hwr_batch.load_classifier(second).predict_proba(x)
    ) / 2
    out = tmp_path / "ens.onnx"
    args = ["ensemble", str(first), str(second), "-o", str(out), "--name", "pair"]
    assert main([*args, "--test", str(tiny_npz)]) == 0
    ens = hwr_batch.load_classifier(out)
    tested = json.loads(ens.metadata["metrics"])["test"][str(tiny_npz)]
    assert tested["n"] > 0 and 0.0 <= tested["accuracy"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.onnx", "other.onnx"]
    np.testing.assert_allclose(ens.predict_proba(x), want, atol=1e-5)
    assert ens.name == "pair" and ens.labels == "017"
    assert [m["sha256"] for m in json.loads(ens.metadata["ensemble_of"])] == [
        hwr_batch.classify.file_sha256(first),
        hwr_batch.classify.file_sha256(second),
    ]
    meta["labels"] = "018"
    wrong = tmp_path / "wrong.onnx"
    export_onnx(other, wrong, meta)
    assert main(["ensemble", str(first), str(wrong), "-o", str(out)]) == 2
    assert main(["ensemble", str(first), "-o", str(out)]) == 2
