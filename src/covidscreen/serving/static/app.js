// The second-reader page: plain JavaScript, no build step. One request per file (so that each file gets its own
// result or inline error and progress can be shown), at most CONCURRENCY at a time.
"use strict";

const CONCURRENCY = 3;
const MAX_FILES = 20;
const state = { model: null, key: sessionStorage.getItem("covidscreen-key") || "" };
const $ = (id) => document.getElementById(id);

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

function pct(p) {
  return (100 * p).toFixed(1) + "%";
}

function fmtRate(v) {
  return v === null || v === undefined ? "n/a" : (100 * v).toFixed(0) + "%";
}

async function loadModel() {
  const res = await fetch("/v1/model", { headers: headers() });
  if (res.status === 401) {
    $("key-box").hidden = false;
    $("model-summary").textContent = "This service needs an API key.";
    return;
  }
  const body = await res.json();
  if (!res.ok) {
    $("model-summary").textContent = "Model information unavailable: " + (body.error || res.status);
    return;
  }
  state.model = body;
  $("key-box").hidden = true;
  $("model-summary").textContent = `${body.model_id} (${body.kind}, ${body.backend}); classes: ` +
    `${body.classes.join(", ")}; input ${body.image_size} px; decision on p(${body.positive_class}).`;
  const select = $("point");
  select.replaceChildren();
  for (const p of body.operating_points) {
    const opt = document.createElement("option");
    opt.value = p.name;
    opt.textContent = `${p.name} (threshold ${p.threshold === null ? "n/a" : p.threshold.toFixed(3)})`;
    if (p.name === body.default_operating_point) opt.selected = true;
    select.append(opt);
  }
  select.disabled = false;
  showPointFigures();
  const warn = $("model-warnings");
  warn.replaceChildren(...body.audit_warnings.map((w) => {
    const li = document.createElement("li");
    li.textContent = w;
    return li;
  }));
}

function showPointFigures() {
  const p = state.model && state.model.operating_points.find((x) => x.name === $("point").value);
  $("point-figures").textContent = p ? `sensitivity ${fmtRate(p.sensitivity)}, specificity ` +
    `${fmtRate(p.specificity)} (${p.source})` : "";
  // the weakest validation site next to the pooled figures: what the default costs at the hardest hospital seen
  $("point-sites").textContent = p && p.site_summary ? siteSentence(p) : "";
}

function siteSentence(p) {
  const sites = p.sites.map((f) => `${f.site} ${fmtRate(f.specificity)}` +
    (f.n_positive ? ` / sens ${fmtRate(f.sensitivity)}` : "") + ` (n=${f.n_negative + f.n_positive})`);
  return "By site: " + p.site_summary + (sites.length ? `. Specificity per site: ${sites.join("; ")}.` : "") +
    (p.note ? ` Note: ${p.note}` : "");
}

function newCard(file, before) {
  // the newest batch on top, its files in the order they were chosen
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.querySelector(".name").textContent = file.name;
  $("results").insertBefore(node, before === undefined ? $("results").firstChild : before);
  return node;
}

function showError(card, message) {
  card.querySelector(".status").hidden = true;
  const err = card.querySelector(".error");
  err.textContent = message;
  err.hidden = false;
  card.classList.add("failed");
}

function showResult(card, r) {
  card.querySelector(".status").hidden = true;
  card.querySelector(".body").hidden = false;
  const pos = state.model ? state.model.positive_class : null;
  const dec = card.querySelector(".decision");
  dec.textContent = `Decision: ${r.decision}`;
  dec.classList.add(r.decision === pos ? "positive" : "negative");
  const rule = r.threshold === undefined || r.threshold === null ? "the most probable class" :
    `${pos} when p(${pos}) ≥ ${r.threshold.toFixed(3)}, else the most probable other class`;
  const info = state.model && state.model.operating_points.find((x) => x.name === r.operating_point);
  const weakest = info && info.weakest_site ? ` Weakest validation site: specificity ` +
    `${fmtRate(info.weakest_site_specificity)} on ${info.weakest_site}.` : "";
  card.querySelector(".point").textContent = `Operating point ${r.operating_point}: ${rule}. Validation ` +
    `sensitivity ${fmtRate(r.sensitivity)}, specificity ${fmtRate(r.specificity)}.` + weakest;
  const bars = card.querySelector(".bars");
  for (const [cls, p] of Object.entries(r.probabilities)) {
    const dt = document.createElement("dt");
    dt.textContent = cls;
    const dd = document.createElement("dd");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `probability of ${cls}: ${pct(p)}`);
    const fill = document.createElement("span");
    fill.style.width = pct(p);
    if (cls === pos) fill.className = "pos";
    bar.append(fill);
    dd.append(bar);
    const val = document.createElement("dd");
    val.className = "value";
    val.textContent = pct(p);
    bars.append(dt, dd, val);
  }
  card.querySelector(".warnings").replaceChildren(...(r.warnings || []).map((w) => {
    const li = document.createElement("li");
    li.textContent = w;
    if (w.startsWith("out_of_distribution:")) li.className = "ood";
    return li;
  }));
  // unlike the images this model was validated on: the whole card says so
  if (r.in_distribution === false) card.classList.add("ood");
  const img = card.querySelector(".xray");
  const toggle = card.querySelector(".toggle");
  if (r.overlay_png) {
    const overlay = "data:image/png;base64," + r.overlay_png;
    const plain = "data:image/png;base64," + r.image_png;
    img.src = overlay;
    img.alt = `${r.filename} with Grad-CAM heatmap for class ${r.explained_class}`;
    card.querySelector(".explained").textContent = `Grad-CAM for class ${r.explained_class}`;
    toggle.addEventListener("click", () => {
      const on = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Heatmap: on" : "Heatmap: off";
      img.src = on ? overlay : plain;
      img.alt = on ? `${r.filename} with Grad-CAM heatmap for class ${r.explained_class}` : r.filename;
    });
  } else {
    card.querySelector(".picture").hidden = true;
  }
}

async function send(file, card) {
  const endpoint = state.model && !state.model.explain_available ? "/v1/predict" : "/v1/explain";
  const url = `${endpoint}?operating_point=${encodeURIComponent($("point").value || "default")}`;
  for (let attempt = 0; attempt < 4; attempt++) {
    const form = new FormData();
    form.append("files", file, file.name);
    let res;
    try {
      res = await fetch(url, { method: "POST", body: form, headers: headers() });
    } catch (e) {
      showError(card, "The service could not be reached: " + e.message);
      return;
    }
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      body = { error: `unexpected answer (HTTP ${res.status})` };
    }
    if (res.status === 503 && attempt < 3) {
      const wait = Number(res.headers.get("Retry-After") || "1");
      card.querySelector(".status").textContent = `service busy, retrying in ${wait} s…`;
      await new Promise((ok) => setTimeout(ok, 1000 * wait));
      continue;
    }
    if (res.ok) {
      showResult(card, body.results[0]);
    } else {
      showError(card, body.error || `HTTP ${res.status}`);
    }
    return;
  }
}

async function handleFiles(fileList) {
  let files = Array.from(fileList);
  if (files.length > MAX_FILES) {
    const card = newCard({ name: `${files.length} files` });
    showError(card, `Only the first ${MAX_FILES} of ${files.length} files are sent; drop the others afterwards.`);
    files = files.slice(0, MAX_FILES);
  }
  if (!files.length) return;
  const anchor = $("results").firstChild;
  const cards = files.map((f) => newCard(f, anchor));
  let done = 0;
  $("progress-box").hidden = false;
  $("progress").max = files.length;
  const update = () => {
    $("progress").value = done;
    $("progress-text").textContent = `${done} of ${files.length} done`;
  };
  update();
  let next = 0;
  async function worker() {
    while (next < files.length) {
      const i = next++;
      cards[i].querySelector(".status").textContent = "analysing…";
      await send(files[i], cards[i]);
      done++;
      update();
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, files.length) }, worker));
}

function setup() {
  const drop = $("drop");
  const input = $("files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handleFiles(e.dataTransfer.files);
  });
  input.addEventListener("change", () => {
    handleFiles(input.files);
    input.value = "";
  });
  $("point").addEventListener("change", showPointFigures);
  $("key-save").addEventListener("click", () => {
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("covidscreen-key", state.key);
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
