// XraySyn viewer page: upload a radiograph, poll its computation, then show every cached view from memory.
// No libraries, no network access beyond this server. document.body.dataset.state tells where the page is:
// idle | uploading | computing | loading | ready | error (the browser test waits on it).
"use strict";

const POLL_MS = 250;            // study status polling while it computes
const PLAY_FRAME_MS = 120;      // one azimuth step while playing
const KEEPALIVE_MS = 60000;     // the server ends sessions idle for 30 min; an open page stays alive
const WINDOW_PER_PIXEL = 0.5;   // window/level change (display levels of 0..255) per dragged CSS pixel
const MIN_WINDOW = 1;           // narrowest window width, display levels
const FULL_WINDOW = 255;        // the images are 8-bit: width 255, level 127.5 shows them as sent
const INPUT_VIEW_KINDS = ["original", "bone", "suppressed"];
const PER_VIEW_KINDS = ["novel", "novel_suppressed", "unrefined"];
const KEY_KINDS = ["original", "novel", "unrefined", "bone", "suppressed", "novel_suppressed"];  // keys 1-6
const KIND_LABELS = {
  original: "original (input crop)", novel: "novel view (XraySyn)", unrefined: "unrefined 3DPN view",
  bone: "bone image (scaled to its maximum)", suppressed: "bone-suppressed",
  novel_suppressed: "novel view, bone-suppressed (bone attenuating as soft tissue)",
};

const $ = (id) => document.getElementById(id);
const state = {
  info: null, study: null, images: new Map(), kind: "novel", az: 10, el: 0,
  width: FULL_WINDOW, level: FULL_WINDOW / 2, playing: null, playStep: 1,
};

function setState(name) { document.body.dataset.state = name; }

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function showProgress(fraction, text) {
  $("progress-box").hidden = fraction === null;
  if (fraction !== null) { $("progress").value = fraction; $("stage").textContent = text; }
}

function formatDeg(value) { return (value >= 0 ? "+" : "") + value.toFixed(1) + "°"; }

async function apiJson(response) {
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status} ${response.statusText}`);
  }
  return body;
}

// ---------------------------------------------------------------- session
async function loadInfo() {
  const info = await apiJson(await fetch("/api/info", { cache: "no-store" }));
  state.info = info;
  $("model-info").textContent = `${info.model} · weights ${info.weights} · ${info.image_size} px · ` +
    `azimuth ${formatDeg(info.azimuth_deg[0])}…${formatDeg(info.azimuth_deg[info.azimuth_deg.length - 1])}`;
  return info;
}

function endSession() { navigator.sendBeacon("/api/session/end"); }

// ---------------------------------------------------------------- upload and computation
async function openFile(file) {
  if (!file) return;
  stopPlaying();
  showMessage("");
  const info = state.info || await loadInfo();
  if (file.size > info.max_upload_bytes) {
    const mb = (bytes) => (bytes / 1048576).toFixed(1);
    showMessage(`${file.name}: ${mb(file.size)} MB is larger than the upload limit of ` +
                `${mb(info.max_upload_bytes)} MB`);
    setState("error");
    return;
  }
  if (file.size === 0) { showMessage(`${file.name}: the file is empty`); setState("error"); return; }
  setState("uploading");
  showProgress(0, `uploading ${file.name}…`);
  const query = new URLSearchParams({
    filename: file.name, check_view: $("check-view").checked ? "1" : "0",
    elevation: $("elevation-sweep").checked ? "1" : "0",
  });
  try {
    const study = await apiJson(await fetch(`/api/upload?${query}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    }));
    setState("computing");
    await followStudy(study.id);
  } catch (error) {
    showProgress(null);
    showMessage(error.message);
    setState("error");
  }
}

async function followStudy(id) {
  for (;;) {
    const status = await apiJson(await fetch(`/api/study/${id}`, { cache: "no-store" }));
    if (status.state === "error") throw new Error(`${status.name}: ${status.error}`);
    if (status.state === "done") { await showStudy(status); return; }
    showProgress(status.progress, status.stage);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function decodePng(url) {
  const blob = await (await fetch(url)).blob();
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width; canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const gray = new Uint8ClampedArray(bitmap.width * bitmap.height);
  for (let i = 0; i < gray.length; i++) gray[i] = rgba[4 * i];
  return { width: bitmap.width, height: bitmap.height, gray };
}

async function showStudy(status) {
  setState("loading");
  const views = status.azimuth_deg.length * status.elevation_deg.length;
  const wanted = INPUT_VIEW_KINDS.map((kind) => [kind, 0]);
  for (let v = 0; v < views; v++) for (const kind of PER_VIEW_KINDS) wanted.push([kind, v]);
  const images = new Map();
  let loaded = 0;
  await Promise.all(wanted.map(async ([kind, index]) => {
    images.set(`${kind}/${index}`, await decodePng(`/api/study/${status.id}/image/${kind}/${index}`));
    loaded += 1;
    showProgress(loaded / wanted.length, `loading views ${loaded} of ${wanted.length}`);
  }));
  state.study = status;
  state.images = images;
  state.az = status.azimuth_deg.indexOf(0) >= 0 ? status.azimuth_deg.indexOf(0) : 0;
  state.el = status.elevation_deg.indexOf(0) >= 0 ? status.elevation_deg.indexOf(0) : 0;
  setupSliders(status);
  resetWindow();
  for (const id of ["kind-box", "view-box", "window-box"]) $(id).disabled = false;
  $("placeholder").hidden = true;
  showProgress(null);
  render();
  setState("ready");
  followFiles(status);
}

async function followFiles(status) {
  // The download files are written after the views are shown.
  const list = $("downloads");
  list.textContent = "";
  $("download-box").disabled = false;
  const links = {};
  for (const [name, about] of Object.entries(state.info.downloads)) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.textContent = name; link.className = "pending"; link.download = "";
    link.href = `/api/study/${status.id}/download/${name}`;
    const note = document.createElement("small");
    note.textContent = about;
    item.append(link, note);
    list.append(item);
    links[name] = link;
  }
  for (;;) {
    if (!state.study || state.study.id !== status.id) return;
    const now = await apiJson(await fetch(`/api/study/${status.id}`, { cache: "no-store" }));
    $("files-state").textContent = now.files === "ready" ? "" : `(${now.files})`;
    if (now.files !== "writing") {
      for (const name of now.downloads || []) if (links[name]) links[name].className = "";
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2 * POLL_MS));
  }
}

// ---------------------------------------------------------------- display
function setupSliders(status) {
  const az = $("azimuth"), el = $("elevation");
  az.max = String(status.azimuth_deg.length - 1); az.value = String(state.az);
  el.max = String(status.elevation_deg.length - 1); el.value = String(state.el);
  $("elevation-row").hidden = status.elevation_deg.length < 2;
}

function currentImage() {
  if (!state.study) return null;
  if (INPUT_VIEW_KINDS.includes(state.kind)) return state.images.get(`${state.kind}/0`);
  const index = state.el * state.study.azimuth_deg.length + state.az;
  return state.images.get(`${state.kind}/${index}`);
}

function render() {
  const image = currentImage();
  if (!image) return;
  const canvas = $("view");
  if (canvas.width !== image.width || canvas.height !== image.height) {
    canvas.width = image.width; canvas.height = image.height;
  }
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const out = context.createImageData(image.width, image.height);
  const low = state.level - state.width / 2, scale = 255 / state.width;
  const lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) lut[v] = Math.round((v - low) * scale);
  const pixels = out.data, gray = image.gray;
  for (let i = 0, j = 0; i < gray.length; i++, j += 4) {
    const g = lut[gray[i]];
    pixels[j] = g; pixels[j + 1] = g; pixels[j + 2] = g; pixels[j + 3] = 255;
  }
  context.putImageData(out, 0, 0);
  const study = state.study;
  const inputView = INPUT_VIEW_KINDS.includes(state.kind);
  const az = study.azimuth_deg[state.az], el = study.elevation_deg[state.el];
  $("azimuth-value").textContent = formatDeg(az);
  $("elevation-value").textContent = formatDeg(el);
  $("azimuth").disabled = inputView; $("elevation").disabled = inputView;
  $("view-note").textContent = inputView ? "this image exists at the input view only" : "";
  $("caption").textContent = `${study.name} — ${KIND_LABELS[state.kind]}` +
    (inputView ? " at the input view" : ` at azimuth ${formatDeg(az)}, elevation ${formatDeg(el)}`);
  $("window-value").textContent =
    `W ${Math.round(100 * state.width / FULL_WINDOW)} % · L ${Math.round(100 * state.level / FULL_WINDOW)} %`;
}

function resetWindow() { state.width = FULL_WINDOW; state.level = FULL_WINDOW / 2; render(); }

function setKind(kind) {
  state.kind = kind;
  for (const radio of document.querySelectorAll("input[name=kind]")) radio.checked = radio.value === kind;
  render();
}

// ---------------------------------------------------------------- play / pause
function stopPlaying() {
  if (state.playing !== null) clearInterval(state.playing);
  state.playing = null;
  $("play").textContent = "▶ play";
}

function togglePlay() {
  if (state.playing !== null) { stopPlaying(); return; }
  if (!state.study) return;
  if (INPUT_VIEW_KINDS.includes(state.kind)) setKind("novel");
  $("play").textContent = "❚❚ pause";
  state.playing = setInterval(() => {
    const last = state.study.azimuth_deg.length - 1;
    if (state.az + state.playStep > last || state.az + state.playStep < 0) state.playStep = -state.playStep;
    state.az += state.playStep;
    $("azimuth").value = String(state.az);
    render();
  }, PLAY_FRAME_MS);
}

// ---------------------------------------------------------------- window / level by dragging
function setupWindowDrag() {
  const canvas = $("view");
  let start = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.study) return;
    canvas.setPointerCapture(event.pointerId);
    start = { x: event.clientX, y: event.clientY, width: state.width, level: state.level };
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!start) return;
    // Right widens the window (less contrast), down raises the level (darker), as on a radiology workstation.
    state.width = Math.max(MIN_WINDOW, start.width + (event.clientX - start.x) * WINDOW_PER_PIXEL);
    state.level = start.level + (event.clientY - start.y) * WINDOW_PER_PIXEL;
    render();
  });
  const stop = () => { start = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  canvas.addEventListener("dblclick", resetWindow);
}

// ---------------------------------------------------------------- wiring
function setupDrop() {
  const zone = $("dropzone");
  // A file dropped anywhere on the page opens it (instead of the browser navigating to it).
  for (const type of ["dragenter", "dragover"]) {
    window.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  window.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) zone.classList.remove("over");
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length > 0) openFile(files[0]);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
}

function setup() {
  $("file-input").addEventListener("change", (event) => {
    openFile(event.target.files[0]);
    event.target.value = "";  // choosing the same file again opens it again
  });
  setupDrop();
  for (const radio of document.querySelectorAll("input[name=kind]")) {
    radio.addEventListener("change", () => setKind(radio.value));
  }
  $("azimuth").addEventListener("input", (event) => { state.az = Number(event.target.value); render(); });
  $("elevation").addEventListener("input", (event) => { state.el = Number(event.target.value); render(); });
  $("play").addEventListener("click", togglePlay);
  $("window-reset").addEventListener("click", resetWindow);
  setupWindowDrag();
  document.addEventListener("keydown", (event) => {
    if (!state.study || event.target.tagName === "INPUT" && event.target.type !== "radio") return;
    const index = Number(event.key) - 1;
    if (index >= 0 && index < KEY_KINDS.length) setKind(KEY_KINDS[index]);
    if (event.key === " ") { event.preventDefault(); togglePlay(); }
  });
  window.addEventListener("pagehide", endSession);
  setInterval(() => { loadInfo().catch(() => {}); }, KEEPALIVE_MS);
  loadInfo().catch((error) => { showMessage(`cannot reach the viewer's server: ${error.message}`); setState("error"); });
}

document.addEventListener("DOMContentLoaded", setup);
