"""Constants with a reason, in one place."""

from __future__ import annotations

#: Side of the model input; MNIST's convention.
MODEL_SIZE = 28
#: The glyph is fitted into a square of this side inside MODEL_SIZE, keeping its aspect ratio
#: (MNIST: "size normalized to fit in a 20x20 pixel box").
GLYPH_BOX = 20
#: Thinnest stroke, in model pixels, that the normaliser lets through. MNIST strokes are 2-3 px
#: wide at 28x28; tablet drawings (Chars74K) and fine pens scanned at 300 dpi shrink to well under
#: 1 px, which the CNN has never seen. Thinner strokes are dilated before resizing.
MIN_STROKE_PX = 1.8
#: Crops whose ink is fainter than this (0..1, after contrast stretch) count as empty.
INK_THRESHOLD = 0.2

#: Default rendering resolution for PDF pages.
PDF_DPI = 300
#: Decompression-bomb guard: a page over this many pixels is refused. An A3 page at 600 dpi is
#: about 70 Mpx; 120 Mpx leaves room for large formats without letting a 1 Gpx bomb through.
MAX_PIXELS = 120_000_000

#: Characters under this confidence go to review.csv.
MIN_CONFIDENCE = 0.80
#: Alternatives kept per character.
TOP_K = 3
#: Classification batch size: onnxruntime throughput is flat above ~256 for these small CNNs.
BATCH_SIZE = 256

#: Names of the models shipped in hwr_batch/models/.
CHARSETS = ("digits", "letters", "alnum")

#: Web app (``hwr-batch serve``): largest upload accepted. A 300 dpi A4 scan is 1-3 MB as PNG
#: and a 20-page PDF of scans well under 20 MB; larger is refused before it is read whole.
WEB_MAX_UPLOAD_MB = 20
#: Web app: largest page in pixels. An A4 page at 600 dpi is 35 Mpx; the web app reads one page
#: per request in the server's memory, so it stays well below the batch's MAX_PIXELS.
WEB_MAX_PIXELS = 40_000_000
#: Web app: pages read at once. Reading is CPU-bound; more requests than this queue up rather
#: than oversubscribe the cores.
WEB_MAX_CONCURRENT = 2

#: Dask (--scheduler): worker deaths a task may cause before the scheduler fails it with
#: KilledWorker (its ``allowed-failures``). One death can be bad luck (a node reclaimed, a
#: neighbour's memory spike) and is retried on another worker; a third death in a row is the
#: input's doing, and the batch then re-runs it alone once more before recording it. Dask's own
#: default (3) only costs an extra worker restart per poisonous input.
DASK_ALLOWED_FAILURES = 2
#: Dask: re-runs of a task that raised. Reading errors never get here (a task returns them as
#: an errors.csv record, and they are deterministic); what does is infrastructure trouble, such
#: as a worker failing to deserialise the task or a dropped connection, which one retry covers.
DASK_TASK_RETRIES = 1
#: Dask: seconds to wait for the scheduler to answer and for a first worker to join; a cluster
#: that is scaling up from zero (Kubernetes pods being scheduled) needs tens of seconds.
DASK_WAIT_FOR_WORKERS_S = 60.0
