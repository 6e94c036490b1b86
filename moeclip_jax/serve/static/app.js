// moeclip-jax inspection page: plain JS, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,          // GET /v1/model
  items: [],            // one per uploaded image
  threshold: null,      // the slider's value (null: none yet)
  calibrated: null,     // the calibrated threshold of the class
  nextId: 0,
};
const PARALLEL = 4;     // requests in flight; the server batches them
let running = 0;
const queue = [];

function fmt(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(4);
}

function currentClass() {
  const m = state.model;
  if (!m) return "";
  return m.open_vocabulary ? $("class-input").value.trim()
                           : $("class-select").value;
}

// ---- model facts and the class selector ----
async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    state.model = await r.json();
  } catch (e) {
    $("model").textContent = "server unreachable: " + e;
    return;
  }
  const m = state.model;
  $("model").textContent = `${m.method} · ${m.image_size}px · ` +
      `${m.protocol} · v${m.version}` + (m.ready ? "" : " · warming up");
  const select = $("class-select"), input = $("class-input");
  if (m.open_vocabulary) {
    select.hidden = true;
    input.hidden = false;
    $("class-list").innerHTML = "";
    for (const c of m.calibrated_classes || []) {
      const o = document.createElement("option");
      o.value = c;
      $("class-list").appendChild(o);
    }
  } else {
    input.hidden = true;
    select.hidden = false;
    const keep = select.value;
    select.innerHTML = "";
    for (const c of m.classes) {
      const o = document.createElement("option");
      o.value = o.textContent = c;
      select.appendChild(o);
    }
    if (keep && m.classes.includes(keep)) select.value = keep;
  }
  $("prompts").hidden = m.prompt_shots === null;
  if (m.prompt_shots !== null) {
    const missing = Object.keys(m.not_ready || {});
    $("prompt-status").textContent = `K = ${m.prompt_shots}; ` +
        (missing.length ? "no prompt set yet for: " + missing.join(", ")
                        : "every served class has prompts");
  }
  classChanged();
  if (!m.ready) setTimeout(loadModel, 1000);
}

function classChanged() {
  const thr = (state.model.thresholds || {})[currentClass()];
  state.calibrated = thr === undefined ? null : thr;
  if (state.calibrated !== null) setThreshold(state.calibrated);
  else rescale();
}

// ---- threshold slider (decisions re-coloured here, no recompute) ----
function setThreshold(value) {
  state.threshold = value;
  rescale();
  $("threshold").value = value;
  render();
}

function rescale() {
  const values = state.items.filter((i) => i.score !== undefined)
                            .map((i) => i.score);
  if (state.threshold !== null) values.push(state.threshold);
  if (!values.length) return;
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = (hi - lo) * 0.1 || Math.max(Math.abs(hi) * 0.1, 0.05);
  lo -= pad; hi += pad;
  const s = $("threshold");
  s.min = lo; s.max = hi; s.step = (hi - lo) / 1000;
  if (state.threshold === null) {
    state.threshold = (lo + hi) / 2;
  }
  s.value = state.threshold;
}

function decisionOf(item) {
  if (item.score === undefined || state.threshold === null) return null;
  return item.score >= state.threshold;
}

// ---- uploads ----
function addFiles(files) {
  for (const file of files) {
    // Every file is sent, images or not: the server names the problem.
    const item = {id: state.nextId++, name: file.name, file,
                  cls: currentClass(), url: URL.createObjectURL(file)};
    state.items.push(item);
    makeCard(item);
    queue.push(item);
  }
  pump();
  render();
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const item = queue.shift();
    running++;
    score(item).finally(() => { running--; pump(); });
  }
}

async function score(item) {
  const form = new FormData();
  form.append("images", item.file, item.name);
  if (item.cls) form.append("class_name", item.cls);
  form.append("threshold", "auto");
  form.append("return_map", "png");
  form.append("map_size", "512");
  try {
    const r = await fetch("/v1/predict", {method: "POST", body: form});
    const body = await r.json();
    const res = body.error ? body : body.results[0];
    if (res.error) {
      item.error = res.error;
    } else {
      item.score = res.score;
      item.serverThreshold = res.threshold;
      item.timings = res.timings;
      item.heat = await loadImage("data:image/png;base64," + res.map_png);
      if (state.threshold === null && res.threshold !== null) {
        state.calibrated = res.threshold;
        state.threshold = res.threshold;
      }
    }
  } catch (e) {
    item.error = {code: "network", message: String(e)};
  }
  rescale();
  render();
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error("cannot display " + src.slice(0, 40)));
    im.src = src;
  });
}

// ---- gallery ----
function makeCard(item) {
  const card = document.createElement("div");
  card.className = "card";
  card.dataset.id = item.id;
  card.dataset.state = "pending";
  card.innerHTML = `<canvas></canvas><div class="meta">
      <div class="name"></div><div class="score"></div>
      <div class="decision"></div><div class="error"></div></div>`;
  card.querySelector(".name").textContent = item.name;
  card.querySelector(".name").title = item.name;
  card.querySelector(".score").textContent = "scoring…";
  item.card = card;
  loadImage(item.url).then((im) => { item.img = im; draw(item); })
      .catch(() => {});
  $("gallery").appendChild(card);
}

function draw(item) {
  const canvas = item.card.querySelector("canvas");
  if (!item.img) return;
  const w = item.img.naturalWidth, h = item.img.naturalHeight;
  const scale = Math.min(1, 480 / Math.max(w, h)) || 1;
  canvas.width = Math.max(1, Math.round(w * scale));
  canvas.height = Math.max(1, Math.round(h * scale));
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(item.img, 0, 0, canvas.width, canvas.height);
  if (item.heat) {
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage(item.heat, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    item.card.dataset.overlay = "1";
  }
}

function render() {
  const sorted = [...state.items].sort((a, b) => {
    const sa = a.score === undefined ? -Infinity : a.score;
    const sb = b.score === undefined ? -Infinity : b.score;
    return sb - sa || a.id - b.id;
  });
  const gallery = $("gallery");
  let anomalous = 0, done = 0, failed = 0;
  for (const item of sorted) {
    const card = item.card;
    const d = decisionOf(item);
    card.classList.toggle("anomalous", d === true);
    card.classList.toggle("normal", d === false);
    card.classList.toggle("failed", !!item.error);
    if (item.error) {
      failed++;
      card.dataset.state = "error";
      card.querySelector(".score").textContent = "";
      card.querySelector(".error").textContent =
          `${item.error.code}: ${item.error.message}`;
    } else if (item.score !== undefined) {
      done++;
      if (d) anomalous++;
      card.dataset.state = "done";
      card.dataset.score = item.score;
      card.querySelector(".score").textContent = "score " + fmt(item.score);
      card.querySelector(".decision").textContent =
          d === null ? "" : (d ? "anomalous" : "normal");
      draw(item);
    }
    gallery.appendChild(card);  // re-ordered by score
  }
  $("threshold-value").textContent = fmt(state.threshold);
  $("summary").textContent = state.items.length ?
      `${done} scored · ${anomalous} anomalous · ${failed} failed` +
      (queue.length + running ? ` · ${queue.length + running} pending` : "")
      : "no images yet";
}

// ---- downloads ----
function rows() {
  return state.items.map((i) => ({
    name: i.name, class_name: i.cls || null,
    score: i.score === undefined ? null : i.score,
    threshold: state.threshold,
    is_anomalous: decisionOf(i),
    server_threshold: i.serverThreshold === undefined ? null
                                                      : i.serverThreshold,
    error: i.error ? `${i.error.code}: ${i.error.message}` : null,
  }));
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type}));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function toCsv(list) {
  if (!list.length) return "";
  const keys = Object.keys(list[0]);
  return [keys.join(",")].concat(
      list.map((r) => keys.map((k) => csvCell(r[k])).join(","))).join("\n") +
      "\n";
}

// ---- prompt images (few-shot detectors) ----
async function uploadPrompts(files) {
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  const cls = currentClass();
  if (cls) form.append("class_name", cls);
  $("prompt-status").textContent = "uploading…";
  try {
    const r = await fetch("/v1/prompts", {method: "POST", body: form});
    const body = await r.json();
    $("prompt-status").textContent = body.error ?
        `${body.error.code}: ${body.error.message}` :
        `prompt set for ${body.class_name || "every class"}: ` +
        body.images.join(", ");
    if (!body.error) await loadModel();
  } catch (e) {
    $("prompt-status").textContent = String(e);
  }
}

// ---- wiring ----
function dropZone(el, onFiles) {
  el.addEventListener("dragover", (e) => {
    e.preventDefault(); el.classList.add("over");
  });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault(); el.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

dropZone($("drop"), addFiles);
dropZone($("prompts"), uploadPrompts);
$("files").addEventListener("change", (e) => {
  addFiles([...e.target.files]); e.target.value = "";
});
$("prompt-files").addEventListener("change", (e) => {
  uploadPrompts([...e.target.files]); e.target.value = "";
});
$("threshold").addEventListener("input", (e) => {
  state.threshold = Number(e.target.value);
  render();
});
$("threshold-reset").addEventListener("click", () => {
  if (state.calibrated !== null) setThreshold(state.calibrated);
});
$("opacity").addEventListener("input", () => state.items.forEach(draw));
$("class-select").addEventListener("change", classChanged);
$("class-input").addEventListener("change", classChanged);
$("download-csv").addEventListener("click",
    () => download("moeclip_results.csv", toCsv(rows()), "text/csv"));
$("download-json").addEventListener("click",
    () => download("moeclip_results.json",
                   JSON.stringify(rows(), null, 2), "application/json"));
$("clear").addEventListener("click", () => {
  state.items = [];
  $("gallery").innerHTML = "";
  render();
});
loadModel();
