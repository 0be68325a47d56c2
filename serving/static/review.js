// Answering the model, on both pages. `Review` (used by app.js too): the reviewer's token, asked for
// once in an inline form when the service answers 401 and kept in sessionStorage for this tab, and
// POST /feedback. On the review page (review.html, the one with #grid): the unanswered logged images,
// least confident first, labelled from the keyboard (digit = class, arrows move, Enter confirms).
"use strict";

const Review = (() => {
  const TOKEN_KEY = "cifarflow.review-token"; // one key for both pages: the token is asked for once per tab
  const NEEDS_TOKEN = "Answers need a reviewer's token (ask whoever runs this service for one).";
  let memoryToken = null; // where sessionStorage is off (some private modes), the token lives as long as the page
  let asking = null; // the open token form's promise: every request that got a 401 waits on the same one

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (error) {
      return memoryToken;
    }
  }

  function storeToken(token) {
    memoryToken = token;
    try {
      if (token === null) sessionStorage.removeItem(TOKEN_KEY);
      else sessionStorage.setItem(TOKEN_KEY, token);
    } catch (error) {
      // kept in memoryToken
    }
  }

  // Show the token form in #token-slot with `message`; resolves once a token is entered and stored.
  function askToken(message) {
    if (asking) {
      document.getElementById("token-message").textContent = message;
      return asking;
    }
    asking = new Promise((resolve) => {
      const form = document.createElement("form");
      form.id = "token-form";
      form.className = "token";
      form.innerHTML = `<p id="token-message" role="alert"></p>
        <label for="token">Review token</label>
        <input id="token" type="password" autocomplete="off" spellcheck="false" required>
        <button type="submit">Use token</button>`;
      form.querySelector("#token-message").textContent = message;
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const token = form.querySelector("#token").value.trim();
        if (!token) return;
        storeToken(token);
        form.remove();
        asking = null;
        resolve();
      });
      document.getElementById("token-slot").replaceChildren(form);
      form.querySelector("#token").focus();
    });
    return asking;
  }

  const sentence = (text) => text.charAt(0).toUpperCase() + text.slice(1);

  // fetch() with the reviewer's token; on a 401 it asks for the token and tries again until the service
  // takes it. Any other answer (2xx, 403, 404, …) is returned as it is.
  async function authorizedFetch(url, options = {}) {
    for (;;) {
      const token = storedToken();
      const headers = new Headers(options.headers);
      if (token) headers.set("Authorization", `Bearer ${token}`);
      const response = await fetch(url, { ...options, headers });
      if (response.status !== 401) return response;
      if (storedToken() !== token) continue; // another request stored a new token meanwhile: try that one
      const body = await response.json().catch(() => ({}));
      storeToken(null);
      await askToken(token ? `${sentence(body.error || "the review token is not valid")}: enter it again.` : NEEDS_TOKEN);
    }
  }

  // POST /feedback: `label` is the right class of logged prediction `predictionId`. Resolves with the
  // service's answer ({label, status, predicted, reviewer, …}); rejects with its error text.
  async function answer(predictionId, label) {
    const response = await authorizedFetch("/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prediction_id: predictionId, label }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `error ${response.status}`);
    return body;
  }

  const thanks = (body) =>
    body.status === "replaced" ? `Thanks: answer replaced, now ${body.label}` : `Thanks: recorded as ${body.label}`;

  return { authorizedFetch, answer, thanks };
})();

function startReviewPage() {
  const $ = (id) => document.getElementById(id);
  const QUEUE_SIZE = 50;
  const percent = (p) => `${(100 * p).toFixed(1)}%`;
  const grid = $("grid");
  let labelNames = [];
  let unanswered = 0;
  let generation = 0; // bumped by each queue load: thumbnails of an older load are dropped

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  const cards = () => [...grid.querySelectorAll(".card:not([hidden])")];
  const selected = () => grid.querySelector(".card.selected");

  // `scroll`: bring the card into view (keyboard moves); a page load selects without scrolling, so the page
  // opens at its top, heading and key legend shown
  function select(card, scroll = true) {
    const previous = selected();
    if (previous) {
      previous.classList.remove("selected");
      previous.setAttribute("aria-selected", "false");
    }
    if (!card) return grid.removeAttribute("aria-activedescendant");
    card.classList.add("selected");
    card.setAttribute("aria-selected", "true");
    grid.setAttribute("aria-activedescendant", card.id);
    if (scroll) card.scrollIntoView({ block: "nearest" });
  }

  function showCount() {
    $("unanswered").textContent = unanswered;
    const filtered = $("filter").value ? ` predicted as ${$("filter").value}` : "";
    $("empty").textContent = `Nothing left to review${filtered}.`;
    $("empty").hidden = cards().length > 0;
  }

  async function showThumbnail(img, url, loadedBy) {
    try {
      const response = await Review.authorizedFetch(url);
      if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || `error ${response.status}`);
      const blob = await response.blob();
      if (loadedBy !== generation || !img.isConnected) return;
      img.src = URL.createObjectURL(blob); // an <img src> could not send the token
    } catch (error) {
      img.closest(".card").classList.add("broken");
      img.title = `no image: ${error.message}`;
    }
  }

  function makeCard(item) {
    const card = document.createElement("li");
    card.className = "card";
    card.id = `card-${item.prediction_id}`;
    card.setAttribute("role", "option");
    card.setAttribute("aria-selected", "false");
    card.dataset.id = item.prediction_id;
    card.dataset.label = item.label;
    card.title = `margin ${percent(item.margin)} · ${item.model_version} · ${item.time}`;
    card.innerHTML = `<img alt=""><span class="predicted"></span><span class="probability"></span>`;
    card.querySelector("img").alt = `predicted ${item.label}`;
    card.querySelector(".predicted").textContent = item.label;
    card.querySelector(".probability").textContent = percent(item.probability);
    card.addEventListener("click", () => select(card));
    showThumbnail(card.querySelector("img"), item.thumbnail, generation);
    return card;
  }

  function dropCard(card) {
    const src = card.querySelector("img").src;
    if (src.startsWith("blob:")) URL.revokeObjectURL(src);
    card.remove();
  }

  async function loadQueue() {
    const label = $("filter").value;
    const query = new URLSearchParams({ n: QUEUE_SIZE, ...(label && { label }) });
    const loadedBy = ++generation;
    try {
      const response = await Review.authorizedFetch(`/review/queue?${query}`);
      const body = await response.json().catch(() => ({}));
      if (loadedBy !== generation) return; // the filter changed meanwhile
      if (!response.ok) return showError(body.error || `error ${response.status}`);
      $("error").hidden = true;
      $("measure").textContent = body.measure;
      unanswered = body.unanswered;
      [...grid.children].forEach(dropCard);
      grid.append(...body.items.map(makeCard));
      select(cards()[0], false);
      showCount();
    } catch (error) {
      showError(`The service did not answer: ${error.message}`);
    }
  }

  // Answer `card` with `className`: it leaves the grid at once and the selection moves on; it comes
  // back, with the service's error, if the answer is not recorded.
  async function answerCard(card, className) {
    if (!card) return;
    const visible = cards();
    const at = visible.indexOf(card);
    card.hidden = true;
    if (card === selected()) select(visible[at + 1] || visible[at - 1]);
    showCount();
    try {
      const body = await Review.answer(card.dataset.id, className);
      dropCard(card);
      unanswered -= 1;
      $("status").textContent = `${Review.thanks(body)} (the model said ${body.predicted})`;
      $("error").hidden = true;
      showCount();
      if (!grid.children.length) loadQueue(); // the next least confident ones
    } catch (error) {
      card.hidden = false;
      showCount();
      showError(error.message);
    }
  }

  function columns(visible) {
    const top = visible[0].offsetTop;
    const firstBelow = visible.findIndex((card) => card.offsetTop !== top);
    return firstBelow < 0 ? visible.length : firstBelow;
  }

  function move(event) {
    const visible = cards();
    if (!visible.length) return;
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(visible), ArrowDown: columns(visible) }[event.key];
    const at = visible.indexOf(selected());
    select(visible[Math.min(Math.max(at + step, 0), visible.length - 1)]);
  }

  function onKey(event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, select, textarea")) return;
    if (/^[0-9]$/.test(event.key) && Number(event.key) < labelNames.length) {
      answerCard(selected(), labelNames[Number(event.key)]);
    } else if (event.key === "Enter" && !event.target.closest("button, a")) {
      const card = selected();
      if (card) answerCard(card, card.dataset.label);
    } else if (event.key.startsWith("Arrow")) {
      move(event);
    } else {
      return;
    }
    event.preventDefault();
  }

  function showLabels(names) {
    labelNames = names;
    $("legend").replaceChildren(
      ...names.map((name, index) => {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.label = name;
        button.innerHTML = index < 10 ? `<kbd>${index}</kbd> ` : ""; // a digit key for each of the first ten classes
        button.append(name);
        button.addEventListener("click", () => answerCard(selected(), name));
        return button;
      })
    );
    const wanted = new URLSearchParams(location.search).get("label");
    $("filter").append(...names.map((name) => new Option(name, name, false, name === wanted)));
  }

  async function start() {
    try {
      const response = await fetch("/model");
      const model = await response.json();
      if (!response.ok) throw new Error(model.error || response.statusText);
      showLabels(model.label_names);
    } catch (error) {
      return showError(`No model: ${error.message}`);
    }
    $("filter").addEventListener("change", () => {
      const label = $("filter").value;
      history.replaceState(null, "", label ? `?label=${encodeURIComponent(label)}` : location.pathname);
      loadQueue();
      grid.focus({ preventScroll: true }); // the keys label the grid again, not the select
    });
    document.addEventListener("keydown", onKey);
    await loadQueue();
    grid.focus({ preventScroll: true }); // focus would scroll the grid's top into view otherwise
  }

  start();
}

if (document.getElementById("grid")) startReviewPage();
