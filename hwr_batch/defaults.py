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

#: Per-page time limit of the batch, seconds. A 300 dpi page reads in well under a second and a
#: page at MAX_PIXELS in about a minute; a page still running after this is stuck (a
#: pathological file), and the batch records it in errors.csv and goes on.
PAGE_TIMEOUT_S = 300.0
#: A page that ignores the limit (stuck inside native code, where Python cannot interrupt it)
#: ends its worker process after this many times the limit; the batch replaces the worker.
PAGE_TIMEOUT_HARD_FACTOR = 2.0

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

# --- Page reader (preprocess / segment / assemble) -------------------------------------------

#: Page analysis (background, skew, text height) runs on a copy downscaled to about this many
#: pixels on the long side: ~900 px keeps a 300 dpi character 15-25 px tall, plenty for those
#: estimates, at a sixteenth of the full page's cost.
ANALYSIS_SIDE = 900
#: Pages with large characters are analysed at a reduced scale (an integer factor, block means;
#: boxes are mapped back to page pixels): the model sees a 20-px glyph, so a character several
#: times that tall carries pixels that cost preprocessing time and help nothing. The factor is
#: the largest that keeps the estimated text height at or above ANALYSIS_MIN_TEXT_PX. 48, not
#: the ~24 the model would tolerate: preprocess and segment have pixel constants calibrated
#: at 300 dpi (BACKGROUND_KERNEL_PX, SAUVOLA_WINDOW_PX, LINE_MIN_LENGTH_PX, the 7-row rim of a
#: removed line, a 3x3 dilation), and a 300 dpi page (60-80 px characters) read at 1/2 lost
#: accuracy against them (12 generated digit pages: 95 -> 108 errors of 3,600; 6 letter pages:
#: 192 -> 223 of 1,800). With those preprocess constants divided by the factor, 1/2 measured
#: neutral (30 digit pages: 283 -> 285 errors of 9,000, 12 letter pages 402 -> 418 of 3,600,
#: 405 with the dilation at 2x2 too) at 29% less CPU a page and ~75 MB less peak RSS; until
#: preprocess takes the factor, 48 keeps 300 dpi pages at full size and reads 600 dpi pages
#: (120-160 px characters) at 1/2, in the range those constants were chosen for.
ANALYSIS_MIN_TEXT_PX = 30
#: Largest analysis factor (a 1,200 dpi page is read at 1/4, like a 300 dpi page).
ANALYSIS_MAX_SCALE = 4
#: Pages whose long side is under this (pixels) are read at full size without estimating the
#: text height (about 14 ms a page): at 300 dpi an A4 page (3,508 px) could not reach factor 2
#: unless its characters were over 96 px (a third of an inch) tall.
ANALYSIS_ESTIMATE_MIN_SIDE = 1_500
#: The text height that picks the analysis scale is estimated on a copy about this long: 450 px
#: keeps a 300 dpi character 7-10 px tall (components of 3 px and up count), and costs ~3 ms
#: against ~13 ms at ANALYSIS_SIDE; within a few pixels of preprocess's estimate.
TEXT_HEIGHT_ESTIMATE_SIDE = 450
#: Background closing size at full resolution: wider than any stroke or small loop filled with
#: ink (6-20 px at 300 dpi), narrower than the shading it must follow.
BACKGROUND_KERNEL_PX = 61
#: A page whose 90th-percentile brightness is under this has no paper to speak of (a black
#: frame, a lens cap): it is reported empty rather than thresholded into noise.
DARK_PAGE_LEVEL = 60
#: Negatives (light ink on a dark ground, see preprocess.is_negative) are read inverted. The
#: test looks at a sample of the page's pixels about NEGATIVE_SAMPLE_SIDE on its long side (every
#: 5th pixel of an A4 page at 300 dpi) and compares each with the median of a window
#: NEGATIVE_WINDOW of that side across (wider than any character): ink lighter than its ground
#: must cover NEGATIVE_MIN_INK of the sample and outnumber ink darker than its ground
#: NEGATIVE_RATIO to one.
NEGATIVE_SAMPLE_SIDE = 600
NEGATIVE_WINDOW = 0.05
NEGATIVE_MIN_INK = 0.002
NEGATIVE_RATIO = 3.0
#: Pages scanned sideways or upside down (pipeline.turn_upright): a page whose characters'
#: mean log confidence is under ORIENT_CHECK_BELOW has them classified again at each quarter
#: turn, and is read again at a turn that reads them ORIENT_MARGIN better. Generated tuning
#: pages read upright at -0.05 to -0.14 (digits to mixed), upside down at -0.30 to -0.50,
#: sideways at -0.45 to -0.84.
ORIENT_CHECK_BELOW = -0.25
ORIENT_MARGIN = 0.1
#: Only characters whose boxes are ORIENT_MIN_ASPECT to 1 / ORIENT_MIN_ASPECT wide for their
#: height vote on the turn (all of them if fewer than ORIENT_MIN_VOTERS are): the ruled lines
#: of a page lying sideways break into hundreds of thin dashes whose readings say nothing.
#: Without this, 3 of 108 turned tuning pages (ruled ones lying sideways) were not turned.
ORIENT_MIN_ASPECT = 0.3
ORIENT_MIN_VOTERS = 10
#: Dark margins outside the sheet (preprocess.outside_the_sheet): regions darker than
#: OUTSIDE_LEVEL of the paper level that reach the image's edge and cover OUTSIDE_MIN_AREA of
#: it or run along OUTSIDE_MIN_EDGE of a side are painted paper before anything else.
OUTSIDE_LEVEL = 0.5
OUTSIDE_MIN_AREA = 0.005
OUTSIDE_MIN_EDGE = 0.2
#: ... and be at least this many pixels of the small copy thick (an opening): ruled lines and
#: box borders running off the page are dark and flat too (the letters sample's rules were
#: painted over before this).
OUTSIDE_MIN_THICK = 5
#: Ink must be at least this much darker (0-255) than the flattened paper: the contrast floor that
#: keeps Otsu from splitting a blank, noisy page into "ink" and paper.
MIN_INK_CONTRAST = 40
#: Skew search range (degrees); the issue asks for +-10.
MAX_SKEW_DEG = 10.0
#: Rotations up to this are not applied: 0.15 deg moves the end of a 2,000 px line by
#: 5 px, about a stroke width, and skipping the warp saves its cost.
MIN_DESKEW_DEG = 0.15
#: Ink pixels sampled for the skew profile: the projection's shape is stable long before this.
SKEW_MAX_POINTS = 60_000
#: Tiles per side used to decide between Otsu and Sauvola.
BINARIZE_TILES = 6
#: Sauvola is chosen when the Otsu thresholds of the page's inked tiles spread over more than
#: this (0-255): flattening left uneven contrast that one global threshold cannot serve.
TILE_THRESHOLD_SPREAD = 45.0
#: Sauvola window (full-resolution px) and k: a window of about two characters, the usual k for
#: handwriting on paper.
SAUVOLA_WINDOW_PX = 101
SAUVOLA_K = 0.2
#: A ruled line or box border is a straight run of ink at least this many text heights long
#: (no handwritten stroke is that long and straight) ...
LINE_MIN_LENGTH_TEXT_HEIGHTS = 3.0
#: ... and never shorter than this (px), so a page with tiny text does not lose its strokes.
LINE_MIN_LENGTH_PX = 60
#: Gap bridged across a removed line to restore a crossing stroke, in text heights: thicker
#: than a ruled line (2-5 px at 300 dpi), thinner than the gap between two lines of text.
LINE_BRIDGE_TEXT_HEIGHTS = 0.15
#: Lines are looked for under a looser threshold than ink: this fraction of the way from the
#: ink threshold to the paper level. A faint ruled line one pixel wide falls between two pixel
#: rows wherever it steps down, and thresholds into dashes that no run of ink spans.
LINE_LOOSE_THRESHOLD = 0.5

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
#: Components smaller than this (text heights) on both sides are specks: scanner dust, JPEG
#: ringing, paper grain. A full stop at 300 dpi is larger than 0.08 of a 60-px character.
SPECK_TEXT_HEIGHTS = 0.08
#: After merging, a group under this size (text heights) on both sides is noise (a stray mark,
#: a dot with no stem to join).
NOISE_MIN_SIZE = 0.25
#: Blobs taller than this many text heights are not characters (a stamp, a photo, a margin).
NOISE_MAX_H = 3.0
#: A page with more components (after specks are dropped) than this is mostly noise; only the
#: largest are segmented. Grouping looks only at neighbours (segment.pairs_within), so time and
#: memory grow with the components, not their square: OpenCV's sheet of 5,000 handwritten
#: digits (2000x1000, ../shared/datasets/sheets, inverted) reads in 3.6-4.7 s of CPU at a peak
#: RSS of 298 MB (8.2 s and 1,978 MB with the pairwise arrays, and the 48 smallest components
#: dropped). A page of small handwriting at 300 dpi can hold well over 5,000 characters.
MAX_COMPONENTS = 20_000
#: Fragment merging (in text heights / fractions): the union of merged pieces must stay within
#: one character's size ...
MERGE_MAX_H = 1.5
MERGE_MAX_W = 1.6
#: ... pieces stacked vertically overlap by this fraction of the narrower's width and are
#: separated by at most this vertical gap (the top bar of a 5, the dot of an i) ...
MERGE_X_OVERLAP = 0.4
MERGE_Y_GAP = 0.3
#: ... pieces side by side (a stroke broken by a pen lift or a faint scan) are separated by at
#: most a hair-line gap, overlap vertically, and together are no wider than one character.
MERGE_X_GAP = 0.06
MERGE_Y_OVERLAP = 0.6
#: The union's width limit (text heights) for the recognition merge, which decides by the
#: classifier and the verifier: a broken 0 or 8 written wide is a text height across, and at
#: 0.9 its halves were never offered. 12 generated pages of each tuning seed, errors of 3,600
#: at 0.9 / 1.1 / 1.3 / 1.5 / 1.8: digits seeds 5, 6, 7: 85, 66, 70 / 78, 59, 70 / 76, 57, 69 /
#: 76, 57, 71 / 75, 57, 70; letters seed 5: 268 / 268 / 267 / 268 / 271; mixed seed 5: 364 /
#: 364 / 362 / 360 / 355; at 1.3 letters seeds 6, 7 242, 300 -> 238, 295. Digits score 6% more
#: crops a page (482 against 453).
MERGE_BESIDE_MAX_W = 1.3
#: Groups wider than this times max(height, text height) may be touching characters and go to
#: the split search (which may keep them whole; groups read at SPLIT_CONFIDENT are not searched
#: below SPLIT_ALWAYS_ASPECT, so a lower value only adds the doubtful narrow groups: a 1
#: touching a 4). On 18 generated digit pages 0.95 / 0.8 / 0.7 / 0.6 / 0.5 gave 159 / 149 /
#: 145 / 141 / 144 errors of 5,400 for 409 / 420 / 428 / 431 / 435 crops scored a page; on 9
#: letter pages 0.95 / 0.8 / 0.7 / 0.6 gave 241 / 237 / 242 / 245 errors of 2,700 for 615 /
#: 672 / 704 / 725 crops.
SPLIT_MIN_ASPECT = 0.8
#: Narrower groups (down to this times max(height, text height)) go to the split search only
#: when the verifier doubts them (P(one) under VERIFY_NARROW_BELOW), with at most
#: SPLIT_NARROW_MAX_CUTS cuts: two 1s, or a 1 leaning on a 3, make a group no wider than one
#: character. 12 generated pages of each tuning seed, errors of 3,600 at 0.8 (off) / 0.65 / 0.55
#: / 0.45 (verifier bar 0.5, 5 cuts): digits seeds 5, 6, 7, 8: 68, 52, 62, 59 / 65, 51, 61, 56
#: / 64, 51, 61, 56 / 64, 53, 61, 56, for 482 / 509 / 528 / 539 classifier crops and 294 /
#: 405 / 472 / 505 verifier crops a page. With the page-tuned digits model (bar, aspect, cuts):
#: 0.5, 0.65, 5: 63, 44, 59, 55 (511 classifier / 407 verifier crops a page); 0.8, 0.5, 1: 57,
#: 42, 58, 55 (557 / 515); 1.0, 0.55, 1: 56, 42, 56, 55 (734 / 679); 1.0, 0.5, 5: 54, 41, 55, 54
#: (883 / 840). Letters seeds 5, 6, 7 (228, 220, 263) and mixed seed 5 (361) unchanged.
SPLIT_NARROW_ASPECT = 0.5
VERIFY_NARROW_BELOW = 0.8
#: VERIFY_NARROW_BELOW for models of over SPLIT_MANY_CLASSES classes; 0: their narrow groups
#: are not searched at all. A letters model reads few narrow pairs better in two than whole:
#: at 0.8 the search split 1 of the 890 narrow groups it took on letter tuning seeds 5-7 (12
#: pages each) and 1 of 375 on mixed seed 5, for about 25 groups (75 crops) a page. Off:
#: letters 226, 214, 266 -> 226, 215, 266 errors of 3,600, mixed seed 5 337 -> 338.
VERIFY_NARROW_BELOW_MANY = 0.0
SPLIT_NARROW_MAX_CUTS = 1
#: Typical character width (text heights), for the even cut candidates.
SPLIT_CHAR_WIDTH = 0.65
#: Pieces narrower / wider than this (text heights) are not considered as one character.
SPLIT_MIN_PIECE = 0.18
SPLIT_MAX_PIECE = 1.2
#: Cut candidates kept per wide group (the pieces to score grow with the square of it).
SPLIT_MAX_CUTS = 5
#: Cost (nats of -log confidence) of each extra piece: a split must buy that much confidence.
#: Negative, a bonus: since the verifier's doubt is part of every candidate's cost (see
#: VERIFY_WEIGHT), touching pairs kept whole outnumber characters cut in two. 12 generated
#: pages of each tuning seed, errors of 3,600 at 0.3 / 0.1 / 0 / -0.3 / -0.5 / -1: digits seeds
#: 5, 6, 7: 81, 56, 75 / 72, 54, 65 / 71, 53, 64 / 68, 52, 62 / 69, 50, 62 / 72, 58, 63; seed
#: 8 at 0.1 / -0.3 / -0.5: 63 / 59 / 58. Letters and alnum use SPLIT_PENALTY_MANY. Without a
#: classifier (cuts by width alone) a negative value counts as 0.
SPLIT_PENALTY = -0.3
#: Cost per unit of width/height above 1 of a piece.
SPLIT_WIDE_COST = 0.5
#: Line grouping: a character joins a line when its vertical centre is within this many text
#: heights of the line's centre.
LINE_CENTER_TOLERANCE = 0.5
#: Word breaks: a gap wider than max(WORD_GAP_TEXT_HEIGHTS * text height, WORD_GAP_MEDIAN_FACTOR *
#: the median gap between characters of the page) starts a new word.
WORD_GAP_TEXT_HEIGHTS = 0.45
WORD_GAP_MEDIAN_FACTOR = 2.5
#: A fragment (longest side under FRAGMENT_MAX_SIZE text heights) joins a neighbour within
#: FRAGMENT_GAP text heights in both directions, if the union still fits one character.
FRAGMENT_MAX_SIZE = 0.45
FRAGMENT_GAP = 0.15
#: A split piece shorter than SPLIT_MIN_HEIGHT of its group's height pays SPLIT_SHORT_COST per
#: unit of the shortfall: touching characters are side by side, each about as tall as the group.
SPLIT_MIN_HEIGHT = 0.7
SPLIT_SHORT_COST = 6.0
#: Flat components no taller than this (text heights, at least 2 px) and three times as wide are
#: slivers of a faint ruled line, not pen strokes (a pen at 300 dpi draws 3 px or more).
SLIVER_TEXT_HEIGHTS = 0.035
#: Stacked pieces overlap in rows by at most this fraction of the shorter one: more is two
#: neighbours whose slanted boxes overlap, not a character over its fragment.
MERGE_STACK_MAX_Y_OVERLAP = 0.5
#: Two pieces side by side merge when the classifier's -log confidence of the union is below the
#: sum of the pieces' plus this (nats). Chosen on 18 generated digit pages (device sweep over
#: -0.1, 0.1, 0.3 with SPLIT_PENALTY and SPLIT_CONFIDENT): 0.1 had the fewest errors.
MERGE_BESIDE_BONUS = 0.1
#: A flat piece (under this many text heights tall: the bar of a 5 or a 7) is a fragment too.
FRAGMENT_MAX_FLAT = 0.3
#: A wide group read whole with at least this confidence is not searched for splits. On 9
#: generated digit pages 0.9 and 0.95 gave the same CER within noise (83 vs 80 errors of 2,700)
#: and 0.9 scores about 7% fewer crops a page (415 vs 446) ...
SPLIT_CONFIDENT = 0.9
#: ... unless it is wider than this (width / height): then it is always searched.
SPLIT_ALWAYS_ASPECT = 1.6
#: Crops are shrunk to this long side before normalising (the model sees a 20-px glyph; larger
#: crops only cost time in the normaliser).
NORMALIZE_MAX_SIDE = 48
#: A split piece spans at most this many intervals between neighbouring cut candidates. Spurious
#: valleys inside one character (its contour dips, the even cuts) often put four intervals under
#: it; at 3 the right two-way split of such a touching pair was never scored. On 12 generated
#: pages each of seeds 5 and 6, 3 -> 4 took digits from 133 / 117 to 121 / 103 errors of 3,600
#: and letters from 327 / 330 to 320 / 316 (with the slanted cuts below), for ~3% more crops.
SPLIT_MAX_SPAN = 4
#: Slants (columns per row) tried for each cut through touching characters, vertical first; the
#: one crossing the least ink wins. Handwriting leans up to about 20 degrees and a character
#: leaning into its neighbour leaves only a slanted line between them. On the pages above the
#: errors are those of vertical cuts within noise, but the candidates are fewer and better: 424 /
#: 710 crops a page for digits / letters against 434 / 754 with vertical cuts and span 4.
SPLIT_SLANTS = (0.0, -0.2, 0.2, -0.4, 0.4)
#: Pages larger than this (pixels) get their Sauvola threshold surface computed at half
#: resolution: a 101-px window at 300 dpi loses nothing at 150 dpi.
SAUVOLA_HALF_RES_PIXELS = 4_000_000
#: Pieces of one stroke cut across (a slanted 1 in two, an 0 opened on a diagonal) are at most
#: this far apart (text heights) in both directions; such a pair is offered to the recognition
#: merge (see MERGE_BESIDE_BONUS), which keeps it apart unless the union reads better.
MERGE_NEAR_GAP = 0.1
#: SPLIT_PENALTY for classifiers of more than SPLIT_MANY_CLASSES classes (letters, alnum): on
#: 9 generated letter pages 0.1 / 0.2 / 0.3 / 0.6 gave 263 / 247 / 241 / 261 errors of 2,700
#: (wide m and w split into n+n, v+v at 0.1; touching pairs left whole at 0.6); on 18 digit
#: pages 0.3 gave 184 errors against 159 at 0.1, so digits keep SPLIT_PENALTY.
SPLIT_MANY_CLASSES = 10
SPLIT_PENALTY_MANY = 0.3
#: Side-by-side merges (see MERGE_BESIDE_MAX_W) may also reach this times the median width of
#: the page's groups read at SPLIT_CONFIDENT (when it has MERGE_BESIDE_MIN_SURE of them):
#: letter pages write wider characters (M, W) than digit pages. On 9 generated letter pages
#: 1.2 / 1.3 / 1.5 gave 230 / 227 / 227 errors of 2,700 against 237 without; on 18 digit pages
#: 150 / 152 / 169 of 5,400 against 149; 1.2 keeps digits as they were.
MERGE_BESIDE_WIDTH_FACTOR = 1.2
MERGE_BESIDE_MIN_SURE = 20
#: The split search also asks a single-character verifier (``hwr_batch/models/verifier.onnx``,
#: built by ``hwr-train verifier``): P(the crop is exactly one whole character). A character
#: classifier reads a touching "91" as a 9 at 0.97 and half an M as an N, so its confidence
#: alone cannot prefer the right split. Set this environment variable to 0 to read without it.
VERIFIER_ENV = "HWR_SPLIT_VERIFIER"
#: Bundled verifier model name and the ``task`` its metadata must state.
VERIFIER_MODEL = "verifier"
VERIFIER_TASK = "single-character verifier"
#: Weight of the verifier's cost -log(P(one) / 0.5) in a split candidate's cost (the
#: classifier's -log confidence has weight 1). On 12 generated pages each of seeds 5 / 6
#: (character errors of 3,600; without the verifier: digits 121 / 104, letters 322 / 314),
#: 1.0 gave digits 103 / 85 and letters 285 / 272, 0.5 gave 99 / 83 and 275 / 252. With the
#: second verifier (twice the strips, 8 epochs; see verifier.md), errors of 3,600 on the 12
#: pages of each tuning seed at 0.5 / 0.35 / 0.2 / 0.1: digits seeds 5-8 53, 39, 52, 47 / 50,
#: 37, 51, 47 / 48, 33, 48, 47 / 57, 38, 53, 46; letters seeds 5-7 209, 218, 255 / 207, 215,
#: 248 / 214, 211, 241 / 219, 215, 240; mixed seed 5 at 0.2: 333. The first verifier at 0.5:
#: digits 50, 39, 55, 48, letters 226, 215, 266, mixed 338.
VERIFY_WEIGHT = 0.2
#: ... times this for the pieces of a split (the whole group keeps VERIFY_WEIGHT). A piece cut
#: from a pair that overlaps keeps a sliver of its neighbour, and the verifier doubts it even
#: when the classifier reads it right ("16" cut into a 1 at 0.97 and a 6 at 0.94, verifier
#: 0.76 and 0.01). 12 generated pages of each tuning seed, errors of 3,600 at 1 / 0.5 / 0.35:
#: digits seeds 5, 6, 7: 88, 69, 75 / 85, 66, 70 / 86, 65, 70; letters seeds 5, 6, 7 at
#: 1 / 0.5: 274, 245, 296 / 268, 242, 300; mixed seed 5: 361 / 364.
VERIFY_PIECE_FACTOR = 0.5
#: ... with P(one) floored here, so one verifier doubt cannot outweigh everything else.
VERIFY_FLOOR = 1e-3
#: A wide group read at SPLIT_CONFIDENT is searched for splits when the verifier's P(one) of it
#: is under this (VERIFY_SEARCH_BELOW_MANY for models of over SPLIT_MANY_CLASSES classes).
#: Digits seed 5 (weight 0.5): 0.2 / 0.5 / 0.7 gave 102 / 99 / 99 errors; 0.7 the same on the
#: other pages within 2 errors, for more crops searched. With the page-tuned models (0e2bb27 +
#: 2d7e677), digits seeds 5-8 at 0.5 / 0.7 / 0.9: 54, 41, 56, 52 / 51, 40, 55, 49 / 50, 39, 55,
#: 48 errors of 3,600, for 557 / 593 / 675 classifier and 515 / 550 / 633 verifier crops a
#: page; letters seeds 5, 6 226, 214 at all three, for 14 % / 25 % more CPU at 0.7 / 0.9.
VERIFY_SEARCH_BELOW = 0.9
VERIFY_SEARCH_BELOW_MANY = 0.5
#: A character the page's model reads under SECOND_OPINION_BELOW is read again by the bundled
#: model named here for it, and the two answers are blended with SECOND_OPINION_WEIGHT on the
#: second (its probabilities taken over the first model's labels, renormalised). The alnum
#: model learnt from another mix of sources with its own seed, so its mistakes are partly other
#: ones. 12 generated pages of each tuning seed, errors of 3,600 without / with (0.9, 0.5):
#: digits seeds 5, 6, 7: 76, 57, 69 / 72, 54, 65; letters 267, 238, 295 / 248, 235, 286.
#: Below 0.8 / 0.95 and weights 0.4 / 0.6 gave the same within 3 errors a set; adding the first
#: model on six small warps of the input as a third reading gave 190 / 768 against 191 / 769.
#: Several models named: the second reading is their mean. Tried and not kept: a second letters
#: model trained apart (seed 1, 96.09% held out) beside alnum took letters seeds 5, 6, 7 from
#: 226, 214, 266 to 223, 211, 256 errors, but the 100 reporting pages (seed 0) read 6.48%
#: against 6.47% at 22% fewer pages/s (results/bench_pages_100_s6_letters_second.json); a second
#: digits model beside alnum: digits seeds 5-8 50, 39, 55, 48 -> 51, 39, 57, 49.
#: Set SECOND_OPINION_ENV to 0 to read with the page's model alone.
SECOND_MODEL: dict[str, tuple[str, ...]] = {
    "digits": ("alnum",),
    "letters": ("alnum",),
}
SECOND_OPINION_BELOW = 0.9
SECOND_OPINION_WEIGHT = 0.5
SECOND_OPINION_ENV = "HWR_SECOND_OPINION"
#: Weight of the verifier's cost in the side-by-side merge (see MERGE_BESIDE_BONUS); 0 leaves
#: that merge to the classifier alone. 0.5 changed the pages above by 0 / 0 (digits) and -2 / 0
#: (letters) errors, within noise, for verifier calls on every merge candidate: off.
MERGE_VERIFY_WEIGHT = 0.0

# --- Classifier speed (int8 companions) -------------------------------------------------------

#: A model file ``NAME.onnx`` may have an int8 companion ``NAME.int8.onnx`` (static QDQ
#: quantisation of its convolutions, made by ``python -m training.export quantize``; the head and
#: softmax stay float so confidences keep their precision). The reader runs the companion first:
#: 2.4x (digits) to 3x (letters, alnum) the crops per second of the float model on one core
#: (AVX-512 VNNI). Only a companion whose ``quantized_from`` metadata is the SHA-256 of the float
#: file is used, so a retrained model never pairs with a stale companion.
INT8_SUFFIX = ".int8.onnx"
#: Set to 1 to read with the float models only (A/B checks, evaluation of the float model).
EXACT_ENV = "HWR_EXACT"
