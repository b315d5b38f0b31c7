"""The web app: a drawing page, a scan checker, and the JSON API behind both.

Routes (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``GET  /``                 the page (plain HTML/CSS/JS from ``static/``, no build step)
- ``POST /api/classify``     one character or a short drawn number -> top-3 labels, 28x28 crops
- ``POST /api/read``         a page (image or PDF) -> the batch's per-page JSON, or its CSV
- ``POST /api/render``       the page as the reader loaded it, as PNG (what boxes refer to)
- ``POST /api/csv``          a per-page JSON document -> its CSV (no second reading)
- ``GET  /api/models``       which models are installed, with their labels and metrics

Every upload is streamed into a per-request ``tempfile.TemporaryDirectory`` (see
:mod:`hwr_batch.web.upload`) and checked by content. Errors are JSON ``{"detail": "<one line>"}``
with a 4xx status; an unexpected failure is logged here and answered with a bare 500.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import cv2
import numpy as np
import numpy.typing as npt
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hwr_batch import __version__, defaults
from hwr_batch.classify import Classifier, load_classifier, model_card
from hwr_batch.errors import (
    BadArguments,
    EncryptedPdf,
    HwrError,
    ModelError,
    TooLarge,
    UnreadableInput,
    UnsupportedInput,
)
from hwr_batch.normalize import normalize
from hwr_batch.records import PageResult
from hwr_batch.web.upload import IMAGE_KINDS, Upload, UploadError, receive_upload

log = logging.getLogger("hwr_batch.web")

Charset = Literal["digits", "letters", "alnum"]
CharsetQuery = Annotated[Charset, Query(description="Which model: digits, letters or alnum")]
PageQuery = Annotated[int, Query(ge=1, description="1-based page of a PDF or multi-page TIFF")]
T = TypeVar("T")

STATIC_DIR = Path(str(resources.files("hwr_batch") / "web" / "static"))

_FILE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, TIFF, BMP, GIF, WebP (or PDF where said)",
                        }
                    },
                }
            }
        },
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Corrupt or empty file, malformed request"},
    413: {"description": "Upload or page over the size limits"},
    415: {"description": "Not an accepted file type (checked by content)"},
    422: {"description": "Bad parameter (charset, page) or encrypted PDF"},
    503: {"description": "The requested model is not installed"},
}

#: Status per typed reader error; the message is the error's own one line.
_STATUS: tuple[tuple[type[HwrError], int], ...] = (
    (TooLarge, 413),
    (UnsupportedInput, 415),
    (EncryptedPdf, 422),
    (UnreadableInput, 400),
    (BadArguments, 422),
    (ModelError, 503),
)


@dataclass(frozen=True)
class WebSettings:
    """Limits and models of one app instance."""

    max_upload_bytes: int = defaults.WEB_MAX_UPLOAD_MB * 2**20
    max_pixels: int = defaults.WEB_MAX_PIXELS
    dpi: int = defaults.PDF_DPI
    max_concurrent: int = defaults.WEB_MAX_CONCURRENT
    #: charset -> bundled model name or .onnx path (tests and ``--model`` point elsewhere).
    models: dict[str, str] = field(default_factory=lambda: {c: c for c in defaults.CHARSETS})


class Alternative(BaseModel):
    label: str
    confidence: float


class CharPrediction(BaseModel):
    #: [x, y, w, h] in pixels of the uploaded image.
    bbox: list[int]
    label: str
    confidence: float
    #: Top-3 (label, confidence), best first.
    top: list[Alternative]
    #: The 28x28 model input (white ink on black) as a data: URL of a PNG.
    crop: str


class ClassifyResponse(BaseModel):
    charset: str
    model: str
    #: The labels joined, left to right.
    text: str
    #: "single": the whole image is one character; "page": the page reader found several.
    method: Literal["single", "page"]
    chars: list[CharPrediction]
    elapsed_ms: float


class ModelInfo(BaseModel):
    charset: str
    available: bool
    labels: str = ""
    name: str = ""
    metrics: Any = None
    detail: str = ""


class WebError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _hwr_status(exc: HwrError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def _scrub(message: str, upload: Upload | None) -> str:
    """Replace the server-side temporary path in a reader message by the client's file name."""
    if upload is not None:
        message = message.replace(str(upload.path), upload.filename)
        message = message.replace(str(upload.path.parent), "")
    return message


def crop_data_url(crop: npt.NDArray[np.float32]) -> str:
    """float32 (28, 28) in [0, 1] -> ``data:image/png;base64,...`` (8-bit gray)."""
    u8 = np.round(np.clip(crop, 0.0, 1.0) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", u8)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 2-D array
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def ink_box(gray: npt.NDArray[np.uint8]) -> list[int]:
    """[x, y, w, h] around everything darker than mid-grey in gray uint8 (H, W); zeros if blank."""
    ys, xs = np.nonzero(gray < 128)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


#: Height a drawing's ink is scaled to before the page reader sees it: handwriting on a 300 dpi
#: scan (5-6 mm letters). The reader's thresholds (text height, rule length, background kernel)
#: are tuned for scans, where a character is a small part of a large page; a canvas drawing is
#: the opposite (a "1" filling the canvas looks like a ruled line).
DRAWING_TEXT_PX = 64
#: The drawing is placed on white paper this many text heights on each side, so that it is a
#: small part of the page as on a scan.
DRAWING_MARGIN = 4


#: A single character needs no more than this many pixels on its longer side (the model sees 20);
#: larger uploads are shrunk first, since the normaliser's cost grows with the image (a noisy
#: 1500x1500 photo takes seconds).
CLASSIFY_MAX_SIDE = 1024


def shrink_to(gray: npt.NDArray[np.uint8], side: int) -> npt.NDArray[np.uint8]:
    """gray uint8 (H, W) shrunk (area averaging) so that max(H, W) <= side; else unchanged."""
    h, w = gray.shape
    if max(h, w) <= side:
        return gray
    f = side / max(h, w)
    small = cv2.resize(
        gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
    )
    return np.asarray(small, np.uint8)


def drawing_as_page(
    gray: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], float, tuple[int, int]]:
    """A drawing (gray uint8 (H, W), dark ink on white) as a scan-like page for the reader.

    Returns (page uint8 (H2, W2), scale, (x0, y0)): drawing pixel (u, v) is page pixel
    (x0 + u * scale, y0 + v * scale).
    """
    x, y, w, h = ink_box(gray)
    if w == 0:
        return gray, 1.0, (0, 0)
    # A wide low drawing ("---") is scaled by its width so that it does not blow up.
    scale = DRAWING_TEXT_PX / max(h, w / 8, 16)
    ink = gray[y : y + h, x : x + w]
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(ink, (new_w, new_h), interpolation=interp)
    pad = DRAWING_MARGIN * DRAWING_TEXT_PX
    page = np.full((new_h + 2 * pad, new_w + 2 * pad), 255, np.uint8)
    page[pad : pad + new_h, pad : pad + new_w] = small
    return page, scale, (pad - round(x * scale), pad - round(y * scale))


def classify_image(
    gray: npt.NDArray[np.uint8], clf: Classifier, charset: str, split: bool
) -> dict[str, Any]:
    """Classify a drawing or crop. gray: uint8 (H, W), dark ink on light paper.

    With ``split``, the page reader (preprocess, segment, classify) runs on the image first;
    when it finds two or more characters they are returned in reading order with the crops the
    model saw, and ``text`` has the reader's word spacing (a short number). Otherwise the whole
    image is one character, classified directly, so strokes the segmenter might cut apart stay
    together.
    """
    t0 = time.perf_counter()
    chars: list[dict[str, Any]] = []
    method: Literal["single", "page"] = "single"
    text = ""
    if split:
        from hwr_batch.assemble import assemble, group_lines
        from hwr_batch.pipeline import analyse_page

        page, scale, (ox, oy) = drawing_as_page(gray)
        found = analyse_page(page, clf)
        if len(found.chars) >= 2:
            method = "page"
            th = found.prep.text_height
            lines = assemble(found.canvas_boxes, found.chars, th)
            text = "\n".join(line.text for line in lines)
            for i in (i for line in group_lines(found.canvas_boxes, th) for i in line):
                ch = found.chars[i]
                b = ch.bbox
                chars.append(
                    {
                        # Back to the drawing's pixels.
                        "bbox": [
                            int(round((b.x - ox) / scale)),
                            int(round((b.y - oy) / scale)),
                            int(round(b.w / scale)),
                            int(round(b.h / scale)),
                        ],
                        "label": ch.label,
                        "confidence": float(ch.confidence),
                        "top": [{"label": lab, "confidence": p} for lab, p in ch.alternatives],
                        # The exact input the model was given for this character.
                        "crop": crop_data_url(found.seg.chars[i].image),
                    }
                )
    if method == "single":
        crop = normalize(shrink_to(gray, CLASSIFY_MAX_SIDE))
        if crop.max() > 0:
            proba = clf.predict_proba(crop[None])
            top = clf.topk(proba, defaults.TOP_K)[0]
            chars.append(
                {
                    "bbox": ink_box(gray),
                    "label": top[0][0],
                    "confidence": top[0][1],
                    "top": [{"label": lab, "confidence": p} for lab, p in top],
                    "crop": crop_data_url(crop),
                }
            )
    return {
        "charset": charset,
        "model": clf.name,
        "text": text if method == "page" else "".join(c["label"] for c in chars),
        "method": method,
        "chars": chars,
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
    }


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """Build the app. ``settings`` defaults to the bundled models and the limits in defaults."""
    cfg = settings or WebSettings()
    app = FastAPI(
        title="hwr-batch",
        version=__version__,
        description=(
            "Handwritten character recognition: classify a drawn character or short number, "
            "read a scanned page (image or PDF) into the batch's per-page JSON or CSV. "
            f"Uploads up to {cfg.max_upload_bytes / 2**20:g} MB and {cfg.max_pixels:,} pixels; "
            'file types are checked by content. Errors are JSON {"detail": message}.'
        ),
    )
    app.state.settings = cfg
    limiter: dict[str, anyio.CapacityLimiter] = {}

    async def run_cpu(fn: Callable[[], T]) -> T:
        """Run CPU-bound work in a worker thread, at most ``max_concurrent`` at a time."""
        if "cpu" not in limiter:
            limiter["cpu"] = anyio.CapacityLimiter(cfg.max_concurrent)
        return await anyio.to_thread.run_sync(fn, limiter=limiter["cpu"])

    def classifier(charset: str) -> Classifier:
        return load_classifier(cfg.models[charset])

    async def receive(request: Request, folder: Path) -> Upload:
        return await receive_upload(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            folder,
            cfg.max_upload_bytes,
        )

    async def guarded(request: Request, work: Callable[[Upload], T]) -> T:
        """Receive the upload into a fresh temporary folder and run ``work`` on it there.

        Typed errors become 4xx with their one-line message; anything else is logged with its
        traceback and answered with a bare 500.
        """
        upload: Upload | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="hwr-web-") as tmp:
                upload = await receive(request, Path(tmp))
                received = upload
                return await run_cpu(lambda: work(received))
        except (UploadError, WebError) as exc:
            raise WebError(exc.status, exc.message) from None
        except HwrError as exc:
            raise WebError(_hwr_status(exc), _scrub(str(exc), upload)) from None
        except Exception:
            log.exception("unexpected error on %s", request.url.path)
            raise WebError(500, "internal error; the server log has the details") from None

    @app.exception_handler(WebError)
    async def _web_error(_: Request, exc: WebError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        path = request.url.path
        if path == "/" or path.startswith("/static/"):
            # Our own page loads nothing from elsewhere; /docs (Swagger UI) is left alone.
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            )
        return response

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health", tags=["meta"])
    async def health() -> dict[str, Any]:
        """Liveness, version, and the limits and thresholds the page uses."""
        return {
            "status": "ok",
            "version": __version__,
            "min_confidence": defaults.MIN_CONFIDENCE,
            "max_upload_mb": cfg.max_upload_bytes / 2**20,
            "max_pixels": cfg.max_pixels,
            "charsets": list(defaults.CHARSETS),
        }

    @app.get("/api/models", tags=["meta"], response_model=list[ModelInfo])
    async def models() -> list[ModelInfo]:
        """The models behind each charset, with their labels and held-out metrics."""
        out = []
        for charset in defaults.CHARSETS:
            try:
                clf = classifier(charset)
            except HwrError as exc:
                out.append(ModelInfo(charset=charset, available=False, detail=str(exc)))
                continue
            card = model_card(clf)
            out.append(
                ModelInfo(
                    charset=charset,
                    available=True,
                    labels=clf.labels,
                    name=clf.name,
                    metrics=card.get("metrics"),
                )
            )
        return out

    @app.post(
        "/api/classify",
        tags=["recognition"],
        response_model=ClassifyResponse,
        responses=_ERRORS,
        openapi_extra=_FILE_BODY,
    )
    async def classify(
        request: Request,
        charset: CharsetQuery = "digits",
        split: Annotated[
            bool,
            Query(
                description="Segment the image with the page reader first, so a drawn short "
                "number gives one entry per character; without it the whole image is one "
                "character."
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Classify one character (a crop or a drawing): top-3 labels with confidences and the
        28x28 crop the model saw. Images only; dark ink on light paper (transparent = paper)."""

        def work(upload: Upload) -> dict[str, Any]:
            if upload.kind not in IMAGE_KINDS:
                raise WebError(
                    415, f"{upload.filename}: classify takes an image; send PDFs to /api/read"
                )
            gray = load_gray(upload, 1, cfg)
            return classify_image(gray, classifier(charset), charset, split)

        return await guarded(request, work)

    @app.post(
        "/api/read",
        tags=["recognition"],
        responses={
            200: {
                "description": "The per-page JSON (schema hwr-batch/page/v1, as the batch "
                "writes it), or with format=csv the per-page CSV. Header X-Page-Count: the "
                "number of pages in the file.",
                "content": {"application/json": {}, "text/csv": {}},
            },
            **_ERRORS,
        },
        openapi_extra=_FILE_BODY,
    )
    async def read(
        request: Request,
        charset: CharsetQuery = "digits",
        forms: Annotated[bool, Query(description="Also find and read form fields")] = False,
        page: PageQuery = 1,
        format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
    ) -> Response:
        """Read one page of a scan (image or PDF) with the page reader."""

        def work(upload: Upload) -> tuple[PageResult, int]:
            from hwr_batch.pipeline import read_page

            gray, n_pages = load_page_checked(upload, page, cfg)
            result = read_page(
                gray,
                charset,
                page=page,
                source=upload.filename,
                classifier=classifier(charset),
                forms=forms,
            )
            return result, n_pages

        result, n_pages = await guarded(request, work)
        headers = {"X-Page-Count": str(n_pages)}
        if format == "csv":
            return csv_response(result, headers)
        return JSONResponse(result.to_dict(), headers=headers)

    @app.post(
        "/api/render",
        tags=["recognition"],
        responses={
            200: {
                "description": "The page as the reader loads it, 8-bit gray PNG. Header "
                "X-Page-Count: the number of pages in the file.",
                "content": {"image/png": {}},
            },
            **_ERRORS,
        },
        openapi_extra=_FILE_BODY,
    )
    async def render(
        request: Request,
        page: PageQuery = 1,
    ) -> Response:
        """The page as loaded (PDF pages rendered), so boxes from /api/read line up with it."""

        def work(upload: Upload) -> tuple[bytes, int]:
            gray, n_pages = load_page_checked(upload, page, cfg)
            ok, buf = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:  # pragma: no cover
                raise RuntimeError("PNG encoding failed")
            return buf.tobytes(), n_pages

        png, n_pages = await guarded(request, work)
        return Response(png, media_type="image/png", headers={"X-Page-Count": str(n_pages)})

    @app.post("/api/csv", tags=["recognition"], responses={200: {"content": {"text/csv": {}}}})
    async def page_csv(
        doc: Annotated[dict[str, Any], Body(description="A per-page JSON (hwr-batch/page/v1)")],
    ) -> Response:
        """Turn a per-page JSON document (from /api/read) into the per-page CSV."""
        try:
            result = PageResult.from_dict(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise WebError(422, f"not a valid per-page JSON document: {exc}") from None
        return csv_response(result, {})

    return app


def csv_response(result: PageResult, headers: dict[str, str]) -> Response:
    """The batch's per-page CSV for ``result`` as a download."""
    from hwr_batch.export import page_csv_text

    stem = Path(result.source).stem or "page"
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    disposition = f'attachment; filename="{name}_p{result.page}.csv"'
    return Response(
        page_csv_text(result),
        media_type="text/csv; charset=utf-8",
        headers={**headers, "Content-Disposition": disposition},
    )


def load_gray(upload: Upload, page: int, cfg: WebSettings) -> npt.NDArray[np.uint8]:
    """Page ``page`` of the upload as gray uint8 (H, W), dark ink on light paper."""
    return load_page_checked(upload, page, cfg)[0]


def load_page_checked(
    upload: Upload, page: int, cfg: WebSettings
) -> tuple[npt.NDArray[np.uint8], int]:
    """(gray uint8 (H, W), number of pages) of the upload, with the page number checked."""
    from hwr_batch import load

    n_pages = load.count_pages(upload.path)
    if page > n_pages:
        raise WebError(
            422, f"{upload.filename}: page {page} asked for, the file has {n_pages} page(s)"
        )
    loaded = load.load_page(upload.path, page, dpi=cfg.dpi, max_pixels=cfg.max_pixels)
    return loaded.gray, n_pages
