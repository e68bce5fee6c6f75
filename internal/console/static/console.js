// The mesh console's script: live parts of pages over server-sent events,
// lock expiries counting down, confirmations of actions, the events page.
"use strict";

(function () {
  const conn = document.getElementById("conn");
  function connected(on) {
    if (conn) conn.className = "conn " + (on ? "on" : "off");
  }

  // Actions ask for confirmation (forms with data-confirm, also those the
  // live parts bring in later).
  document.addEventListener("submit", function (e) {
    const f = e.target;
    if (f.dataset && f.dataset.confirm && !window.confirm(f.dataset.confirm)) {
      e.preventDefault();
    }
  });

  // Lock expiries count down between two renders of the page.
  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      const left = (Date.parse(el.dataset.expires) - now) / 1000;
      if (isNaN(left)) return;
      if (left <= 0) {
        el.textContent = "expired";
        el.className = "countdown gone";
      } else {
        el.textContent = left < 60 ? left.toFixed(1) + "s" : Math.floor(left / 60) + "m" + Math.floor(left % 60) + "s";
        el.className = "countdown" + (left < 5 ? " soon" : "");
      }
    });
  }
  setInterval(tick, 200);
  tick();

  // The live part of a page is rendered again by the server and sent whole
  // when it changes.
  const live = document.getElementById("live");
  if (live && live.dataset.live) {
    const es = new EventSource(live.dataset.live);
    es.addEventListener("open", function () { connected(true); });
    es.addEventListener("error", function () { connected(false); });
    es.addEventListener("fragment", function (e) {
      connected(true);
      // Keep the open <details> open across renders.
      const open = new Set();
      live.querySelectorAll("details[open] > summary").forEach(function (s) { open.add(s.textContent.split(" ")[0] + s.querySelector("code")?.textContent); });
      live.innerHTML = e.data;
      live.querySelectorAll("details > summary").forEach(function (s) {
        if (open.has(s.textContent.split(" ")[0] + s.querySelector("code")?.textContent)) s.parentElement.open = true;
      });
      tick();
    });
    es.addEventListener("ping", function () { connected(true); });
  }

  // The events page follows the mesh's events.
  const table = document.getElementById("events");
  if (table && table.dataset.stream) {
    const body = table.querySelector("tbody");
    const none = document.getElementById("no-events");
    const pause = document.getElementById("pause-events");
    let paused = false;
    if (pause) pause.addEventListener("click", function () {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
    });
    const es = new EventSource(table.dataset.stream);
    es.addEventListener("open", function () { connected(true); });
    es.addEventListener("error", function () { connected(false); });
    es.addEventListener("mesh", function (e) {
      if (paused) return;
      JSON.parse(e.data).forEach(addRow);
      while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
      if (none) none.style.display = "none";
    });
    function addRow(ev) {
      const tr = document.createElement("tr");
      tr.className = "new";
      tr.dataset.type = ev.type;
      const t = new Date(ev.time);
      [t.toISOString().replace("T", " ").replace("Z", ""), ev.type, ev.source || "", JSON.stringify(ev.data || null)].forEach(function (text, i) {
        const td = document.createElement("td");
        if (i === 1 || i === 3) {
          const c = document.createElement("code");
          c.textContent = text;
          td.appendChild(c);
          if (i === 3) td.className = "small";
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      });
      body.insertBefore(tr, body.firstChild);
    }
  }
})();
