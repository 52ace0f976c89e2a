// The dashboard's behaviour: buttons and the settings form call the public API with the session cookie and the
// CSRF token; the overview follows GET /events; plotly draws the figures the server built.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const flash = document.getElementById("flash");

  function say(text, bad) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = bad ? "bad" : "";
    if (!bad) setTimeout(() => { if (flash.textContent === text) flash.textContent = ""; }, 4000);
  }

  function problem(body, status) {
    if (body && Array.isArray(body.detail)) return body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    if (body && body.detail) return String(body.detail);
    return "HTTP " + status;
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method, credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": csrf, "Accept": "application/json" }, body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { ok: response.ok, status: response.status, data };
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-post]");
    if (!button) return;
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    const answer = await api("POST", button.dataset.post);
    button.disabled = false;
    if (!answer.ok) { say(problem(answer.data, answer.status), true); return; }
    say("Done: " + button.textContent.trim().toLowerCase());
    if (answer.status === 202) { button.textContent = "Closing…"; button.disabled = true; }
    if (button.hasAttribute("data-reload")) window.location.reload();
  });

  const settings = document.getElementById("bot-settings");
  if (settings) {
    settings.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {};
      settings.querySelectorAll("input[data-kind]").forEach((input) => {
        const kind = input.dataset.kind;
        const now = kind === "bool" ? String(input.checked) : input.value.trim();
        if (now === input.dataset.initial) return;
        if (kind === "bool") body[input.name] = input.checked;
        else if (kind === "int" || kind === "float") body[input.name] = now === "" ? null : Number(now);
        else if (kind === "list") body[input.name] = now ? now.split(",").map((s) => s.trim()).filter(Boolean) : [];
        else body[input.name] = now;
      });
      settings.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
      if (!Object.keys(body).length) { say("Nothing changed."); return; }
      const answer = await api("PATCH", settings.dataset.patch, body);
      if (answer.ok) { say("Saved."); window.location.reload(); return; }
      if (answer.data && Array.isArray(answer.data.detail)) {
        answer.data.detail.forEach((d) => {
          const field = (d.loc || [])[1];
          const slot = field && settings.querySelector('label[data-field="' + field + '"] .field-error');
          if (slot) slot.textContent = d.msg;
        });
      }
      say(problem(answer.data, answer.status), true);
    });
  }

  const live = document.getElementById("live");
  if (live && window.EventSource) {
    const state = document.getElementById("live-state");
    const source = new EventSource(live.dataset.events);
    source.addEventListener("open", () => { if (state) { state.textContent = "live"; state.className = "pill status-active"; } });
    source.addEventListener("error", () => { if (state) { state.textContent = "reconnecting…"; state.className = "pill status-paused"; } });
    source.addEventListener("overview", (event) => {
      const update = JSON.parse(event.data);
      for (const [part, html] of Object.entries(update.html)) {
        const node = document.getElementById(part);
        if (node) node.innerHTML = html;
      }
      if (state) { state.textContent = "live"; state.className = "pill status-active"; }
    });
  }

  function draw() {
    if (!window.Plotly) return;
    document.querySelectorAll("[data-figure]").forEach((node) => {
      const figure = JSON.parse(document.getElementById(node.dataset.figure).textContent);
      window.Plotly.newPlot(node, figure.data, figure.layout, { responsive: true, displaylogo: false });
      node.dataset.drawn = "yes";
    });
  }
  window.addEventListener("load", draw);
})();
