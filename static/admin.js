// The page behaviour the Content-Security-Policy keeps out of the HTML (no inline script, handlers or
// style attributes): bar widths from data-pct, selecting a printed sign-in link, confirming a form.
(() => {
  "use strict";
  for (const bar of document.querySelectorAll("[data-pct]")) {
    bar.style.width = `${Number(bar.dataset.pct) || 0}%`;
  }
  for (const box of document.querySelectorAll("input.link-box")) {
    box.addEventListener("click", () => box.select());
  }
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const box = document.getElementById(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(box.value);
        button.textContent = "Copied";
      } catch (_) {
        box.select();  // no clipboard access (plain http): selected, for Ctrl+C
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }
})();

// Dashboard import: reads the chosen file and sends it to the REST import call; shows what was stored and
// every rejected line by its number.
(() => {
  "use strict";
  const form = document.getElementById("import-form");
  if (!form) return;
  const out = document.getElementById("import-result");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = document.getElementById("import-file").files[0];
    if (!file) return;
    const kind = form.querySelector("input[name=kind]:checked").value;
    out.textContent = "Importing…";
    try {
      const resp = await fetch(`/api/v1/projects/${form.dataset.project}/${kind}`, {
        method: "POST",
        headers: { "content-type": "application/x-ndjson", "x-csrf-token": form.dataset.csrf },
        body: file,
        credentials: "same-origin",
      });
      const data = await resp.json();
      out.replaceChildren();
      if (!resp.ok) {
        const p = document.createElement("p");
        p.className = "error";
        p.textContent = `Import refused: ${data.error}`;
        out.append(p);
        return;
      }
      const p = document.createElement("p");
      p.className = "import-summary";
      p.textContent = `${data.inserted} stored, ${data.duplicates} already there, ${data.rejected.length} rejected.`;
      out.append(p);
      if (data.rejected.length) {
        const ul = document.createElement("ul");
        ul.className = "rejected";
        for (const r of data.rejected.slice(0, 200)) {
          const li = document.createElement("li");
          li.textContent = `line ${r.line}: ${r.error}`;
          ul.append(li);
        }
        out.append(ul);
      }
    } catch (e) {
      out.textContent = `Import failed: ${e.message}`;
    }
  });
})();

// Training progress: while a run is queued or running, poll it, update its row and redraw the loss chart;
// reload once it ends so the charts show the new version.
(() => {
  "use strict";
  const rows = document.querySelectorAll("tr[data-run-id]");
  if (!rows.length) return;
  const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "–");
  const poll = async () => {
    let finished = false;
    for (const row of rows) {
      try {
        const resp = await fetch(`/api/v1/training-runs/${row.dataset.runId}`, { credentials: "same-origin" });
        if (!resp.ok) continue;
        const run = await resp.json();
        row.querySelector(".run-status").textContent = run.status + (run.error ? `: ${run.error}` : "");
        if (run.total_steps > 0) row.querySelector(".run-step").textContent = `${run.step} / ${run.total_steps}`;
        row.querySelector(".run-loss").textContent = fmt(run.metrics.loss);
        row.querySelector(".run-margin").textContent = fmt(run.metrics["rewards/margins"]);
        row.querySelector(".run-accuracy").textContent = fmt(run.metrics["rewards/accuracies"]);
        if (["succeeded", "failed", "cancelled"].includes(run.status)) finished = true;
      } catch (_) { /* the next poll tries again */ }
    }
    const chart = document.getElementById("loss-chart");
    if (chart && !finished) {
      try {
        const resp = await fetch(chart.dataset.src, { credentials: "same-origin" });
        if (resp.ok) chart.innerHTML = await resp.text();
      } catch (_) { /* the next poll tries again */ }
    }
    if (finished) window.location.reload();
    else setTimeout(poll, 3000);
  };
  setTimeout(poll, 3000);
})();
