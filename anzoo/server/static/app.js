// The anzoo web page: pick or drop an image, POST it to /segment (polygons), draw the result.
"use strict";

// Same colours, in the same order, as anzoo.visualize.PALETTE.
const PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [255, 187, 120],
  [152, 223, 138], [255, 152, 150], [197, 176, 213], [0, 128, 128], [128, 128, 0],
  [0, 0, 230], [230, 0, 230], [0, 200, 90], [250, 190, 0], [120, 60, 220],
];

const $ = (id) => document.getElementById(id);
let currentFile = null;

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
}

function rgb(c, alpha) {
  return alpha === undefined ? `rgb(${c[0]}, ${c[1]}, ${c[2]})` : `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${alpha})`;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.message || body.error || response.statusText;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  try {
    const response = await fetch("models");
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    const select = $("model");
    select.innerHTML = "";
    for (const m of body.models) {
      const option = document.createElement("option");
      option.value = m.id;
      const ap = m.zoo && m.zoo.mask_ap != null ? ` (mask AP ${m.zoo.mask_ap})` : "";
      option.textContent = m.id + ap;
      option.selected = m.default;
      select.appendChild(option);
    }
    setState("idle", "Pick or drop an image.");
  } catch (e) {
    setState("error", `Cannot list the models: ${e.message}`);
  }
}

function drawResult(bitmap, result) {
  const canvas = $("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const line = Math.max(1, Math.round(Math.max(canvas.width, canvas.height) / 400));
  const fontSize = Math.max(10, Math.min(36, Math.round(Math.max(canvas.width, canvas.height) / 40)));
  // Lowest score first so that the most confident instance ends up on top.
  const order = result.instances.map((_, i) => i).reverse();
  for (const i of order) {
    const inst = result.instances[i];
    const colour = PALETTE[i % PALETTE.length];
    ctx.fillStyle = rgb(colour, 0.5);
    for (const polygon of inst.mask || []) {
      if (polygon.length < 6) continue;
      ctx.beginPath();
      ctx.moveTo(polygon[0], polygon[1]);
      for (let k = 2; k < polygon.length; k += 2) ctx.lineTo(polygon[k], polygon[k + 1]);
      ctx.closePath();
      ctx.fill();
    }
    const [x, y, w, h] = inst.bbox;
    ctx.lineWidth = line;
    ctx.strokeStyle = rgb(colour);
    ctx.strokeRect(x, y, w, h);
  }
  ctx.font = `${fontSize}px sans-serif`;
  ctx.textBaseline = "top";
  for (const i of order) {
    const inst = result.instances[i];
    const colour = PALETTE[i % PALETTE.length];
    const text = `${inst.category_name} ${inst.score.toFixed(2)}`;
    const width = ctx.measureText(text).width + 2 * line;
    const height = fontSize + 2 * line;
    const [x, y] = inst.bbox;
    const tx = Math.min(Math.max(0, x), Math.max(0, canvas.width - width));
    let ty = y - height >= 0 ? y - height : y;
    ty = Math.min(Math.max(0, ty), Math.max(0, canvas.height - height));
    ctx.fillStyle = rgb(colour);
    ctx.fillRect(tx, ty, width, height);
    const lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2];
    ctx.fillStyle = lum > 140 ? "#000" : "#fff";
    ctx.fillText(text, tx + line, ty + line);
  }
}

function listInstances(result) {
  const list = $("instances");
  list.innerHTML = "";
  result.instances.forEach((inst, i) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = rgb(PALETTE[i % PALETTE.length]);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = inst.category_name;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = ` ${inst.score.toFixed(3)}`;
    item.append(swatch, name, score);
    list.appendChild(item);
  });
  $("count").textContent = `(${result.instances.length})`;
  const t = result.timing;
  $("timing").textContent =
    `${result.model} · ${result.width}×${result.height} · decode ${t.decode_ms.toFixed(0)} ms · ` +
    `inference ${t.inference_ms.toFixed(0)} ms (batch of ${t.batch_size}) · total ${t.total_ms.toFixed(0)} ms`;
}

async function run() {
  if (!currentFile) return;
  const scoreThr = $("score-thr").value || "0.3";
  const params = new URLSearchParams({ model: $("model").value, score_thr: scoreThr, mask_format: "polygon" });
  const form = new FormData();
  form.append("image", currentFile, currentFile.name || "image");
  $("run").disabled = true;
  setState("running", `Segmenting ${currentFile.name || "the image"}…`);
  try {
    const [response, bitmap] = await Promise.all([
      fetch(`segment?${params}`, { method: "POST", body: form, headers: authHeaders() }),
      createImageBitmap(currentFile).catch(() => null),
    ]);
    if (!response.ok) {
      if (response.status === 401) $("auth").open = true;
      throw new Error(await errorMessage(response));
    }
    const result = await response.json();
    if (!bitmap) throw new Error("the browser cannot display this image");
    drawResult(bitmap, result);
    listInstances(result);
    const n = result.instances.length;
    setState("done", `${n} instance${n === 1 ? "" : "s"} found.`);
  } catch (e) {
    setState("error", `Error: ${e.message}`);
  } finally {
    $("run").disabled = false;
  }
}

function pick(file) {
  if (!file) return;
  currentFile = file;
  run();
}

$("file").addEventListener("change", (e) => pick(e.target.files[0]));
$("run").addEventListener("click", run);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pick(e.dataTransfer.files[0]);
});
loadModels();
