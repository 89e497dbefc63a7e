// MLS Sync dashboard: POST actions as JSON, bulk selection, live progress on the overview.
// No framework, no inline script (the pages send a strict Content-Security-Policy); all text
// from the server is written with textContent, never as HTML.
"use strict";

(function () {
  const flash = document.getElementById("flash");

  function say(message, ok) {
    if (!flash) return;
    flash.textContent = message;
    flash.classList.toggle("err", !ok);
    flash.hidden = false;
    flash.scrollIntoView({ block: "nearest" });
  }

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    let detail = data.message || data.detail || resp.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || String(d)).join("; ");
    return { ok: resp.ok, status: resp.status, message: String(detail), data: data };
  }

  // Asks in the page itself: Airflow shows this view in a sandboxed iframe without allow-modals,
  // where window.confirm() returns false at once without showing anything.
  function confirmInPage(control, question) {
    return new Promise((resolve) => {
      const box = document.createElement("span");
      box.className = "confirm-box";
      box.setAttribute("role", "alertdialog");
      const text = document.createElement("span");
      text.textContent = question;
      const yes = document.createElement("button");
      yes.type = "button";
      yes.className = "danger";
      const label = control.textContent.trim();
      yes.textContent = "Yes, " + label.charAt(0).toLowerCase() + label.slice(1);
      yes.setAttribute("data-confirm-yes", "");
      const no = document.createElement("button");
      no.type = "button";
      no.className = "secondary";
      no.textContent = "No";
      no.setAttribute("data-confirm-no", "");
      box.append(text, yes, no);
      control.hidden = true;
      control.after(box);
      yes.focus();
      const done = (ok) => { box.remove(); control.hidden = false; resolve(ok); };
      yes.addEventListener("click", (e) => { e.stopPropagation(); done(true); });
      no.addEventListener("click", (e) => { e.stopPropagation(); done(false); });
    });
  }

  async function act(control, url, body) {
    const ask = control.getAttribute("data-confirm");
    if (ask && !(await confirmInPage(control, ask))) return;
    control.disabled = true;
    try {
      const r = await post(url, body);
      say(r.ok ? r.message : "Refused (" + r.status + "): " + r.message, r.ok);
      if (r.ok) window.setTimeout(() => window.location.reload(), 900);
    } catch (e) {
      say("Request failed: " + e, false);
    } finally {
      control.disabled = false;
    }
  }

  function formBody(form) {
    const fixed = form.getAttribute("data-fixed");
    const body = fixed ? JSON.parse(fixed) : {};
    for (const el of form.elements) {
      if (!el.name) continue;
      if (el.type === "radio" && !el.checked) continue;
      let value = el.type === "checkbox" ? el.checked : el.value;
      const dot = el.name.indexOf(".");
      if (dot > 0) {
        const outer = el.name.slice(0, dot);
        body[outer] = body[outer] || {};
        body[outer][el.name.slice(dot + 1)] = value;
      } else {
        body[el.name] = value;
      }
    }
    return body;
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-api]");
    if (button) {
      ev.preventDefault();
      act(button, button.getAttribute("data-api"), JSON.parse(button.getAttribute("data-body") || "{}"));
      return;
    }
    const bulk = ev.target.closest("button[data-bulk]");
    if (bulk) {
      const name = bulk.getAttribute("data-bulk-name");
      const ids = Array.from(document.querySelectorAll('input[name="' + name + '"]:checked'))
        .map((i) => Number(i.value));
      if (!ids.length) { say("Select at least one row first.", false); return; }
      act(bulk, bulk.getAttribute("data-bulk"), { ids: ids });
    }
  });

  document.addEventListener("change", (ev) => {
    const all = ev.target.closest("input[data-check-all]");
    if (!all) return;
    const name = all.getAttribute("data-check-all");
    document.querySelectorAll('input[name="' + name + '"]').forEach((i) => { i.checked = all.checked; });
  });

  document.addEventListener("submit", (ev) => {
    const form = ev.target.closest("form[data-api]");
    if (!form) return;
    ev.preventDefault();
    const button = form.querySelector('button[type="submit"]') || form;
    act(button, form.getAttribute("data-api"), formBody(form));
  });

  // Overview: poll while the page is open; update progress in place, reload when a state changes.
  const pollUrl = document.body.getAttribute("data-poll");
  if (pollUrl) {
    const every = 1000 * Number(document.body.getAttribute("data-poll-seconds") || 5);
    const tick = async () => {
      try {
        const resp = await fetch(pollUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } });
        if (!resp.ok) return;
        const data = await resp.json();
        for (const p of data.providers || []) {
          const card = document.querySelector('.card[data-provider="' + CSS.escape(p.provider_id) + '"]');
          if (!card) continue;
          if (card.getAttribute("data-state") !== p.display_state) { window.location.reload(); return; }
          const box = card.querySelector('[data-field="progress"]');
          if (box) {
            box.hidden = p.state !== "running";
            const prog = p.progress || {};
            const set = (key, value) => {
              const el = box.querySelector('[data-progress="' + key + '"]');
              if (el) el.textContent = value;
            };
            set("stage", p.current_stage || "—");
            for (const k of ["pages", "records", "photos"]) set(k, Number(prog[k] || 0).toLocaleString("en-US"));
          }
        }
      } catch (e) { /* offline for a moment: try again next tick */ }
    };
    window.setInterval(tick, every);
  }
})();
