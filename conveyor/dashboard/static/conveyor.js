// What every page of the dashboard shares: navigation, requests, formatting, live updates.
"use strict";

const PAGES = [["workers", "Workers"], ["tasks", "Tasks"], ["broker", "Broker"], ["overview", "Overview"]];

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function header(here) {
  const links = PAGES.map(([path, label]) => `<a href="${path}"${path === here ? ' class="here"' : ""}>${label}</a>`).join("");
  document.body.insertAdjacentHTML("afterbegin",
    `<header><h1><a href="./">Conveyor</a></h1><nav>${links}</nav><small id="status">loading…</small></header>`);
  document.body.insertAdjacentHTML("beforeend", '<div id="toast" role="status"></div>');
}

function status(text, live) {
  const element = document.getElementById("status");
  element.textContent = text;
  element.classList.toggle("live", Boolean(live));
}

async function api(path) {
  const response = await fetch(path, {headers: {Accept: "application/json"}});
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch { data = {error: text}; }
  if (!response.ok) throw new Error(data.error || text || response.statusText);
  return data;
}

// An action: POST, then a message saying what happened (or why not).
async function act(path, params) {
  const query = params ? "?" + new URLSearchParams(params) : "";
  const response = await fetch(path + query, {method: "POST"});
  const text = await response.text();
  let message = text;
  try { const data = JSON.parse(text); message = data.message || data.error || text; } catch { /* plain text */ }
  toast(response.ok ? message : `${response.status}: ${message}`, !response.ok);
  return response.ok;
}

function toast(message, failed) {
  const element = document.getElementById("toast");
  element.textContent = message;
  element.className = failed ? "shown error" : "shown";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { element.className = ""; }, 4000);
}

const when = (seconds) => seconds ? new Date(seconds * 1000).toLocaleString() : "";
const clock = (seconds) => seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
const runtime = (seconds) => seconds == null ? "" : seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
const state = (name) => `<span class="state ${esc(name)}">${esc(name)}</span>`;
function age(seconds) {
  if (seconds == null) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function rows(id, items, render, columns, none) {
  document.getElementById(id).innerHTML = items.length ? items.map(render).join("")
    : `<tr><td colspan="${columns}" class="empty">${esc(none || "none")}</td></tr>`;
}

// Call `load` now and each time the dashboard takes a new sample (server-sent events); poll
// when the stream is unavailable. Loads never overlap.
function live(load) {
  let running = false, again = false;
  async function run() {
    if (running) { again = true; return; }
    running = true;
    try {
      await load();
      status(`updated ${new Date().toLocaleTimeString()}`, true);
    } catch (error) {
      status(`cannot load: ${error.message}`, false);
    } finally {
      running = false;
      if (again) { again = false; run(); }
    }
  }
  run();
  if (window.EventSource) {
    const stream = new EventSource("api/stream");
    stream.addEventListener("sample", run);
    stream.onerror = () => status("reconnecting…", false);
  } else {
    setInterval(run, 3000);
  }
  return run;
}
