"""``hwr-train``: fit, evaluate and export the character models (and convert datasets).

One error boundary: an ``HwrError`` (bad argument, bad data, unusable model) becomes one line
on stderr and its exit code; a traceback only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from hwr_batch.errors import BadArguments, ExitCode, HwrError
from training.data import LABEL_SETS

PROG = "hwr-train"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so bad arguments give one line."""

    def error(self, message: str) -> NoReturn:
        raise BadArguments(f"{self.prog}: {message}")


def _widths(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three integers like 32,48,96: {text}") from exc
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers: {text}")
    return parts[0], parts[1], parts[2]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from exc
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="train a model and export it to ONNX")
    f.add_argument(
        "source",
        help="recipe (digits, letters, alnum), name:split from training.sources, an .npz, "
        "or a dataset path",
    )
    f.add_argument(
        "--labels",
        help="label set: digits, letters, alnum or the characters "
        "themselves (default: the recipe's, else the labels found in the data)",
    )
    f.add_argument("--name", help="model name stored in the file (default: from the source)")
    f.add_argument(
        "--out", help="run folder for checkpoint, metrics and model (default: runs/NAME)"
    )
    f.add_argument("--output", help="path of the exported .onnx (default: OUT/NAME.onnx)")
    f.add_argument(
        "--test",
        action="append",
        default=[],
        help="held-out source to report in the model's metrics (repeatable; "
        "default for a recipe: RECIPE:test)",
    )
    f.add_argument("--epochs", type=_positive_int, default=30)
    f.add_argument("--batch-size", type=_positive_int, default=256)
    f.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (OneCycle)")
    f.add_argument("--weight-decay", type=float, default=5e-4)
    f.add_argument("--label-smoothing", type=float, default=0.05)
    f.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="fraction of the training rows held out for early stopping",
    )
    f.add_argument(
        "--patience",
        type=_positive_int,
        default=8,
        help="epochs without validation gain before stopping",
    )
    f.add_argument("--widths", type=_widths, default=None, help="channels of the 3 stages")
    f.add_argument("--dropout", type=float, default=0.3)
    f.add_argument("--no-augment", action="store_true", help="train without augmentation")
    f.add_argument(
        "--balance",
        type=float,
        default=0.0,
        help="sample classes by count**-BALANCE (0 = as in the data, 1 = equally)",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    f.add_argument("--resume", help="continue from a checkpoint.pt of the same run")
    f.add_argument(
        "--extra",
        action="append",
        default=[],
        help="another training source added to SOURCE, e.g. an npz of hwr-train pagecrops "
        "(repeatable; training only, never tested)",
    )
    f.add_argument(
        "--init",
        help="fine-tune: start from this model (an exported .onnx or a checkpoint.pt with the "
        "same labels and widths) instead of random weights",
    )
    f.add_argument(
        "--dry-run",
        action="store_true",
        help="one batch end to end (train, validate, test, export) for smoke tests",
    )
    f.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("evaluate", help="accuracy, per-class numbers and a report folder")
    e.add_argument("model", help="digits, letters, alnum or a path to an .onnx file")
    e.add_argument("dataset", help="same forms as fit's source; recipes use their test split")
    e.add_argument("--report", help="folder for metrics.json, confusion.png, mistakes.png")
    e.add_argument("--worst", type=_positive_int, default=50, help="mistakes shown in mistakes.png")
    e.add_argument("--threads", type=int, default=None, help="onnxruntime threads")

    v = sub.add_parser(
        "verifier",
        help="build the single-character verifier (hwr_batch/models/verifier.onnx)",
    )
    v.add_argument("--out", default="runs/verifier", help="run folder: data, checkpoint, metrics")
    v.add_argument("--output", default="hwr_batch/models/verifier.onnx", help="the .onnx to write")
    v.add_argument(
        "--sources",
        default="digits,letters",
        help="training splits (recipes of training.sources) the strips are drawn from",
    )
    v.add_argument("--strips", type=_positive_int, default=12000, help="strips per source")
    v.add_argument(
        "--test-strips", type=_positive_int, default=1500, help="held-out strips per source"
    )
    v.add_argument("--epochs", type=_positive_int, default=8)
    v.add_argument("--batch-size", type=_positive_int, default=256)
    v.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (OneCycle)")
    v.add_argument("--widths", type=_widths, default=None, help="channels of the 3 stages")
    v.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads")
    v.add_argument("--seed", type=int, default=0)

    c = sub.add_parser(
        "pagecrops",
        help="the page reader's own crops of generated pages of training glyphs, as an npz "
        "for fit --extra",
    )
    c.add_argument("kind", choices=sorted(LABEL_SETS), help="model recipe the glyphs come from")
    c.add_argument("output", help="the .npz to write (images, labels, groups)")
    c.add_argument("--pages", type=_positive_int, default=240)
    c.add_argument(
        "--seed", type=int, default=1000, help="page seeds SEED*100003+i (benchmarks use 0)"
    )
    c.add_argument("--jobs", type=_positive_int, default=None, help="worker processes")

    a = sub.add_parser("average", help="average the weights of a model and one fine-tuned from it")
    a.add_argument("a", help="the starting .onnx")
    a.add_argument("b", help="the fine-tuned .onnx (its metadata is kept)")
    a.add_argument("output", help="the .onnx to write")
    a.add_argument("--weight", type=float, default=0.5, help="weight of B (0..1)")

    e = sub.add_parser(
        "ensemble", help="one model file that reads with several models and averages them"
    )
    e.add_argument("models", nargs="+", help="two or more .onnx models of the same labels")
    e.add_argument("--output", "-o", required=True, help="the .onnx to write")
    e.add_argument("--name", default="", help="model name stored in the file (default: first's)")
    e.add_argument(
        "--test",
        action="append",
        default=[],
        help="held-out source whose accuracy goes into the file's metrics (repeatable)",
    )

    x = sub.add_parser("export", help="export the best weights of a checkpoint to ONNX")
    x.add_argument("checkpoint")
    x.add_argument("output", help="path of the .onnx to write")

    try:
        from training.convert import add_convert_parser
    except ImportError:
        pass
    else:
        add_convert_parser(sub)
    return p


def _labels_for(arg: str | None, source: str) -> str:
    if arg:
        return LABEL_SETS.get(arg, arg)
    return LABEL_SETS.get(source.partition(":")[0], "")


def _run_fit(args: argparse.Namespace, argv: list[str]) -> int:
    from training.fit import FitConfig, command_line, fit
    from training.model import DEFAULT_WIDTHS

    labels = _labels_for(args.labels, args.source)
    if labels and len(set(labels)) != len(labels):
        raise BadArguments(f"--labels {labels}: repeated characters")
    name = args.name or (
        args.source.partition(":")[0]
        if args.source.partition(":")[0] in LABEL_SETS
        else Path(args.source).stem
    )
    if not 0.0 <= args.val_fraction < 0.5:
        raise BadArguments(f"--val-fraction {args.val_fraction}: expected 0 <= f < 0.5")
    cfg = FitConfig(
        source=args.source,
        labels=labels,
        name=name,
        out_dir=args.out or str(Path("runs") / name),
        output=args.output,
        test=args.test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        val_fraction=args.val_fraction,
        patience=args.patience,
        widths=args.widths or DEFAULT_WIDTHS,
        dropout=args.dropout,
        augment=not args.no_augment,
        balance=args.balance,
        seed=args.seed,
        device=args.device,
        dry_run=args.dry_run,
        resume=args.resume,
        extra=args.extra,
        init=args.init,
        command=command_line(argv),
    )
    result = fit(cfg, quiet=args.quiet)
    print(json.dumps({"model": str(result.onnx_path), **_brief(result.metrics)}))
    return 0


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"validation_accuracy": metrics.get("validation_accuracy")}
    for spec, v in metrics.get("test", {}).items():
        out[f"test:{spec}"] = v["accuracy"]
    return out


def _run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, summary_lines

    metrics = evaluate(args.model, args.dataset, args.report, args.worst, args.threads)
    for line in summary_lines(metrics):
        print(line)
    if args.report:
        print(f"report: {args.report}")
    return 0


def _run_pagecrops(args: argparse.Namespace) -> int:
    from training.pagecrops import page_crops, save_npz

    data = page_crops(
        args.kind, args.pages, args.seed, jobs=args.jobs, log=lambda s: print(s, file=sys.stderr)
    )
    path = save_npz(data, args.output)
    print(json.dumps({"output": str(path), "images": len(data), "pages": args.pages}))
    return 0


def _run_verifier(args: argparse.Namespace, argv: list[str]) -> int:
    from training.fit import command_line
    from training.verifier import VERIFIER_WIDTHS, VerifierConfig, train_verifier

    sources = tuple(s for s in args.sources.split(",") if s)
    unknown = [s for s in sources if s not in LABEL_SETS]
    if not sources or unknown:
        raise BadArguments(f"--sources {args.sources}: expected recipes of {sorted(LABEL_SETS)}")
    cfg = VerifierConfig(
        out_dir=args.out,
        output=args.output,
        sources=sources,
        strips=args.strips,
        test_strips=args.test_strips,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        widths=args.widths or VERIFIER_WIDTHS,
        seed=args.seed,
        threads=args.threads,
        command=command_line(argv),
    )
    metrics = train_verifier(cfg)
    print(json.dumps({"model": cfg.output, **metrics["test"]}))
    return 0


def _run_export(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from training.export import build_metadata, export_onnx
    from training.fit import load_checkpoint, model_from_checkpoint

    model, cfg = model_from_checkpoint(Path(args.checkpoint))
    state = load_checkpoint(Path(args.checkpoint))
    meta = build_metadata(
        labels=cfg["labels"],
        name=cfg["name"],
        datasets=[cfg["source"]],
        metrics={"validation_accuracy": float(state["best_val_accuracy"])},
        command=cfg.get("command", ""),
        seed=int(cfg["seed"]),
        extra={"train_config": cfg, "exported_by": "hwr-train " + " ".join(argv)},
    )
    g = torch.Generator().manual_seed(0)
    diff = export_onnx(model, args.output, meta, torch.rand(64, 1, 28, 28, generator=g))
    print(f"wrote {args.output} (onnxruntime vs torch max diff {diff:.1e})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command == "fit":
            return _run_fit(args, argv)
        if args.command == "evaluate":
            return _run_evaluate(args)
        if args.command == "export":
            return _run_export(args, argv)
        if args.command == "verifier":
            return _run_verifier(args, argv)
        if args.command == "pagecrops":
            return _run_pagecrops(args)
        if args.command == "average":
            from training.fit import average_models, command_line

            diff = average_models(
                Path(args.a), Path(args.b), args.weight, Path(args.output), command_line(argv)
            )
            print(f"wrote {args.output} (onnxruntime vs torch max diff {diff:.1e})")
            return 0
        if args.command == "ensemble":
            from training.fit import command_line, ensemble_models

            diff = ensemble_models(
                [Path(m) for m in args.models],
                Path(args.output),
                args.name,
                command_line(argv),
                args.test,
            )
            print(f"wrote {args.output} (onnxruntime vs torch max diff {diff:.1e})")
            return 0
        if args.command == "convert":
            from training.convert import run_convert

            return int(run_convert(args) or 0)
        raise BadArguments(f"unknown command {args.command}")
    except HwrError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return int(ExitCode.interrupted)


if __name__ == "__main__":
    sys.exit(main())
