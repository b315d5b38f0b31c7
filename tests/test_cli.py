"""The hwr-batch command: exit codes, one-line errors, a batch killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import (
    TEST_MAX_PIXELS,
    make_bad_inputs,
    page_jsons,
    read_csv,
    save_pdf,
    save_png,
    tiny_model,
)

from hwr_batch import cli
from hwr_batch.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx"))


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hwr-batch: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["in"],
        ["in", "-o", "out", "--bogus"],
        ["in", "-o", "out", "--jobs", "0"],
        ["in", "-o", "out", "--min-confidence", "1.5"],
        ["in", "-o", "out", "--charset", "greek"],
        ["in", "-o", "out", "--page-timeout", "-1"],
        ["in", "-o", "out", "--page-timeout", "soon"],
        ["in", "-o", "out", "-v", "-q"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == ExitCode.bad_arguments
    out, err = capsys.readouterr()
    assert out == ""
    _one_error_line(err)


def test_missing_input_empty_folder_and_bad_model_exit_2(
    tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert cli.main([str(tmp_path / "nope"), "-o", out, "--model", model]) == 2
    assert "nope: no such file or folder" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty"), "-o", out, "--model", model]) == 2
    assert "no input files" in _one_error_line(capsys.readouterr().err)
    save_png(tmp_path / "in" / "a.png", 1)
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not a model")
    assert cli.main([str(tmp_path / "in"), "-o", out, "--model", str(bad_model)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "bad.onnx" in line and "Traceback" not in line
    # -v adds the traceback.
    assert cli.main([str(tmp_path / "in"), "-o", out, "--model", str(bad_model), "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in text
    assert "--charset" in text and "--min-confidence" in text


def _echo_subcommand(argv: list[str]) -> int:
    print("sub:" + ",".join(argv))
    return 7


def test_subcommand_dispatch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", "test_cli:_echo_subcommand")
    assert cli.main(["echo", "a", "--b"]) == 7
    assert capsys.readouterr().out == "sub:a,--b\n"


def test_some_inputs_failed_exit_1_all_failed_exit_3(
    tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    expected = make_bad_inputs(src)
    common = ["--model", model, "--jobs", "2", "--max-pixels", str(TEST_MAX_PIXELS), "-q"]
    rc = cli.main([str(src), "-o", str(tmp_path / "out3"), *common])
    assert rc == ExitCode.all_inputs_failed
    save_png(src / "good.png", 5)
    rc = cli.main([str(src), "-o", str(tmp_path / "out1"), *common])
    assert rc == ExitCode.some_inputs_failed
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1]
    assert "1 pages read" in last and f"{len(expected)} failed" in last
    # Each failure also said on stderr, one line naming the file.
    for name in expected:
        assert sum(name in ln for ln in err.splitlines()) == 2  # once per run
    assert len(read_csv(tmp_path / "out1" / "errors.csv")) == len(expected)


def _cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hwr_batch.cli", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _make_twenty_pages(src: Path) -> int:
    for i in range(12):
        save_png(src / "scans" / f"s{i:02d}.png", i)
    save_pdf(src / "book.pdf", list(range(100, 108)))
    return 20


def test_sigkill_midway_then_resume_loses_and_repeats_nothing(tmp_path: Path, model: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    n_pages = _make_twenty_pages(src)
    args = _cli_cmd(
        str(src), "-o", str(out), "--model", model, "--jobs", "2", "--overlay", "-q",
        "--max-pixels", str(TEST_MAX_PIXELS),
    )  # fmt: skip
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the workers too
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(page_jsons(out)) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = {p: p.stat().st_mtime_ns for p in page_jsons(out)}
    assert 3 <= len(done_at_kill) < n_pages, "the batch must be killed mid-way"
    for p in done_at_kill:  # whatever was there is whole
        assert json.loads(p.read_text("utf-8"))["schema"] == "hwr-batch/page/v1"

    rerun = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    jsons = page_jsons(out)
    assert len(jsons) == n_pages
    for p in jsons:
        doc = json.loads(p.read_text("utf-8"))
        assert doc["schema"] == "hwr-batch/page/v1"
        stem = str(p)[: -len(".json")]
        assert Path(stem + ".csv").is_file() and Path(stem + ".overlay.png").is_file()
    # Pages complete before the kill were not read again.
    assert {p: p.stat().st_mtime_ns for p in done_at_kill} == done_at_kill
    summary = read_csv(out / "summary.csv")
    keys = [(r["file"], r["page"]) for r in summary]
    assert len(keys) == len(set(keys)) == n_pages
    statuses = [r["status"] for r in summary]
    assert statuses.count("kept") == len(done_at_kill)
    assert statuses.count("read") == n_pages - len(done_at_kill)
    assert read_csv(out / "errors.csv") == []
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert f"{n_pages - len(done_at_kill)} pages read" in rerun.stdout


def test_ctrl_c_exits_130_and_leaves_a_resumable_state(tmp_path: Path, model: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    n_pages = _make_twenty_pages(src)
    args = _cli_cmd(
        str(src), "-o", str(out), "--model", model, "--jobs", "2", "--overlay",
        "--max-pixels", str(TEST_MAX_PIXELS),
    )  # fmt: skip
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(page_jsons(out)) >= 2:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends the whole group on Ctrl-C
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.interrupted, stderr
    assert "interrupted" in (stdout + stderr)
    done = len(page_jsons(out))
    assert done < n_pages
    assert len(read_csv(out / "summary.csv")) == done  # batch files match what is complete
    rerun = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(page_jsons(out)) == n_pages
    assert [r["status"] for r in read_csv(out / "summary.csv")].count("kept") == done


def test_progress_plain_lines_when_not_a_terminal() -> None:
    import io

    from hwr_batch.progress import NullProgress, PlainProgress, RichProgress, make_progress

    stream = io.StringIO()
    prog = make_progress(stream=stream)
    assert isinstance(prog, PlainProgress)
    assert isinstance(make_progress(quiet=True, stream=stream), NullProgress)
    prog.interval = 0.0
    prog.add_files(2)
    prog.add_pages(3)
    prog.page_done(40)
    prog.page_done(0, skipped=True)
    prog.file_done()
    prog.page_done(0, failed=True)
    prog.file_done()
    prog.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("hwr-batch: files 0/2, pages 1/3 (0 failed)")
    assert lines[-1].startswith("hwr-batch: files 2/2, pages 3/3 (1 failed)")
    assert "chars/s" in lines[-1] and "ETA 00:00" in lines[-1]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    rich_prog = make_progress(stream=Tty())
    assert isinstance(rich_prog, RichProgress)
    rich_prog.add_pages(1)
    rich_prog.page_done(5)
    rich_prog.close()
