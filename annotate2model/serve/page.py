"""The page at `/`: drop or pick an image, see it beside its top-5 classes as probability bars.

One self-contained HTML document: inline CSS and a little plain JavaScript, nothing fetched from
anywhere but this server's own API (the machines it runs on may have no network at all).
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>annotate2model</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d232b; background: #f4f6f8; }
  body { margin: 0 auto; max-width: 980px; padding: 24px; }
  h1 { font-size: 1.4rem; margin: 0 0 4px; }
  #model { color: #56606b; margin: 0 0 16px; font-size: .95rem; }
  .row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
  #drop { flex: 1 1 360px; min-height: 300px; border: 2px dashed #98a3ae; border-radius: 10px;
          background: #fff; display: flex; align-items: center; justify-content: center;
          text-align: center; cursor: pointer; position: relative; overflow: hidden; }
  #drop.over { border-color: #2f6fde; background: #eef4ff; }
  #drop img { width: 100%; height: auto; max-height: 420px; object-fit: contain; display: block; }
  #hint { color: #56606b; padding: 24px; }
  #result { flex: 1 1 360px; }
  .bar-row { margin: 0 0 10px; }
  .bar-label { display: flex; justify-content: space-between; font-size: .95rem; }
  .bar-track { height: 16px; background: #e2e6ea; border-radius: 4px; overflow: hidden; }
  .bar { height: 100%; background: #2f6fde; border-radius: 4px; }
  .bar-row:first-child .bar { background: #1b8a4b; }
  #error { color: #b3261e; white-space: pre-wrap; }
  #auth { display: none; margin: 0 0 16px; }
  select, input, button { font: inherit; }
</style>
</head>
<body>
<h1>annotate2model</h1>
<p id="model">Loading the model&hellip;</p>
<form id="auth"><label>Token <input id="token" type="password" autocomplete="off"></label>
  <button type="submit">Use token</button></form>
<p><label>Run <select id="run"></select></label></p>
<div class="row">
  <label id="drop" for="file"><span id="hint">Drop an image here, or click to pick one.</span>
    <input id="file" name="file" type="file" accept="image/*" hidden></label>
  <div id="result"><div id="bars"></div><p id="error"></p></div>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let models = [];

function headers() {
  const token = sessionStorage.getItem("a2m-token");
  return token ? { "Authorization": "Bearer " + token } : {};
}

async function call(url, options) {
  const response = await fetch(url, Object.assign({ headers: headers() }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) { $("auth").style.display = "block"; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(detail + " (HTTP " + response.status + ")");
  }
  return body;
}

function describe(m) {
  const acc = m.metrics && m.metrics.test && m.metrics.test.accuracy;
  const parts = ["run " + m.run, m.architecture || m.kind, m.labels.length + " classes",
                 "dataset version " + m.dataset_version, m.engine + " on " + m.device];
  if (typeof acc === "number") { parts.push("test accuracy " + (100 * acc).toFixed(1) + "%"); }
  return parts.join(" \\u00b7 ");
}

async function loadModels() {
  try {
    const body = await call("v1/models");
    models = body.models;
    const select = $("run");
    select.textContent = "";
    for (const m of models) {
      const option = document.createElement("option");
      option.value = String(m.run);
      option.textContent = "run " + m.run + " (" + m.labels.join(", ") + ")";
      select.appendChild(option);
    }
    select.parentElement.style.display = models.length > 1 ? "" : "none";
    showModel();
    $("auth").style.display = "none";
  } catch (e) {
    $("model").textContent = "The model could not be loaded: " + e.message;
  }
}

function showModel() {
  const m = models.find((x) => String(x.run) === $("run").value) || models[0];
  if (m) { $("model").textContent = describe(m); }
}

function showBars(top) {
  const bars = $("bars");
  bars.textContent = "";
  for (const t of top) {
    const row = document.createElement("div");
    row.className = "bar-row";
    const label = document.createElement("div");
    label.className = "bar-label";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = t.label;
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = (100 * t.probability).toFixed(1) + "%";
    label.append(name, value);
    const track = document.createElement("div");
    track.className = "bar-track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (100 * t.probability).toFixed(1) + "%";
    track.appendChild(bar);
    row.append(label, track);
    bars.appendChild(row);
  }
}

async function predict(file) {
  $("error").textContent = "";
  $("bars").textContent = "";
  const img = document.createElement("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  const drop = $("drop");
  drop.querySelectorAll("img").forEach((old) => old.remove());
  $("hint").style.display = "none";
  drop.appendChild(img);
  const form = new FormData();
  form.append("file", file, file.name);
  const run = encodeURIComponent($("run").value || "");
  try {
    const body = await call("v1/predict?top_k=5&run=" + run, { method: "POST", body: form });
    showBars(body.predictions[0].top);
  } catch (e) {
    $("error").textContent = e.message;
  }
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) { predict(e.target.files[0]); }
  e.target.value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) { predict(e.dataTransfer.files[0]); }
});
$("run").addEventListener("change", showModel);
$("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("a2m-token", $("token").value);
  loadModels();
});
loadModels();
</script>
</body>
</html>
"""


def page_html() -> str:
    return PAGE
