"""The web API through FastAPI's TestClient: happy paths, limits, bad input, error hygiene.

Most tests run against a small template-matching ONNX model built here (labels "017": a bar, a
ring, a seven), so they do not depend on the trained models; the tests that check the bundled
models' answers skip when those are not installed.
"""

from __future__ import annotations

import base64
import csv
import io
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "fastapi", reason="the web extra is not installed: pip install 'hwr-batch[web]'"
)
onnx = pytest.importorskip("onnx", reason="onnx is needed to build the test model")

from fastapi.testclient import TestClient  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hwr_batch import defaults  # noqa: E402
from hwr_batch.normalize import normalize  # noqa: E402
from hwr_batch.records import PAGE_SCHEMA, PageResult  # noqa: E402
from hwr_batch.web import app as web_app  # noqa: E402
from hwr_batch.web.app import WebSettings, create_app  # noqa: E402

# ---------------------------------------------------------------- fixtures


def glyph(label: str, size: int = 120, thickness: int = 12) -> np.ndarray:
    """A drawn character: uint8 (size, size), black ink on white, for labels 0, 1, 7."""
    img = np.full((size, size), 255, np.uint8)
    s = size
    if label == "1":
        cv2.line(img, (s // 2, s // 8), (s // 2, s - s // 8), 0, thickness)
    elif label == "0":
        cv2.ellipse(img, (s // 2, s // 2), (s // 4, s * 3 // 8), 0, 0, 360, 0, thickness)
    elif label == "7":
        cv2.line(img, (s // 4, s // 8), (s * 3 // 4, s // 8), 0, thickness)
        cv2.line(img, (s * 3 // 4, s // 8), (s * 3 // 8, s - s // 8), 0, thickness)
    else:
        raise ValueError(label)
    return img


def make_template_model(path: Path, labels: str = "017") -> Path:
    """A real ONNX classifier: softmax of scaled correlations with one template per label.

    Input float32 (N, 1, 28, 28), output probabilities (N, len(labels)); ``labels`` metadata as
    the reader requires.
    """
    templates = np.stack([normalize(glyph(c)).ravel() for c in labels], axis=1)
    templates /= np.linalg.norm(templates, axis=0, keepdims=True)
    weights = (templates * 0.4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["proba"], axis=1),
        ],
        "templates",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("proba", TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"labels": labels, "name": "templates"})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template_model(tmp_path_factory.mktemp("model") / "templates.onnx")


def settings_for(model: Path, **kw: object) -> WebSettings:
    return WebSettings(models={c: str(model) for c in defaults.CHARSETS}, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def client(model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(model_path)), raise_server_exceptions=False) as c:
        yield c


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def upload(data: bytes, name: str = "drawing.png", ctype: str = "image/png") -> dict:
    return {"file": (name, data, ctype)}


def our_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hwr-web-*")}


def digits_page(text_lines: list[str], scale: float = 2.2) -> np.ndarray:
    """A white page with lines of printed-like digits (Hershey script font), uint8 (H, W)."""
    page = np.full((700, 900), 255, np.uint8)
    for i, line in enumerate(text_lines):
        x = 80
        for ch in line:
            if ch != " ":
                cv2.putText(page, ch, (x, 170 + i * 200), cv2.FONT_HERSHEY_SIMPLEX, scale, 0, 9)
            x += 90
    return page


# ---------------------------------------------------------------- classify


@pytest.mark.parametrize("label", ["0", "1", "7"])
def test_classify_returns_top3_and_the_crop_the_model_saw(client: TestClient, label: str) -> None:
    img = glyph(label, size=200, thickness=18)
    r = client.post("/api/classify?charset=digits", files=upload(png_bytes(img)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "single"
    assert body["text"] == label
    (ch,) = body["chars"]
    assert ch["label"] == label
    confs = [t["confidence"] for t in ch["top"]]
    assert [t["label"] for t in ch["top"]][0] == label
    assert len(ch["top"]) == 3 and confs == sorted(confs, reverse=True)
    assert 0.0 < sum(confs) <= 1.0001 and ch["confidence"] == confs[0]
    # The crop is the normaliser's output for this drawing, as an 8-bit PNG.
    assert ch["crop"].startswith("data:image/png;base64,")
    crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(ch["crop"].split(",", 1)[1]))))
    assert crop.shape == (28, 28)
    expected = np.round(normalize(img) * 255).astype(np.uint8)
    assert np.abs(crop.astype(int) - expected.astype(int)).max() <= 1
    # The box is around the ink.
    x, y, w, h = ch["bbox"]
    ys, xs = np.nonzero(img < 128)
    assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_classify_transparent_canvas_png_is_ink_on_paper(client: TestClient) -> None:
    rgba = np.zeros((200, 200, 4), np.uint8)  # fully transparent
    cv2.line(rgba, (100, 25), (100, 175), (0, 0, 0, 255), 18)
    r = client.post("/api/classify", files=upload(png_bytes(rgba)))
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "1"


def test_classify_shrinks_large_images_first(client: TestClient) -> None:
    big = cv2.resize(glyph("0", 200, 18), (2400, 2400), interpolation=cv2.INTER_NEAREST)
    r = client.post("/api/classify", files=upload(png_bytes(big)))
    assert r.status_code == 200 and r.json()["text"] == "0"
    assert r.json()["chars"][0]["bbox"][2] > 1024  # the box is still in the upload's pixels


def test_classify_blank_drawing_gives_no_characters(client: TestClient) -> None:
    r = client.post("/api/classify", files=upload(png_bytes(np.full((50, 80), 255, np.uint8))))
    assert r.status_code == 200
    assert r.json()["chars"] == [] and r.json()["text"] == ""


def test_classify_accepts_jpeg_by_content_whatever_the_name(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(glyph("7", 200, 18)).save(buf, "JPEG", quality=90)
    r = client.post("/api/classify", files=upload(buf.getvalue(), "scan.txt", "text/plain"))
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "7"


def test_bad_charset_is_422_with_a_message(client: TestClient) -> None:
    r = client.post("/api/classify?charset=klingon", files=upload(png_bytes(glyph("1"))))
    assert r.status_code == 422
    assert "charset" in r.json()["detail"] and "digits" in r.json()["detail"]


# ---------------------------------------------------------------- limits and bad input


def test_oversized_upload_is_413_from_content_length(model_path: Path) -> None:
    app = create_app(settings_for(model_path, max_upload_bytes=50_000))
    with TestClient(app) as c:
        big = b"\x89PNG\r\n\x1a\n" + bytes(200_000)
        r = c.post("/api/classify", files=upload(big))
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_oversized_upload_is_413_while_streaming_without_content_length(model_path: Path) -> None:
    """A chunked body with no Content-Length is cut off once the file passes the cap."""
    app = create_app(settings_for(model_path, max_upload_bytes=50_000))
    boundary = "hwrtestboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(100):  # 100 x 16 KiB = 1.6 MB if read to the end
            yield bytes(16384)
        yield f"\r\n--{boundary}--\r\n".encode()

    before = our_temp_dirs()
    with TestClient(app) as c:
        r = c.post(
            "/api/classify",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert r.status_code == 413, r.text
    assert our_temp_dirs() <= before


def test_upload_reading_stops_at_the_cap(tmp_path: Path) -> None:
    """receive_upload stops pulling the body as soon as the file passes the cap."""
    import anyio

    from hwr_batch.web.upload import UploadError, receive_upload

    boundary = "b0undary"
    pulled = []

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        ).encode()
        for _ in range(1000):  # 16 MB if read to the end
            pulled.append(1)
            yield bytes(16384)

    async def main() -> None:
        await receive_upload(
            f"multipart/form-data; boundary={boundary}", None, body(), tmp_path, 100_000
        )

    with pytest.raises(UploadError) as err:
        anyio.run(main)
    assert err.value.status == 413
    assert len(pulled) <= 100_000 // 16384 + 2
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) <= 100_000


def test_page_over_pixel_limit_is_413(model_path: Path) -> None:
    app = create_app(settings_for(model_path, max_pixels=1_000_000))
    with TestClient(app) as c:
        big = np.full((1500, 1500), 255, np.uint8)  # 2.25 Mpx, a few KB as PNG
        r = c.post("/api/classify", files=upload(png_bytes(big), "big.png"))
    assert r.status_code == 413
    assert "big.png" in r.json()["detail"] and "pixel" in r.json()["detail"]


def test_wrong_type_is_415_by_content(client: TestClient) -> None:
    r = client.post("/api/classify", files=upload(b"just some text, not a picture", "x.png"))
    assert r.status_code == 415
    assert "x.png" in r.json()["detail"]
    r = client.post("/api/read", files=upload(b"PK\x03\x04 zip archive", "scan.pdf"))
    assert r.status_code == 415


def test_pdf_to_classify_is_415(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(glyph("1")).save(buf, "PDF")
    r = client.post("/api/classify", files=upload(buf.getvalue(), "one.pdf", "application/pdf"))
    assert r.status_code == 415
    assert "/api/read" in r.json()["detail"]


def test_corrupt_image_is_400_without_server_paths_or_traceback(client: TestClient) -> None:
    good = png_bytes(glyph("1"))
    corrupt = good[:40] + bytes(len(good) - 40)  # PNG signature, then zeros
    r = client.post("/api/classify", files=upload(corrupt, "broken.png"))
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("broken.png")
    assert "hwr-web-" not in detail and tempfile.gettempdir() not in detail
    assert "Traceback" not in r.text


def test_empty_file_missing_field_and_non_multipart(client: TestClient) -> None:
    r = client.post("/api/classify", files=upload(b"", "empty.png"))
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = client.post("/api/classify", files={"image": ("a.png", png_bytes(glyph("1")), "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = client.post(
        "/api/classify", content=png_bytes(glyph("1")), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_missing_model_is_503_with_the_reason(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path / "absent.onnx"))
    with TestClient(app) as c:
        r = c.post("/api/classify", files=upload(png_bytes(glyph("1"))))
        assert r.status_code == 503
        assert "model file not found" in r.json()["detail"]
        models = c.get("/api/models").json()
        assert [m["available"] for m in models] == [False, False, False]


def test_unexpected_error_is_a_bare_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("secret internals at /srv/hwr/thing.py")

    monkeypatch.setattr(web_app, "classify_image", boom)
    r = client.post("/api/classify", files=upload(png_bytes(glyph("1"))))
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["detail"].startswith("internal error")


def test_uploads_live_only_in_a_per_request_temporary_folder(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the temp root pointed at an empty folder: the upload (2.4 MB, over the 1 MB at which
    Starlette's UploadFile would spool to the system temp folder) is saved inside a
    TemporaryDirectory of its own, and nothing is left once the answer is out."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    seen: list[Path] = []
    real = web_app.load_page_checked

    def spy(up: web_app.Upload, page: int, cfg: WebSettings) -> tuple[np.ndarray, int]:
        seen.append(up.path)
        assert up.path.is_file() and up.path.parent.parent == root
        assert up.path.parent.name.startswith("hwr-web-")
        return real(up, page, cfg)

    monkeypatch.setattr(web_app, "load_page_checked", spy)
    from PIL.PngImagePlugin import PngInfo

    # A small drawing made large by text chunks of random bytes (each under Pillow's 1 MB
    # limit per chunk).
    rng = np.random.default_rng(0)
    info = PngInfo()
    for k in range(3):
        info.add_text(f"note{k}", rng.integers(65, 91, 800_000, dtype=np.uint8).tobytes().decode())
    buf = io.BytesIO()
    Image.fromarray(glyph("7", 200, 18)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    assert len(data) > 2 * 2**20
    r = client.post("/api/classify", files=upload(data, "big.png"))
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "7"
    assert len(seen) == 1
    assert list(root.iterdir()) == []


def test_uploads_leave_no_files_behind(client: TestClient) -> None:
    before = our_temp_dirs()
    for _ in range(3):
        assert client.post("/api/classify", files=upload(png_bytes(glyph("0")))).status_code == 200
    client.post("/api/classify", files=upload(b"\x89PNG\r\n\x1a\ngarbage", "bad.png"))
    assert our_temp_dirs() <= before


# ---------------------------------------------------------------- docs and page


def test_openapi_documents_the_api_and_the_file_field(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/api/classify", "/api/read", "/api/render", "/api/csv"):
        assert path in spec["paths"]
    body = spec["paths"]["/api/classify"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    params = {p["name"] for p in spec["paths"]["/api/read"]["post"]["parameters"]}
    assert {"charset", "forms", "page", "format"} <= params


def test_index_and_static_files_are_served_with_a_strict_csp(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "<canvas" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


# ---------------------------------------------------------------- read (page reader)


@pytest.fixture()
def reader_available() -> None:
    pytest.importorskip("hwr_batch.pipeline", reason="the page reader has not landed")


def test_read_returns_the_batch_page_schema(client: TestClient, reader_available: None) -> None:
    page = digits_page(["101", "7 70"])
    r = client.post("/api/read?charset=digits", files=upload(png_bytes(page), "page one.png"))
    assert r.status_code == 200, r.text
    assert r.headers["x-page-count"] == "1"
    doc = r.json()
    assert doc["schema"] == PAGE_SCHEMA
    assert doc["source"] == "page one.png" and doc["page"] == 1
    assert (doc["width"], doc["height"]) == (900, 700)
    assert doc["n_chars"] == 6
    assert PageResult.from_dict(doc).to_dict() == doc
    for line in doc["lines"]:
        for word in line["words"]:
            for ch in word["chars"]:
                x, y, w, h = ch["bbox"]
                assert x >= 0 and x + w <= 900 and y >= 0 and y + h <= 700
                assert len(ch["alternatives"]) == 3


def test_read_pdf_page_choice_and_render(client: TestClient, reader_available: None) -> None:
    pages = [Image.fromarray(digits_page(["1"])), Image.fromarray(digits_page(["70", "1"]))]
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=150)
    pdf = buf.getvalue()
    r = client.post("/api/read?page=2", files=upload(pdf, "two.pdf", "application/pdf"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["page"] == 2 and r.headers["x-page-count"] == "2"
    assert doc["n_chars"] == 3
    img = client.post("/api/render?page=2", files=upload(pdf, "two.pdf"))
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    shown = Image.open(io.BytesIO(img.content))
    assert shown.size == (doc["width"], doc["height"])
    r = client.post("/api/read?page=3", files=upload(pdf, "two.pdf"))
    assert r.status_code == 422 and "2 page" in r.json()["detail"]
    r = client.post("/api/read?page=0", files=upload(pdf, "two.pdf"))
    assert r.status_code == 422


def test_read_csv_is_the_batch_csv(client: TestClient, reader_available: None) -> None:
    from hwr_batch.export import CSV_COLUMNS

    data = png_bytes(digits_page(["10", "77"]))
    r = client.post("/api/read?format=csv", files=upload(data, "p.png"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="p_p1.csv"' in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == CSV_COLUMNS and len(rows) == 1 + 4
    # The page JSON turned into CSV by /api/csv (what the page's download button does) is the
    # same document.
    doc = client.post("/api/read", files=upload(data, "p.png")).json()
    again = client.post("/api/csv", json=doc)
    assert again.status_code == 200 and again.text == r.text
    bad = client.post("/api/csv", json={"schema": "something/else"})
    assert bad.status_code == 422


def test_read_corrupt_pdf_is_400(client: TestClient, reader_available: None) -> None:
    r = client.post("/api/read", files=upload(b"%PDF-1.7\n" + bytes(500), "bad.pdf"))
    assert r.status_code == 400
    assert r.json()["detail"].startswith("bad.pdf")


# ---------------------------------------------------------------- bundled models


@pytest.fixture()
def bundled_digits() -> None:
    from hwr_batch.classify import model_path as bundled
    from hwr_batch.errors import ModelError

    try:
        bundled("digits")
    except ModelError:
        pytest.skip("hwr_batch/models/digits.onnx is not installed yet")


def test_bundled_digits_model_reads_drawn_digits(bundled_digits: None) -> None:
    with TestClient(create_app()) as c:
        for label in ("0", "1", "7"):
            r = c.post("/api/classify", files=upload(png_bytes(glyph(label, 280, 22))))
            assert r.status_code == 200
            assert r.json()["text"] == label, r.json()["chars"][0]["top"]


def test_bundled_digits_model_reads_a_page_and_a_drawn_number(
    bundled_digits: None, reader_available: None
) -> None:
    with TestClient(create_app()) as c:
        r = c.post("/api/read", files=upload(png_bytes(digits_page(["101", "7 70"]))))
        assert r.status_code == 200, r.text
        assert r.json()["text"] == "101\n7 70"
        # A short number drawn on one canvas: the reader splits it, one entry per character,
        # each with the crop the model saw.
        canvas = np.full((300, 600), 255, np.uint8)
        canvas[40:260, 60:200] = glyph("1", 220, 20)[:, 40:180]
        canvas[40:260, 200:420] = glyph("7", 220, 20)
        canvas[40:260, 380:600] = glyph("0", 220, 20)
        r = c.post("/api/classify?split=true", files=upload(png_bytes(canvas)))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == "page" and body["text"] == "170"
        assert [ch["label"] for ch in body["chars"]] == ["1", "7", "0"]
        assert all(ch["crop"].startswith("data:image/png;base64,") for ch in body["chars"])


def test_serve_binds_localhost_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from hwr_batch.cli import main

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    assert main(["serve", "--max-upload-mb", "2", "--max-pixels", "1000"]) == 0
    (call,) = calls
    assert call["host"] == "127.0.0.1" and call["port"] == 8000
    cfg = call["app"].state.settings
    assert cfg.max_upload_bytes == 2 * 2**20 and cfg.max_pixels == 1000
    assert main(["serve", "--port", "0"]) == 2
    assert len(calls) == 1


LETTER_STROKES = {
    "T": [((60, 50), (240, 50)), ((150, 50), (150, 260))],
    "L": [((90, 40), (90, 260)), ((90, 260), (230, 260))],
    "H": [((70, 40), (70, 260)), ((230, 40), (230, 260)), ((70, 150), (230, 150))],
    "A": [((150, 30), (60, 270)), ((150, 30), (240, 270)), ((95, 180), (205, 180))],
    "E": [((80, 40), (80, 260)), ((80, 40), (230, 40)), ((80, 150), (200, 150)),
          ((80, 260), (230, 260))],
}  # fmt: skip


@pytest.mark.parametrize("charset", ["letters", "alnum"])
def test_bundled_letter_models_read_drawn_capitals(charset: str) -> None:
    from hwr_batch.classify import model_path as bundled
    from hwr_batch.errors import ModelError

    try:
        bundled(charset)
    except ModelError:
        pytest.skip(f"hwr_batch/models/{charset}.onnx is not installed yet")
    with TestClient(create_app()) as c:
        for label, strokes in LETTER_STROKES.items():
            img = np.full((300, 300), 255, np.uint8)
            for p, q in strokes:
                cv2.line(img, p, q, 0, 18)
            r = c.post(f"/api/classify?charset={charset}", files=upload(png_bytes(img)))
            assert r.status_code == 200
            assert r.json()["text"] == label, r.json()["chars"][0]["top"]


def test_client_file_names_are_names_not_paths(client: TestClient, reader_available: None) -> None:
    data = png_bytes(digits_page(["1"]))
    r = client.post("/api/read", files=upload(data, "../../etc/scan\\x.png"))
    assert r.status_code == 200
    assert r.json()["source"] == "x.png"


def test_malformed_multipart_body_is_400(client: TestClient) -> None:
    for body in (b"--zzz\r\n\x01\x02: x\r\n\r\nabc\r\n--zzz--\r\n", b"garbage--zzz"):
        r = client.post(
            "/api/classify",
            content=body,
            headers={"Content-Type": "multipart/form-data; boundary=zzz"},
        )
        assert r.status_code == 400
        assert r.json()["detail"].startswith("malformed multipart body")
