// Live restore progress: poll the status URL (journal + Celery task state) until the txn is final.
(function () {
  "use strict";
  var root = document.getElementById("progress");
  if (!root) { return; }
  var url = root.getAttribute("data-status-url");
  var BADGES = { ok: "success", failed: "danger", running: "primary", interrupted: "warning" };
  var POLL_MS = 1000;

  function setText(el, text) { if (el) { el.textContent = text; } }

  function renderStep(step) {
    var row = root.querySelector('tr[data-step="' + step.step + '"]');
    if (!row) { return; }
    var state = step.status;
    if (state === "running" && step.total) { state += " " + Math.floor(100 * (step.done || 0) / step.total) + "%"; }
    var badge = document.createElement("span");
    badge.className = "badge badge-" + (BADGES[step.status] || "secondary");
    badge.textContent = state;
    var cell = row.querySelector(".state");
    cell.replaceChildren(badge);
    setText(row.querySelector(".duration"), step.duration_sec == null ? "" : step.duration_sec.toFixed(2) + " s");
    setText(row.querySelector(".detail"), step.error || step.task_error || step.message || step.detail || "");
  }

  function renderList(id, lines) {
    var box = document.getElementById(id);
    if (!box) { return; }
    var list = box.querySelector("ul");
    list.replaceChildren.apply(list, (lines || []).map(function (line) {
      var item = document.createElement("li");
      item.textContent = line;
      return item;
    }));
    box.hidden = !(lines && lines.length);
  }

  function renderOutcome(s) {
    var bar = document.getElementById("bar");
    bar.style.width = s.percent + "%";
    bar.setAttribute("aria-valuenow", s.percent);
    bar.textContent = s.percent + "%";
    var outcome = document.getElementById("outcome");
    if (s.status === "succeeded") {
      bar.className = "progress-bar bg-success";
      outcome.className = "alert alert-success";
      outcome.textContent = "Restore succeeded in " + (s.duration_sec || 0).toFixed(1) + " s: the app is ready again.";
    } else if (s.status === "succeeded_with_warnings") {
      bar.className = "progress-bar bg-warning";
      outcome.className = "alert alert-warning";
      outcome.textContent = "Restore succeeded WITH WARNINGS in " + (s.duration_sec || 0).toFixed(1) +
        " s: the app is ready again, but read the warnings below.";
    } else if (s.status === "failed") {
      bar.className = "progress-bar bg-danger";
      outcome.className = "alert alert-danger";
      outcome.textContent = "Restore failed: " + (s.error || "see the steps below");
    } else {
      outcome.className = "alert alert-info";
      outcome.textContent = "Restore " + s.status + (s.current_step ? ": step " + s.current_step : "") + "…";
    }
    renderList("warnings", s.warnings);
    renderList("notes", s.notes);
    root.setAttribute("data-final", s.final ? "true" : "false");
    root.setAttribute("data-status", s.status);
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.json();
      })
      .then(function (s) {
        s.steps.forEach(renderStep);
        renderOutcome(s);
        if (!s.final) { setTimeout(poll, POLL_MS); }
      })
      .catch(function () { setTimeout(poll, POLL_MS * 3); });  // a restarting web process: keep trying
  }

  if (root.getAttribute("data-final") !== "true") { poll(); }
})();
