// The playground's behaviour: reads the model and its generation options from the server, sends the
// image and prompt to POST /v1/generate, shows the streamed text, and draws the answer's boxes and
// masks over the image. Plain browser JavaScript (no framework, no build step).
"use strict";

const PRESETS = {
  pali: ["caption en", "caption fr", "caption de", "caption es", "caption ru", "answer en how many circles?",
         "answer en what color is the star?", "ocr", "detect circle ; star"],
  paligemma: ["caption en", "answer en what is in the image?", "ocr", "detect cat", "segment cat"],
};
// Distinct colours for objects, readable over light and dark images.
const COLORS = ["#e8590c", "#1c7ed6", "#d6336c", "#2f9e44", "#7048e8", "#f59f00", "#0c8599", "#c2255c"];
const CANVAS_SIZE = 448;

const $ = (id) => document.getElementById(id);
const state = { image: null, dataUrl: null, objects: [], masks: [], controller: null, specs: [] };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// ---- the model and its options ----

async function loadModel() {
  try {
    const models = await (await fetch("/v1/models")).json();
    const model = models.data[0];
    $("model-info").textContent = `${model.id} · ${model.architecture} · ${model.backend} · ${model.dtype}` +
      (model.image_size ? ` · ${model.image_size}×${model.image_size} input` : "") +
      (model.masks ? " · masks" : "");
    const presets = PRESETS[model.architecture] || PRESETS.pali;
    $("prompt-presets").replaceChildren(...presets.map((p) => Object.assign(document.createElement("option"),
                                                                            { value: p })));
  } catch (error) {
    $("model-info").textContent = "cannot reach the server";
  }
  try {
    const options = await (await fetch("/v1/options")).json();
    state.specs = options.options;
    buildOptions(options);
  } catch (error) {
    showError(`cannot read the generation options: ${error}`);
  }
}

function buildOptions(options) {
  const container = $("options");
  container.replaceChildren();
  for (const spec of options.options) {
    const label = document.createElement("label");
    label.title = spec.doc;
    label.append(spec.name);
    let input;
    if (spec.kind === "bool" || spec.kind === "early_stopping") {
      input = document.createElement("select");
      const choices = spec.kind === "bool" ? ["", "true", "false"] : ["", "true", "false", "never"];
      for (const choice of choices) {
        const text = choice === "" ? `default (${spec.default})` : choice;
        input.append(Object.assign(document.createElement("option"), { value: choice, textContent: text }));
      }
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.step = spec.kind === "float" ? "any" : "1";
      if (spec.low !== undefined) input.min = spec.low;
      const fallback = spec.name === "max_new_tokens" ? options.model_max_new_tokens : null;
      input.placeholder = String(spec.default ?? fallback ?? (spec.kind === "seed" ? "random" : ""));
    }
    input.id = `option-${spec.name}`;
    input.dataset.name = spec.name;
    input.dataset.kind = spec.kind;
    label.append(input);
    container.append(label);
  }
}

function chosenOptions() {
  const chosen = {};
  for (const input of $("options").querySelectorAll("[data-name]")) {
    const value = input.value.trim();
    if (value === "") continue;
    const kind = input.dataset.kind;
    if (kind === "bool") chosen[input.dataset.name] = value === "true";
    else if (kind === "early_stopping") chosen[input.dataset.name] = value === "never" ? "never" : value === "true";
    else chosen[input.dataset.name] = Number(value);
  }
  return chosen;
}

// ---- the image ----

function readImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    showError("that is not an image file");
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    const picture = new Image();
    picture.onload = () => {
      state.image = picture;
      state.dataUrl = reader.result;
      state.objects = [];
      state.masks = [];
      $("drop-hint").hidden = true;
      $("image-info").textContent = `${file.name || "pasted image"} · ${picture.naturalWidth}×${picture.naturalHeight}`;
      $("objects").replaceChildren();
      showError("");
      draw();
    };
    picture.onerror = () => showError("the browser cannot read that image");
    picture.src = reader.result;
  };
  reader.readAsDataURL(file);
}

// The image's placement on the canvas: fitted, centred, and scaled by whole pixels when it is small.
function layout() {
  const { naturalWidth: w, naturalHeight: h } = state.image;
  const fit = Math.min(CANVAS_SIZE / w, CANVAS_SIZE / h);
  const scale = fit >= 1 ? Math.floor(fit) : fit;
  return { scale, x: (CANVAS_SIZE - w * scale) / 2, y: (CANVAS_SIZE - h * scale) / 2, w, h };
}

function draw() {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  const place = layout();
  context.imageSmoothingEnabled = place.scale < 1;
  context.drawImage(state.image, place.x, place.y, place.w * place.scale, place.h * place.scale);
  if ($("show-masks").checked) {
    state.masks.forEach((mask) => {
      if (mask) context.drawImage(mask, place.x, place.y, place.w * place.scale, place.h * place.scale);
    });
  }
  if (!$("show-boxes").checked) return;
  context.font = "600 14px system-ui, sans-serif";
  state.objects.forEach((object, i) => {
    const color = COLORS[i % COLORS.length];
    const [x0, y0, x1, y1] = object.box.map((v) => v * place.scale);
    context.lineWidth = 3;
    context.strokeStyle = color;
    context.strokeRect(place.x + x0, place.y + y0, x1 - x0, y1 - y0);
    const label = object.label || "?";
    const width = context.measureText(label).width + 8;
    const top = Math.max(0, place.y + y0 - 20);
    context.fillStyle = color;
    context.fillRect(place.x + x0 - 1.5, top, width, 20);
    context.fillStyle = "#ffffff";
    context.fillText(label, place.x + x0 + 3, top + 15);
  });
}

// A mask (grayscale PNG of the whole image) -> a canvas with the object's colour where the mask is white.
function tintMask(dataUrl, color) {
  return new Promise((resolve) => {
    const picture = new Image();
    picture.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = picture.naturalWidth;
      canvas.height = picture.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(picture, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
      const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
      for (let i = 0; i < pixels.data.length; i += 4) {
        const inside = pixels.data[i] > 127;
        pixels.data.set(inside ? [r, g, b, 110] : [0, 0, 0, 0], i);
      }
      context.putImageData(pixels, 0, 0);
      resolve(canvas);
    };
    picture.onerror = () => resolve(null);
    picture.src = dataUrl;
  });
}

async function showObjects(objects) {
  state.objects = objects || [];
  state.masks = await Promise.all(state.objects.map((o, i) => o.mask ? tintMask(o.mask, COLORS[i % COLORS.length])
                                                                     : null));
  const list = $("objects");
  list.replaceChildren(...state.objects.map((object, i) => {
    const item = document.createElement("li");
    const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
    swatch.style.background = COLORS[i % COLORS.length];
    const box = Object.assign(document.createElement("span"), {
      className: "box", textContent: `(${object.box.map((v) => Math.round(v)).join(", ")})`,
    });
    item.append(swatch, object.label || "?", box, object.mask ? " · mask" : "");
    return item;
  }));
  draw();
}

function showTimings(timings, extra) {
  const rows = Object.entries({ ...timings, ...extra }).map(([name, value]) => {
    const row = document.createElement("tr");
    const shown = typeof value === "number" && !Number.isInteger(value) ? value.toFixed(2) : String(value);
    row.append(Object.assign(document.createElement("td"), { textContent: name }),
               Object.assign(document.createElement("td"), { textContent: shown }));
    return row;
  });
  $("timings").tBodies[0].replaceChildren(...rows);
}

// ---- generating ----

async function generate() {
  if (!state.dataUrl) {
    showError("choose or drop an image first");
    return;
  }
  showError("");
  const output = $("output");
  output.textContent = "";
  output.classList.add("running");
  $("timings").tBodies[0].replaceChildren();
  await showObjects([]);
  const stream = $("stream").checked;
  const body = { image: state.dataUrl, prompt: $("prompt").value, stream, ...chosenOptions() };
  state.controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  try {
    const response = await fetch("/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new Error(answer.error ? answer.error.message : `HTTP ${response.status}`);
    }
    if (stream) await readEvents(response, output, started);
    else {
      const answer = await response.json();
      output.textContent = answer.text;
      await showObjects(answer.objects);
      showTimings(answer.timings, { tokens: answer.usage.completion_tokens, finish: answer.finish_reason,
                                    round_trip_ms: performance.now() - started });
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
  } finally {
    output.classList.remove("running");
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

// Server-sent events of /v1/generate: {"type": "text"}, then {"type": "done"} (or {"type": "error"}).
async function readEvents(response, output, started) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      const message = JSON.parse(data);
      if (message.type === "text") output.textContent += message.text;
      else if (message.type === "error") throw new Error(message.error.message);
      else if (message.type === "done") {
        output.textContent = message.text;
        await showObjects(message.objects);
        showTimings(message.timings, { tokens: message.usage.completion_tokens, finish: message.finish_reason,
                                       round_trip_ms: performance.now() - started });
      }
    }
  }
}

// ---- wiring ----

function setUp() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => readImage(e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    readImage(e.dataTransfer.files[0]);
  });
  zone.addEventListener("click", () => $("file-input").click());
  document.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) readImage(file);
  });
  $("generate").addEventListener("click", generate);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") generate(); });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("show-boxes").addEventListener("change", draw);
  $("show-masks").addEventListener("change", draw);
  loadModel();
}

setUp();
