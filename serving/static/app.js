// The page's logic: show the serving model, send the chosen image to /predict, draw the top-3 bars, and
// ask "Right?": the answer goes to POST /feedback through `Review` (review.js, which holds the token).
"use strict";

const $ = (id) => document.getElementById(id);
const mib = (bytes) => `${+(bytes / 2 ** 20).toFixed(1)} MiB`;
let maxUploadBytes = null; // from GET /limits; the service's 413 still guards when it is unknown
let labelNames = []; // from GET /model: the classes a correction can name
let shownPrediction = null; // the prediction_id of the result on screen: a late answer to an older one is not shown

async function showLimits() {
  try {
    const response = await fetch("/limits");
    if (!response.ok) return;
    maxUploadBytes = (await response.json()).max_upload_bytes;
    $("limit").textContent = ` · at most ${mib(maxUploadBytes)}`;
  } catch (error) {
    // the page still works: an upload over the limit gets the service's own message
  }
}

async function showModel() {
  try {
    const response = await fetch("/model");
    const model = await response.json();
    if (!response.ok) throw new Error(model.error || response.statusText);
    const accuracy = model.accuracy === undefined ? "" : ` · test accuracy ${(100 * model.accuracy).toFixed(1)}%`;
    const source = model.dataset?.source?.uri?.split(/[\\/]/).filter(Boolean).pop();
    const data = source ? ` · trained on ${source}` : "";
    $("model").textContent = `Model ${model.version} (${model.model || "exported"})${accuracy}${data}`;
    $("model").dataset.version = model.version;
    $("size").textContent = `${model.image_size}×${model.image_size} pixels`;
    $("classes").textContent = model.label_names.join(", ");
    labelNames = model.label_names;
  } catch (error) {
    $("model").textContent = `No model: ${error.message}`;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("result").hidden = true;
}

function showResult(result) {
  $("error").hidden = true;
  $("label").textContent = `${result.label} (${(100 * result.probability).toFixed(1)}%)`;
  $("bars").replaceChildren(
    ...result.top.map(({ label, probability }) => {
      const item = document.createElement("li");
      item.className = "bar";
      item.dataset.label = label;
      item.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
      item.querySelector(".name").textContent = label;
      item.querySelector(".fill").style.width = `${(100 * probability).toFixed(1)}%`;
      item.querySelector(".value").textContent = `${(100 * probability).toFixed(1)}%`;
      return item;
    })
  );
  askRight(result);
  $("result").hidden = false;
  if (result.model_version !== $("model").dataset.version) showModel(); // the champion moved meanwhile
}

// The "Right?" block: confirm the predicted class, or name the right one.
function askRight(result) {
  shownPrediction = result.prediction_id || null;
  $("feedback").hidden = !shownPrediction;
  $("feedback-status").textContent = "";
  $("feedback-status").classList.remove("error");
  $("confirm").textContent = `Yes, ${result.label}`;
  $("confirm").dataset.label = result.label;
  $("confirm").removeAttribute("aria-pressed");
  $("confirm").disabled = false;
  const others = (labelNames.length ? labelNames : result.top.map((t) => t.label)).filter((l) => l !== result.label);
  $("choices").replaceChildren(
    ...others.map((label) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = button.dataset.label = label;
      return button;
    })
  );
}

async function sendAnswer(button) {
  const predictionId = shownPrediction;
  const buttons = $("feedback").querySelectorAll("button[data-label]");
  const status = $("feedback-status");
  buttons.forEach((b) => { b.disabled = true; }); // one answer at a time, even while the token is asked for
  status.classList.remove("error");
  status.textContent = "Sending…";
  try {
    const body = await Review.answer(predictionId, button.dataset.label);
    if (predictionId !== shownPrediction) return;
    status.textContent = Review.thanks(body);
    buttons.forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
  } catch (error) {
    if (predictionId !== shownPrediction) return;
    status.textContent = error instanceof TypeError ? `The service did not answer: ${error.message}` : error.message;
    status.classList.add("error");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function classify(file) {
  if (!file) return;
  if (maxUploadBytes !== null && file.size > maxUploadBytes) {
    // not sent: the service would refuse it (413) after a long upload
    return showError(`${file.name} is ${mib(file.size)}: over the service's ${mib(maxUploadBytes)} limit; choose a smaller file`);
  }
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("hint").hidden = true;
  $("label").textContent = "…";
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) return showError(body.error || `error ${response.status}`);
    showResult(body);
  } catch (error) {
    showError(`The service did not answer: ${error.message}`);
  }
}

$("file").addEventListener("change", (event) => classify(event.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((type) =>
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); })
);
["dragleave", "drop"].forEach((type) =>
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.remove("over"); })
);
drop.addEventListener("drop", (event) => classify(event.dataTransfer.files[0]));
$("feedback").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-label]");
  if (button && shownPrediction) sendAnswer(button);
});
showModel();
showLimits();
