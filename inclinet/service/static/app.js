// The inclinet web page: load an image (upload, drag and drop, or PGC), turn and zoom it, evaluate it.
"use strict";

const state = { source: null, file: null, pgc: null, scale: 1, angle: 0, objectUrl: null, maxBytes: 1048576 };
const ACCEPTED = [".png", ".jpg", ".jpeg", ".gif"];
const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function applyView() {
  $("preview").style.transform = `scale(${state.scale}) rotate(${state.angle}deg)`;
  $("scale-value").textContent = state.scale.toFixed(2);
  $("angle-value").textContent = String(Math.round(state.angle * 10) / 10);
}

function setView(scale, angle) {
  state.scale = Math.min(20, Math.max(0.05, scale));
  state.angle = ((angle % 360) + 540) % 360 - 180;
  applyView();
}

function showImage(url) {
  if (state.objectUrl && state.objectUrl !== url) URL.revokeObjectURL(state.objectUrl);
  const img = $("preview");
  img.onload = () => { img.hidden = false; $("placeholder").hidden = true; $("evaluate").disabled = false; };
  img.onerror = () => {
    img.hidden = true; $("placeholder").hidden = false; $("evaluate").disabled = true;
    showMessage("The browser cannot display this file: it is not a readable image. Choose a PNG, JPG or GIF file.");
  };
  img.src = url;
  $("result").hidden = true;
  setView(1, 0);
}

function useFile(file) {
  showMessage("");
  if (!file) return;
  const name = file.name || "upload";
  const dot = name.lastIndexOf(".");
  const extension = dot >= 0 ? name.slice(dot).toLowerCase() : "";
  if (!ACCEPTED.includes(extension)) {
    showMessage(`${name}: not a PNG, JPG or GIF file. Please upload jpg, png, jpeg or gif files no larger than ${megabytes(state.maxBytes)}.`);
    return;
  }
  if (file.size === 0) { showMessage(`${name}: the file is empty (0 bytes).`); return; }
  if (file.size > state.maxBytes) {
    showMessage(`${name}: ${file.size} bytes is over the limit of ${megabytes(state.maxBytes)}; upload a smaller image.`);
    return;
  }
  state.source = "file"; state.file = file; state.pgc = null;
  state.objectUrl = URL.createObjectURL(file);
  showImage(state.objectUrl);
  $("source").textContent = name;
}

function megabytes(bytes) { return `${(bytes / 1048576).toFixed(bytes % 1048576 ? 2 : 0)} MB`; }

async function loadPgc(event) {
  event.preventDefault();
  showMessage("");
  const text = $("pgc").value.trim();
  if (!text) { showMessage("Enter a PGC number, e.g. 44182."); return; }
  const response = await fetch(`/api/pgc/${encodeURIComponent(text)}/image`);
  if (!response.ok) { showMessage(await errorText(response)); return; }
  state.source = "pgc"; state.pgc = text; state.file = null;
  state.objectUrl = URL.createObjectURL(await response.blob());
  showImage(state.objectUrl);
  $("source").textContent = `PGC ${text}`;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.message || `the service answered ${response.status}`;
  } catch (error) {
    return `the service answered ${response.status} ${response.statusText}`;
  }
}

async function evaluate() {
  showMessage("");
  $("busy").hidden = false;
  $("evaluate").disabled = true;
  try {
    let response;
    if (state.source === "pgc") {
      const query = new URLSearchParams({ angle: state.angle, scale: state.scale });
      response = await fetch(`/api/pgc/${encodeURIComponent(state.pgc)}?${query}`);
    } else if (state.source === "file") {
      const form = new FormData();
      form.append("file", state.file, state.file.name);
      form.append("angle", String(state.angle));
      form.append("scale", String(state.scale));
      response = await fetch("/api/file", { method: "POST", body: form });
    } else {
      showMessage("Load a galaxy first: upload an image or give a PGC number.");
      return;
    }
    if (!response.ok) { showMessage(await errorText(response)); return; }
    showResult(await response.json());
  } catch (error) {
    showMessage(`Could not reach the service (${error.message}); is inclinet-serve still running?`);
  } finally {
    $("busy").hidden = true;
    $("evaluate").disabled = !state.source;
  }
}

function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }
function fixed(value, digits) { return value === null || value === undefined ? "-" : Number(value).toFixed(digits); }

function showResult(answer) {
  const inclinations = answer.inclinations;
  const body = $("inclinations").tBodies[0];
  body.replaceChildren();
  for (const [group, members] of Object.entries(inclinations)) {
    if (group === "summary") continue;
    for (const [member, value] of Object.entries(members)) {
      const row = body.insertRow();
      cell(row, group); cell(row, member); cell(row, fixed(value, 0));
    }
  }
  $("inc-median").textContent = fixed(inclinations.summary.median, 1);
  $("inc-mean").textContent = fixed(inclinations.summary.mean, 1);
  $("inc-stdev").textContent = fixed(inclinations.summary.stdev, 1);
  const rejection = answer.rejection_likelihood;
  $("rejection-block").hidden = !rejection;
  if (rejection) {
    const rows = $("rejection").tBodies[0];
    rows.replaceChildren();
    for (const [member, value] of Object.entries(rejection)) {
      if (member === "summary") continue;
      const row = rows.insertRow();
      cell(row, member); cell(row, fixed(value, 1));
    }
    const median = $("rej-median");
    median.textContent = fixed(rejection.summary.median, 1);
    median.className = rejection.summary.median > 50 ? "reject-high" : "reject-low";
    $("rej-mean").textContent = fixed(rejection.summary.mean, 0);
    $("rej-stdev").textContent = fixed(rejection.summary.stdev, 0);
  }
  const extras = [`spread of the members ${fixed(answer.member_spread, 1)} deg`];
  if (answer.peer) extras.push(`classical peer (${answer.peer.method}) ${fixed(answer.peer.inclination, 0)} deg`);
  if (answer.galaxy) extras.push(`image ${answer.galaxy.image} (${answer.galaxy.prepared})`);
  $("extras").textContent = extras.join("; ");
  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const text of answer.warnings || []) {
    const item = document.createElement("li");
    item.textContent = `unlike the training images: ${text}`;
    warnings.appendChild(item);
  }
  $("json").textContent = JSON.stringify(answer, null, 2);
  $("result").hidden = false;
}

function zoom(factor) { if (state.source) setView(state.scale * factor, state.angle); }
function rotate(degrees) { if (state.source) setView(state.scale, state.angle + degrees); }

function setUp() {
  $("file").addEventListener("change", (event) => useFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    useFile(event.dataTransfer.files[0]);
  });
  $("pgc-form").addEventListener("submit", (event) => loadPgc(event).catch((error) => showMessage(error.message)));
  $("clear-pgc").addEventListener("click", () => { $("pgc").value = ""; showMessage(""); });
  $("zoom-in").addEventListener("click", () => zoom(10 / 9));
  $("zoom-out").addEventListener("click", () => zoom(0.9));
  $("rotate-ccw").addEventListener("click", (event) => rotate(event.shiftKey ? -10 : -1));
  $("rotate-cw").addEventListener("click", (event) => rotate(event.shiftKey ? 10 : 1));
  $("reset-view").addEventListener("click", () => setView(1, 0));
  $("evaluate").addEventListener("click", evaluate);
  $("view").addEventListener("wheel", (event) => { event.preventDefault(); zoom(event.deltaY < 0 ? 10 / 9 : 0.9); });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT") return;
    const step = event.shiftKey ? 10 : 1;
    const actions = { ArrowUp: () => zoom(10 / 9), ArrowDown: () => zoom(0.9),
                      ArrowLeft: () => rotate(-step), ArrowRight: () => rotate(step) };
    if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
  });
  fetch("/api/bundle").then((r) => r.json()).then((bundle) => {
    if (bundle.limits) {
      state.maxBytes = bundle.limits.max_upload_bytes;
      $("limit-hint").textContent = `at most ${megabytes(state.maxBytes)}; major axis horizontal, galaxy in the centre`;
    }
    $("pgc-form").hidden = !bundle.catalog;
  }).catch(() => {});
  applyView();
}

setUp();
