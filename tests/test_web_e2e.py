"""End to end in a real headless Chromium: draw on the canvas with the mouse, upload a page.

Needs the Debian package ``chromium`` (at /usr/bin/chromium, or set HWR_CHROMIUM) and the Python
package ``playwright``; Playwright's own browser download is not used. The server is the real
``hwr-batch serve`` code path (``hwr_batch.cli.main(["serve", ...])``) under uvicorn, in a
subprocess on a free localhost port.

Set ``HWR_WEB_SCREENSHOTS=docs`` to also save the README screenshots of both views there.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the [web] extra is not installed")
pytest.importorskip("uvicorn", reason="the [web] extra is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

from test_web_api import digits_page, make_template_model  # noqa: E402

from hwr_batch import defaults  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HWR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MNIST_TEST = ROOT.parent / "shared" / "datasets" / "mnist" / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = ROOT.parent / "shared" / "datasets" / "mnist" / "t10k-labels-idx1-ubyte.gz"
SCREENSHOTS = os.environ.get("HWR_WEB_SCREENSHOTS")

if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set HWR_CHROMIUM)",
        allow_module_level=True,
    )


def has_bundled(charset: str) -> bool:
    return (ROOT / "hwr_batch" / "models" / f"{charset}.onnx").is_file()


def has_reader() -> bool:
    try:
        import hwr_batch.pipeline  # noqa: F401
    except ImportError:
        return False
    return True


needs_reader = pytest.mark.skipif(not has_reader(), reason="the page reader has not landed")


# ---------------------------------------------------------------- server and browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``hwr-batch serve`` in a subprocess; ``url`` once it answers /api/health."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "import sys; from hwr_batch.cli import main; sys.exit(main(['serve', *sys.argv[1:]]))"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HWR_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--port", str(self.port), "--log-level", "warning", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start within 60 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def template_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template_model(tmp_path_factory.mktemp("model") / "templates.onnx")


@pytest.fixture(scope="module")
def server(template_model: Path) -> Iterator[Server]:
    """The app with the test's template model (labels 0, 1, 7) for every charset."""
    args = [a for c in defaults.CHARSETS for a in (f"--{c}-model", str(template_model))]
    srv = Server(args)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 820}, accept_downloads=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# ---------------------------------------------------------------- drawing helpers

Stroke = list[tuple[float, float]]


def draw_strokes(pg: Any, strokes: list[Stroke]) -> int:
    """Replay strokes given in canvas pixels (600x300) as mouse drags on the canvas.

    Returns the number of strokes the page has counted since it was last cleared."""
    canvas = pg.locator("#draw-canvas")
    box = canvas.bounding_box()
    sx, sy = box["width"] / 600, box["height"] / 300
    mouse = pg.mouse
    for stroke in strokes:
        x0, y0 = stroke[0]
        mouse.move(box["x"] + x0 * sx, box["y"] + y0 * sy)
        mouse.down()
        for x, y in stroke[1:]:
            mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        mouse.up()
    return int(canvas.get_attribute("data-strokes"))


def line(p: tuple[float, float], q: tuple[float, float], n: int = 12) -> Stroke:
    return [(p[0] + (q[0] - p[0]) * t / n, p[1] + (q[1] - p[1]) * t / n) for t in range(n + 1)]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> Stroke:
    return [
        (cx + rx * np.sin(2 * np.pi * t / n), cy - ry * np.cos(2 * np.pi * t / n))
        for t in range(n + 1)
    ]


HAND_DRAWN: dict[str, list[Stroke]] = {
    "1": [line((300, 40), (302, 260))],
    "7": [line((230, 45), (370, 45)) + line((370, 45), (270, 262))[1:]],
    "0": [ellipse(300, 150, 70, 105)],
}


def prediction(pg: Any, strokes: int) -> dict[str, object]:
    """Wait for the answer for the whole drawing (all ``strokes``): its text and card count.

    A pause mid-drawing may already have produced an answer for part of it; answers carry the
    number of strokes they saw.
    """
    pg.wait_for_selector(
        f'#draw-result[data-status="done"][data-strokes="{strokes}"], '
        '#draw-result[data-status="error"]',
        timeout=20_000,
    )
    if pg.get_attribute("#draw-result", "data-status") == "error":
        pytest.fail("the page shows an error: " + pg.locator("#draw-error").inner_text())
    text = pg.locator("#draw-text").get_attribute("data-text")
    cards = pg.locator("#draw-chars .card")
    return {"text": text, "cards": cards.count()}


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("label", ["1", "7", "0"])
def test_drawing_a_digit_with_the_mouse_shows_the_prediction(
    server: Server, page: Any, label: str
) -> None:
    page.goto(server.url + "/#draw")
    n = draw_strokes(page, HAND_DRAWN[label])
    assert n == len(HAND_DRAWN[label])
    got = prediction(page, n)
    assert got["text"] == label
    assert got["cards"] == 1
    # Top-3 rows and the 28x28 crop image are on the card.
    assert page.locator("#draw-chars .card .topk .row").count() == 3
    size = page.eval_on_selector(
        "#draw-chars .card img", "img => [img.naturalWidth, img.naturalHeight]"
    )
    assert size == [28, 28]
    page.click("#draw-clear")
    assert page.locator("#draw-chars .card").count() == 0
    assert page.get_attribute("#draw-result", "data-status") == "empty"


@needs_reader
def test_a_short_number_drawn_gives_one_card_per_character(server: Server, page: Any) -> None:
    page.goto(server.url + "/#draw")
    one = [line((150, 60), (152, 250))]
    seven = [line((260, 60), (380, 60)) + line((380, 60), (300, 250))[1:]]
    zero = [ellipse(490, 155, 55, 95)]
    got = prediction(page, draw_strokes(page, one + seven + zero))
    assert got["text"] == "170"
    assert got["cards"] == 3


def mnist_strokes(
    img: np.ndarray, scale: float = 10.0, ox: float = 160.0, oy: float = 10.0
) -> list[Stroke]:
    """Strokes tracing the skeleton of a 28x28 MNIST digit, in canvas pixels.

    The skeleton's pixel graph (8-neighbours) is walked edge by edge, each walk becoming one
    pen stroke, so every skeleton pixel is inked and connected parts stay connected. Image
    pixel (x, y) goes to canvas (ox + x * scale, oy + y * scale): by default the digit fills
    280 px of the canvas's height, centred.
    """
    from skimage.morphology import skeletonize

    skel = skeletonize(img > 100)
    pts = {(int(y), int(x)) for y, x in zip(*np.nonzero(skel), strict=True)}
    nbrs = {
        p: [
            (p[0] + dy, p[1] + dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if (dy or dx) and (p[0] + dy, p[1] + dx) in pts
        ]
        for p in pts
    }
    unused = {frozenset((p, q)) for p, qs in nbrs.items() for q in qs}
    strokes_px: list[list[tuple[int, int]]] = []
    ends = sorted(p for p in pts if len(nbrs[p]) == 1)
    starts = ends + sorted(pts)
    for start in starts:
        while any(frozenset((start, q)) in unused for q in nbrs[start]):
            path = [start]
            cur = start
            while True:
                nxt = [q for q in nbrs[cur] if frozenset((cur, q)) in unused]
                if not nxt:
                    break
                q = nxt[0]
                unused.discard(frozenset((cur, q)))
                path.append(q)
                cur = q
            # Every other pixel: the staircase of a pixel path is not how a pen moves.
            strokes_px.append(path[::2] + path[-1:] if len(path) > 2 else path)
    isolated = [[p] for p in pts if not nbrs[p]]
    return [[(ox + x * scale, oy + y * scale) for y, x in s] for s in strokes_px + isolated]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


@pytest.mark.skipif(not has_bundled("digits"), reason="hwr_batch/models/digits.onnx not installed")
@pytest.mark.skipif(not MNIST_TEST.is_file(), reason=f"MNIST test set not found at {MNIST_TEST}")
def test_replayed_mnist_digits_are_read_by_the_bundled_model(browser: Any) -> None:
    """Ten MNIST test digits (first of each class) redrawn by mouse along their skeletons."""
    images, labels = read_idx(MNIST_TEST), read_idx(MNIST_LABELS)
    picks = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
    srv = Server([])
    try:
        ctx = browser.new_context(viewport={"width": 1280, "height": 820})
        pg = ctx.new_page()
        pg.goto(srv.url + "/#draw")
        right = []
        for i in picks:
            pg.click("#draw-clear")
            got = prediction(pg, draw_strokes(pg, mnist_strokes(images[i])))
            right.append(got["text"] == str(labels[i]))
        ctx.close()
    finally:
        srv.stop()
    # Skeleton replay loses stroke width and some loops; 8 of 10 is a fair bar for a model
    # that does ~99% on MNIST itself.
    print("MNIST replay read right:", right)
    assert sum(right) >= 8, f"read right: {right}"


@needs_reader
def test_uploading_a_page_draws_boxes_and_offers_downloads(
    server: Server, page: Any, tmp_path: Path
) -> None:
    scan = tmp_path / "scan page.png"
    Image.fromarray(digits_page(["101", "7 70"])).save(scan)
    page.goto(server.url + "/#scan")
    page.set_input_files("#scan-file", str(scan))
    page.wait_for_selector('#scan-drop[data-status="done"]', timeout=30_000)
    boxes = page.locator("#scan-overlay .char-box")
    assert boxes.count() == 6
    # Boxes are drawn over the image: each rect's screen box lies inside the image's.
    img_box = page.locator("#scan-img").bounding_box()
    for i in range(boxes.count()):
        b = boxes.nth(i).bounding_box()
        assert b["width"] > 5 and b["height"] > 5
        assert (
            img_box["x"] - 2 <= b["x"]
            and b["x"] + b["width"] <= img_box["x"] + img_box["width"] + 2
        )
        assert (
            img_box["y"] - 2 <= b["y"]
            and b["y"] + b["height"] <= img_box["y"] + img_box["height"] + 2
        )
    assert page.locator("#scan-overlay .char-label").count() == 6
    # Hovering a character shows its alternatives.
    boxes.nth(0).hover()
    tip = page.locator("#scan-tip")
    assert tip.is_visible()
    assert tip.locator("tr").count() == 3
    # Downloads: the page JSON (the batch schema) and its CSV.
    with page.expect_download() as dl:
        page.click("#scan-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert doc["schema"] == "hwr-batch/page/v1" and doc["n_chars"] == 6
    assert dl.value.suggested_filename == "scan page_p1.json"
    with page.expect_download() as dl:
        page.click("#scan-csv")
    rows = Path(dl.value.path()).read_text().splitlines()
    assert rows[0].startswith("index,line,word,char") and len(rows) == 7


@needs_reader
def test_a_pdf_page_can_be_picked(server: Server, page: Any, tmp_path: Path) -> None:
    pdf = tmp_path / "two pages.pdf"
    first, second = digits_page(["1"]), digits_page(["70", "1"])
    Image.fromarray(first).save(pdf, save_all=True, append_images=[Image.fromarray(second)])
    page.goto(server.url + "/#scan")
    page.set_input_files("#scan-file", str(pdf))
    page.wait_for_selector('#scan-drop[data-status="done"]', timeout=30_000)
    assert page.locator("#scan-page-wrap").is_visible()
    assert page.locator("#scan-page option").count() == 2
    assert page.locator("#scan-overlay .char-box").count() == 1
    page.select_option("#scan-page", "2")
    # (The page's CSP forbids eval, so wait with a locator, not wait_for_function.)
    sync_api.expect(page.locator("#scan-overlay .char-box")).to_have_count(3, timeout=30_000)
    assert "page 2 of 2" in page.locator("#scan-status").inner_text()


def test_form_fields_in_the_result_are_drawn(server: Server, page: Any, tmp_path: Path) -> None:
    """The page draws whatever fields /api/read returns (the forms reader fills them); the
    answer is stubbed here so that this checks the page alone."""
    doc = {
        "schema": "hwr-batch/page/v1", "source": "form.png", "page": 1, "width": 900,
        "height": 700, "charset": "digits", "skew_angle": 0.0, "text": "", "n_chars": 0,
        "mean_confidence": None, "lines": [], "warnings": [],
        "fields": [
            {"name": "amount", "kind": "box", "charset": "digits", "bbox": [100, 100, 300, 80],
             "value": "170", "confidence": 0.93, "needs_review": False, "chars": []},
            {"name": "date", "kind": "comb", "charset": "digits", "bbox": [100, 300, 400, 80],
             "value": "0107", "confidence": 0.41, "needs_review": True, "chars": []},
        ],
    }  # fmt: skip
    seen: list[str] = []

    def fake_read(route: Any) -> None:
        seen.append(route.request.url)
        route.fulfill(status=200, json=doc, headers={"X-Page-Count": "1"})

    page.route("**/api/read?*", fake_read)
    form = tmp_path / "form.png"
    Image.fromarray(np.full((700, 900), 255, np.uint8)).save(form)
    page.goto(server.url + "/#scan")
    page.check("#scan-forms")
    page.set_input_files("#scan-file", str(form))
    page.wait_for_selector('#scan-drop[data-status="done"]', timeout=30_000)
    assert "forms=true" in seen[-1]
    assert page.locator("#scan-overlay .field-box").count() == 2
    labels = page.locator("#scan-overlay .field-label").all_text_contents()
    assert labels[0] == "amount: 170" and labels[1].startswith("date: 0107")
    rows = page.locator("#scan-fields tbody tr")
    assert rows.count() == 2
    assert page.locator("#scan-fields td.review").inner_text() == "0107"


def test_drawing_with_a_finger_works_too(server: Server, browser: Any) -> None:
    """Touch input, sent as real touch events through the DevTools protocol."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 820}, has_touch=True)
    try:
        pg = ctx.new_page()
        pg.goto(server.url + "/#draw")
        box = pg.locator("#draw-canvas").bounding_box()
        sx, sy = box["width"] / 600, box["height"] / 300
        cdp = ctx.new_cdp_session(pg)
        (stroke,) = HAND_DRAWN["7"]
        for i, (x, y) in enumerate(stroke):
            kind = "touchStart" if i == 0 else "touchMove"
            point = {"x": box["x"] + x * sx, "y": box["y"] + y * sy, "id": 1}
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [point]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert prediction(pg, 1)["text"] == "7"
    finally:
        ctx.close()


def test_switching_the_charset_asks_the_other_model(server: Server, page: Any) -> None:
    page.goto(server.url + "/#draw")
    n = draw_strokes(page, HAND_DRAWN["1"])
    prediction(page, n)
    with page.expect_request(lambda r: "charset=letters" in r.url) as req:
        page.click("text=Letters")
    assert "/api/classify" in req.value.url
    got = prediction(page, n)
    assert got["text"] == "1"  # the test server's letters model is the template model too


def test_a_bad_upload_shows_the_server_message(server: Server, page: Any, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page.goto(server.url + "/#scan")
    page.set_input_files("#scan-file", str(bad))
    page.wait_for_selector('#scan-drop[data-status="error"]', timeout=20_000)
    message = page.locator("#scan-error").inner_text()
    assert "notes.png" in message and "not an image" in message


@pytest.mark.skipif(not SCREENSHOTS, reason="set HWR_WEB_SCREENSHOTS=docs to save screenshots")
@pytest.mark.skipif(not has_bundled("digits"), reason="hwr_batch/models/digits.onnx not installed")
@pytest.mark.skipif(not MNIST_TEST.is_file(), reason=f"MNIST test set not found at {MNIST_TEST}")
@needs_reader
def test_save_readme_screenshots(browser: Any, tmp_path: Path) -> None:
    """Screenshots of both views for the README, with the bundled digits model: a number drawn
    from three MNIST test digits, and a generated scan of MNIST digits."""
    from training.pagegen import generate_page, mnist_test, style

    out = Path(SCREENSHOTS or "docs")
    out.mkdir(parents=True, exist_ok=True)
    images, labels = read_idx(MNIST_TEST), read_idx(MNIST_LABELS)
    srv = Server([])
    try:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = ctx.new_page()
        pg.goto(srv.url + "/#draw")
        strokes: list[Stroke] = []
        for k, digit in enumerate((2, 4, 7)):
            i = int(np.flatnonzero(labels == digit)[1])
            strokes += mnist_strokes(images[i], scale=8.0, ox=70 + k * 165, oy=38)
        got = prediction(pg, draw_strokes(pg, strokes))
        assert got["text"] == "247"
        pg.mouse.move(0, 0)
        pg.screenshot(path=str(out / "web-draw.png"))

        data = mnist_test()
        page_img, _truth = generate_page(
            data, style("scan", size=(1240, 900), n_chars=70, page_rotation_deg=2.0), seed=6
        )
        scan = tmp_path / "scan.png"
        Image.fromarray(page_img).save(scan)
        pg.goto(srv.url + "/#scan")
        pg.set_input_files("#scan-file", str(scan))
        pg.wait_for_selector('#scan-drop[data-status="done"]', timeout=60_000)
        pg.locator("#scan-overlay .char.low .char-box, #scan-overlay .char-box").first.hover()
        pg.screenshot(path=str(out / "web-upload.png"))
        ctx.close()
    finally:
        srv.stop()
