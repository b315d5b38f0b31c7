// hwr-batch web page: a drawing pad with live predictions, and a scan checker.
// Plain JavaScript, no build step. Talks to the JSON API of the same server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG_NS = "http://www.w3.org/2000/svg";

let config = { min_confidence: 0.8, max_upload_mb: 20 };

// One-line message out of an error response ({"detail": "..."}), or the status text.
async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

function pct(p) { return `${Math.round(p * 100)}%`; }

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---------------------------------------------------------------- tabs

function showView() {
  const which = location.hash === "#scan" ? "scan" : "draw";
  for (const name of ["draw", "scan"]) {
    $(`#view-${name}`).hidden = name !== which;
    $(`#tab-${name}`).setAttribute("aria-selected", String(name === which));
  }
}

// ---------------------------------------------------------------- drawing

const draw = {
  canvas: null,
  ctx: null,
  drawing: false,
  dirty: false,       // ink on the canvas
  last: null,
  timer: null,
  inflight: null,     // AbortController of the running request
  seq: 0,             // answers to older requests are dropped
  strokes: 0,         // finished strokes; an answer says which drawing it is for
  lastSent: 0,        // performance.now() of the last request

  init() {
    this.canvas = $("#draw-canvas");
    this.ctx = this.canvas.getContext("2d");
    this.reset();
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.down(e));
    c.addEventListener("pointermove", (e) => this.move(e));
    c.addEventListener("pointerup", (e) => this.up(e));
    c.addEventListener("pointercancel", (e) => this.up(e));
    $("#draw-clear").addEventListener("click", () => this.clear());
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("#view-draw").hidden) this.clear();
    });
    for (const r of document.querySelectorAll('input[name="draw-charset"]')) {
      r.addEventListener("change", () => this.schedule(0));
    }
  },

  reset() {
    const { ctx, canvas } = this;
    // Opaque white paper: the server reads dark ink on light paper.
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = 18;
    this.dirty = false;
  },

  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return {
      x: (e.clientX - r.left) * (this.canvas.width / r.width),
      y: (e.clientY - r.top) * (this.canvas.height / r.height),
    };
  },

  down(e) {
    e.preventDefault();
    this.canvas.setPointerCapture(e.pointerId);
    this.drawing = true;
    this.last = this.point(e);
    // A dot for a tap without movement.
    this.ctx.beginPath();
    this.ctx.arc(this.last.x, this.last.y, this.ctx.lineWidth / 2, 0, Math.PI * 2);
    this.ctx.fill();
    this.dirty = true;
  },

  move(e) {
    if (!this.drawing) return;
    e.preventDefault();
    // Coalesced events keep fast strokes smooth where the browser batches them.
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    const { ctx } = this;
    ctx.beginPath();
    ctx.moveTo(this.last.x, this.last.y);
    for (const ev of events.length ? events : [e]) {
      const p = this.point(ev);
      ctx.lineTo(p.x, p.y);
      this.last = p;
    }
    ctx.stroke();
    // While the pen keeps moving: an answer at most every 700 ms, and one 300 ms after a pause.
    if (!this.inflight && performance.now() - this.lastSent > 700) this.schedule(0);
    else this.schedule(300);
  },

  up(e) {
    if (!this.drawing) return;
    this.drawing = false;
    if (this.canvas.hasPointerCapture(e.pointerId)) this.canvas.releasePointerCapture(e.pointerId);
    this.strokes++;
    this.canvas.dataset.strokes = String(this.strokes);
    this.schedule(120);
  },

  clear() {
    clearTimeout(this.timer);
    if (this.inflight) this.inflight.abort();
    this.seq++;
    this.reset();
    this.strokes = 0;
    this.canvas.dataset.strokes = "0";
    $("#draw-text").innerHTML = "&nbsp;";
    $("#draw-meta").textContent = "";
    $("#draw-chars").replaceChildren();
    $("#draw-error").hidden = true;
    $("#draw-result").dataset.status = "empty";
  },

  charset() {
    return document.querySelector('input[name="draw-charset"]:checked').value;
  },

  // Debounce: a prediction goes out once the pen has paused for `ms`.
  schedule(ms) {
    clearTimeout(this.timer);
    if (!this.dirty) return;
    this.timer = setTimeout(() => this.predict(), ms);
  },

  async predict() {
    if (this.inflight) this.inflight.abort();
    const controller = new AbortController();
    this.inflight = controller;
    const seq = ++this.seq;
    const strokes = this.strokes;
    this.lastSent = performance.now();
    const result = $("#draw-result");
    result.dataset.status = "busy";
    const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("file", blob, "drawing.png");
    const url = `/api/classify?charset=${encodeURIComponent(this.charset())}&split=true`;
    try {
      const resp = await fetch(url, { method: "POST", body: form, signal: controller.signal });
      if (seq !== this.seq) return;
      if (!resp.ok) throw new Error(await errorMessage(resp));
      this.show(await resp.json());
      result.dataset.strokes = String(strokes);
      $("#draw-error").hidden = true;
      result.dataset.status = "done";
    } catch (err) {
      if (err.name === "AbortError" || seq !== this.seq) return;
      $("#draw-error").textContent = err.message;
      $("#draw-error").hidden = false;
      result.dataset.status = "error";
    } finally {
      if (this.inflight === controller) this.inflight = null;
    }
  },

  show(data) {
    $("#draw-text").textContent = data.text || "\u00a0";
    $("#draw-text").dataset.text = data.text;
    $("#draw-meta").textContent =
      `${data.model} · ${data.method === "page" ? `${data.chars.length} characters` : "one character"} · ${Math.round(data.elapsed_ms)} ms`;
    const cards = data.chars.map((ch) => {
      const card = el("div", { class: "card" });
      const fig = el("div");
      fig.append(el("img", { src: ch.crop, alt: `28x28 input for ${ch.label}`, class: "crop" }));
      fig.append(el("div", { class: "crop-cap" }, "model input"));
      const rows = el("div", { class: "topk" });
      for (const alt of ch.top) {
        const row = el("div", { class: "row" });
        row.append(el("span", { class: "lab" }, alt.label));
        const bar = el("span", { class: "bar" });
        const fill = el("i");
        fill.style.width = pct(alt.confidence);
        bar.append(fill);
        row.append(bar, el("span", { class: "pct" }, pct(alt.confidence)));
        rows.append(row);
      }
      card.append(fig, rows);
      return card;
    });
    $("#draw-chars").replaceChildren(...cards);
  },
};

// ---------------------------------------------------------------- scan checker

const scan = {
  file: null,
  doc: null,        // the last per-page JSON
  pages: 1,
  seq: 0,

  init() {
    $("#scan-file").addEventListener("change", (e) => {
      if (e.target.files.length) this.open(e.target.files[0]);
    });
    const zone = $("#scan-drop");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      if (e.dataTransfer.files.length) this.open(e.dataTransfer.files[0]);
    });
    $("#scan-charset").addEventListener("change", () => this.run());
    $("#scan-forms").addEventListener("change", () => this.run());
    $("#scan-page").addEventListener("change", () => this.run());
    $("#scan-json").addEventListener("click", () => this.downloadJson());
    $("#scan-csv").addEventListener("click", () => this.downloadCsv());
    const overlay = $("#scan-overlay");
    overlay.addEventListener("mousemove", (e) => this.hover(e));
    overlay.addEventListener("mouseleave", () => this.hover(null));
  },

  open(file) {
    this.file = file;
    this.pages = 1;
    $("#scan-page").replaceChildren(el("option", { value: "1" }, "1"));
    $("#scan-page-wrap").hidden = true;
    this.run();
  },

  status(text) { $("#scan-status").textContent = text; },

  fail(message) {
    $("#scan-error").textContent = message;
    $("#scan-error").hidden = false;
    $("#scan-drop").dataset.status = "error";
    this.status("Could not read this file.");
  },

  async post(path, params) {
    const form = new FormData();
    form.append("file", this.file, this.file.name);
    const resp = await fetch(`${path}?${new URLSearchParams(params)}`, { method: "POST", body: form });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    return resp;
  },

  async run() {
    if (!this.file) return;
    const seq = ++this.seq;
    const page = $("#scan-page").value || "1";
    const params = {
      charset: $("#scan-charset").value,
      forms: String($("#scan-forms").checked),
      page,
    };
    $("#scan-error").hidden = true;
    $("#scan-drop").dataset.status = "busy";
    $("#scan-json").disabled = $("#scan-csv").disabled = true;
    this.status(`Reading ${this.file.name}…`);
    const t0 = performance.now();
    try {
      const [imgResp, readResp] = await Promise.all([
        this.post("/api/render", { page }),
        this.post("/api/read", params),
      ]);
      const [png, doc] = await Promise.all([imgResp.blob(), readResp.json()]);
      if (seq !== this.seq) return;
      this.setPages(Number(readResp.headers.get("X-Page-Count") || "1"), Number(page));
      await this.showImage(png);
      this.doc = doc;
      this.render(doc, performance.now() - t0);
      $("#scan-json").disabled = $("#scan-csv").disabled = false;
      $("#scan-drop").dataset.status = "done";
    } catch (err) {
      if (seq === this.seq) this.fail(err.message);
    }
  },

  setPages(n, current) {
    this.pages = n;
    const sel = $("#scan-page");
    if (sel.options.length !== n) {
      sel.replaceChildren(...Array.from({ length: n }, (_, i) =>
        el("option", { value: String(i + 1) }, String(i + 1))));
    }
    sel.value = String(current);
    $("#scan-page-count").textContent = `of ${n}`;
    $("#scan-page-wrap").hidden = n < 2;
  },

  showImage(blob) {
    const img = $("#scan-img");
    const old = img.src;
    return new Promise((resolve, reject) => {
      img.onload = () => { if (old.startsWith("blob:")) URL.revokeObjectURL(old); resolve(); };
      img.onerror = () => reject(new Error("the page image could not be shown"));
      img.src = URL.createObjectURL(blob);
      $("#scan-placeholder").hidden = true;
      $("#scan-stage").hidden = false;
    });
  },

  render(doc, ms) {
    const overlay = $("#scan-overlay");
    overlay.setAttribute("viewBox", `0 0 ${doc.width} ${doc.height}`);
    overlay.setAttribute("preserveAspectRatio", "none");
    const chars = [];
    for (const line of doc.lines) for (const word of line.words) for (const ch of word.chars) chars.push(ch);
    const heights = chars.map((c) => c.bbox[3]).sort((a, b) => a - b);
    const charH = heights.length ? heights[Math.floor(heights.length / 2)] : doc.height / 40;
    const fontSize = Math.max(10, Math.round(charH * 0.55));
    const strokeW = Math.max(1.5, doc.width / 900);
    const nodes = [];
    this.flat = chars;
    chars.forEach((ch, i) => {
      const [x, y, w, h] = ch.bbox;
      const low = ch.confidence < config.min_confidence;
      const g = svg("g", { class: low ? "char low" : "char", "data-i": i });
      g.append(svg("rect", { class: "char-box", x, y, width: w, height: h, "stroke-width": strokeW }));
      g.append(svg("text", {
        class: "char-label", x, y: y - fontSize * 0.2, "font-size": fontSize,
        "stroke-width": fontSize / 6,
      }, ch.label));
      nodes.push(g);
    });
    for (const f of doc.fields || []) {
      const [x, y, w, h] = f.bbox;
      const g = svg("g", { class: "field" });
      g.append(svg("rect", { class: "field-box", x, y, width: w, height: h, "stroke-width": strokeW * 1.5 }));
      g.append(svg("text", {
        class: "field-label", x, y: y + h + fontSize, "font-size": fontSize * 0.8,
        "stroke-width": fontSize / 7,
      }, `${f.name}: ${f.value}${f.needs_review ? " ⚑" : ""}`));
      nodes.push(g);
    }
    overlay.replaceChildren(...nodes);

    this.status(`${doc.source} · page ${doc.page} of ${this.pages} · ${doc.charset}`);
    $("#scan-summary").hidden = false;
    $("#scan-nchars").textContent = String(doc.n_chars);
    $("#scan-meanconf").textContent = doc.mean_confidence === null ? "–" : pct(doc.mean_confidence);
    $("#scan-skew").textContent = `${doc.skew_angle.toFixed(1)}°`;
    $("#scan-time").textContent = `${(ms / 1000).toFixed(2)} s`;
    $("#scan-warnings").replaceChildren(...doc.warnings.map((w) => el("li", {}, w)));
    $("#scan-text").textContent = doc.text || "(no characters found)";

    const fields = doc.fields || [];
    $("#scan-fields").hidden = $("#scan-fields-head").hidden = fields.length === 0;
    $("#scan-fields tbody").replaceChildren(...fields.map((f) => {
      const tr = el("tr");
      tr.append(el("td", {}, f.name),
        el("td", f.needs_review ? { class: "review", title: "needs review" } : {}, f.value),
        el("td", {}, pct(f.confidence)));
      return tr;
    }));
  },

  hover(e) {
    const tip = $("#scan-tip");
    for (const g of document.querySelectorAll("#scan-overlay .char.active")) g.classList.remove("active");
    const g = e && e.target.closest ? e.target.closest(".char") : null;
    if (!g) { tip.hidden = true; return; }
    g.classList.add("active");
    const ch = this.flat[Number(g.dataset.i)];
    const table = el("table");
    for (const alt of ch.alternatives) {
      const tr = el("tr");
      tr.append(el("td", {}, alt.label), el("td", {}, pct(alt.confidence)));
      table.append(tr);
    }
    const [x, y, w, h] = ch.bbox;
    tip.replaceChildren(el("div", {}, `box ${x},${y} ${w}×${h}`), table);
    tip.hidden = false;
    tip.style.left = `${e.clientX + 14}px`;
    tip.style.top = `${e.clientY + 14}px`;
  },

  stem() {
    const base = (this.doc.source || "page").replace(/\.[^.]+$/, "");
    return `${base}_p${this.doc.page}`;
  },

  downloadJson() {
    if (!this.doc) return;
    const text = JSON.stringify(this.doc, null, 1) + "\n";
    download(new Blob([text], { type: "application/json" }), `${this.stem()}.json`);
  },

  async downloadCsv() {
    if (!this.doc) return;
    try {
      const resp = await fetch("/api/csv", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(this.doc),
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      download(await resp.blob(), `${this.stem()}.csv`);
    } catch (err) {
      this.fail(err.message);
    }
  },
};

// ---------------------------------------------------------------- start

window.addEventListener("hashchange", showView);
document.addEventListener("DOMContentLoaded", async () => {
  showView();
  draw.init();
  scan.init();
  try {
    const resp = await fetch("/api/health");
    if (resp.ok) config = { ...config, ...(await resp.json()) };
  } catch (_) { /* defaults stay */ }
});
