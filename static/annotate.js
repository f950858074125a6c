// The annotator workbench. Holds up to two leases: the pair on screen and the next one, fetched while the
// first is read, so an answer moves on at once. Leases are kept alive while the page is open and given back
// when it closes. Every call carries the session's CSRF token. When no pair is free but more are coming
// (the model is preparing them), it says so and keeps asking with a long wait until one arrives.
(() => {
  "use strict";
  const bench = document.getElementById("bench");
  const project = bench.dataset.project;
  const csrf = bench.dataset.csrf;
  const leaseSeconds = Number(bench.dataset.leaseSeconds) || 600;
  const $ = (id) => document.getElementById(id);

  const WAIT_SECONDS = 20;   // how long one request waits for a pair on the server
  const answeredKey = `prefloop:answered:${project}`;

  let queue = [];        // leases held, [0] is on screen
  let answered = Number(sessionStorage.getItem(answeredKey)) || 0;  // answers in this tab, kept over reloads
  let busy = false;      // an answer or undo is being sent
  let prefetching = null;
  let doneReason = null; // why the last request brought no pair: "budget", "coming" or "empty"
  let coming = null;     // what the model is preparing, and when we heard it
  let waitTicker = null;
  let shownAt = performance.now();  // when the pair on screen was first shown: time per label counts from it

  function setAnswered(n) {
    answered = Math.max(0, n);
    sessionStorage.setItem(answeredKey, String(answered));
  }

  async function call(path, body) {
    const resp = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: body === undefined ? "" : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    const text = await resp.text();
    if (text) { try { data = JSON.parse(text); } catch (_) { data = { error: text }; } }
    if (resp.status === 401) { location.href = "/login"; }
    if (!resp.ok) { const e = new Error((data && data.error) || resp.statusText); e.status = resp.status; throw e; }
    return data;
  }

  function say(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  // The budget left, as the last answer made it: a response to a request sent before that answer (a
  // long wait, say) is older news and does not count.
  let remaining = undefined;
  let answerCount = 0;
  function setRemaining(value) {
    remaining = value;
    $("remaining").textContent = value === null || value === undefined ? "no limit" : String(value);
  }

  function showWaiting() {
    const secs = coming ? Math.round((coming.round_seconds || 0) + (Date.now() - coming.at) / 1000) : 0;
    let text = "Fetching the next pair.";
    if (coming && coming.pairs_coming > 0) {
      text = `The model is making ${coming.pairs_coming} pair${coming.pairs_coming === 1 ? "" : "s"}: ${secs} s so far.`;
    } else if (coming && coming.generating) {
      text = "The model is about to prepare the next pairs.";
    } else if (coming) {
      text = "The pairs left are with other annotators; one comes back here if its lease runs out or is given back.";
    }
    $("waiting-text").textContent = text;
  }

  function render() {
    $("answered").textContent = String(answered);
    if (stopped && !queue[0]) return;
    const cur = queue[0];
    $("loading").hidden = true;
    // No pair on screen, but one is on its way (a request is out, or the model is preparing pairs).
    const waiting = !cur && (doneReason === "coming" || prefetching !== null);
    $("waiting").hidden = !waiting;
    if (waiting && !waitTicker) waitTicker = setInterval(showWaiting, 1000);
    if (!waiting && waitTicker) { clearInterval(waitTicker); waitTicker = null; }
    if (waiting) {
      $("work").hidden = true;
      $("done").hidden = true;
      showWaiting();
      return;
    }
    if (!cur) {
      $("work").hidden = true;
      $("done").hidden = false;
      if (doneReason === "budget") {
        $("done-title").textContent = "The label budget is spent";
        $("done-text").textContent = "Thank you: this project has all the labels it asked for.";
      } else {
        $("done-title").textContent = "Nothing left to label";
        $("done-text").textContent = "Every pair open to you has an answer. New pairs may arrive later.";
      }
      return;
    }
    $("done").hidden = true;
    $("work").hidden = false;
    if (bench.dataset.shown !== cur.lease_id) {
      $("prompt").innerHTML = cur.prompt_html;   // rendered and escaped on the server
      $("left").innerHTML = cur.left_html;
      $("right").innerHTML = cur.right_html;
      $("left").scrollTop = 0;
      $("right").scrollTop = 0;
      $("rationale").value = "";
      bench.dataset.shown = cur.lease_id;
      bench.dataset.pair = cur.pair_id;
      shownAt = performance.now();
    }
  }

  async function fetchNext(wait) {
    const sentAfter = answerCount;
    const data = await call(`/ui/api/projects/${project}/next?wait=${wait}`,
      { exclude: queue.map((l) => l.lease_id) });
    if (sentAfter === answerCount) setRemaining(data.remaining);
    if (data.lease && !queue.some((l) => l.lease_id === data.lease.lease_id)) queue.push(data.lease);
    doneReason = data.lease ? null : data.reason;
    coming = data.lease ? null : {
      generating: data.generating, pairs_coming: data.pairs_coming, round_seconds: data.round_seconds, at: Date.now(),
    };
    return data.lease;
  }

  // Keeps one pair ready behind the one on screen; while pairs are coming, keeps asking (each request
  // waits on the server) until one arrives.
  // The project will serve this annotator nothing more (403: no longer assigned, or below the gold
  // bar): say why, and stop asking.
  let stopped = false;
  function stop(message) {
    stopped = true;
    doneReason = "stopped";
    $("loading").hidden = true;
    $("work").hidden = true;
    $("waiting").hidden = true;
    $("done").hidden = false;
    $("done-title").textContent = "No more pairs for you here";
    $("done-text").textContent = message;
  }

  function prefetch() {
    if (stopped || prefetching || queue.length >= 2) return prefetching;
    let failed = false;
    prefetching = fetchNext(WAIT_SECONDS)
      .catch((e) => {
        if (e.status === 403) { stop(e.message); return; }
        failed = true;
        say(`Could not fetch the next pair: ${e.message}`, true);
      })
      .finally(() => {
        prefetching = null;
        render();
        if (!stopped && queue.length < 2 && (doneReason === "coming" || failed)) setTimeout(prefetch, failed ? 5000 : 250);
      });
    return prefetching;
  }

  async function answer(choice, rationale) {
    if (busy || !queue[0]) return;
    busy = true;
    const lease = queue[0];
    const text = rationale !== undefined ? rationale : $("rationale").value.trim();
    try {
      const seconds = Math.max(0, (performance.now() - shownAt) / 1000);
      await call(`/api/v1/leases/${lease.lease_id}/judgment`, { choice, rationale: text || null, seconds });
      queue.shift();
      setAnswered(answered + 1);
      answerCount += 1;
      if (choice !== "skip" && typeof remaining === "number") setRemaining(Math.max(0, remaining - 1));
      say(`Saved: ${label(choice)}.`);
      prefetch();
      render();
    } catch (e) {
      if (e.status === 409) {
        say("That pair's lease ran out and went to someone else; here is another.", true);
        queue.shift();
        prefetch();
        render();
      } else {
        say(`Not saved: ${e.message}`, true);
      }
    } finally {
      busy = false;
    }
  }

  function label(choice) {
    return { left: "left is better", right: "right is better", tie: "tie", both_bad: "both bad", skip: "skipped" }[choice];
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const data = await call(`/ui/api/projects/${project}/undo`);
      setAnswered(answered - 1);
      answerCount += 1;
      if (data.undone_choice !== "skip" && typeof remaining === "number") setRemaining(remaining + 1);
      if (data.lease) {
        queue = queue.filter((l) => l.lease_id !== data.lease.lease_id);
        queue.unshift(data.lease);
        // Hold at most two pairs: give the furthest one back for others.
        while (queue.length > 2) release(queue.pop(), false);
        say(`Undone (${label(data.undone_choice)}): answer this pair again.`);
      } else {
        say(`Undone (${label(data.undone_choice)}); that pair is with someone else now.`);
      }
      render();
    } catch (e) {
      say(e.status === 404 ? "Nothing to undo." : `Undo failed: ${e.message}`, e.status !== 404);
    } finally {
      busy = false;
    }
  }

  function release(lease, beacon) {
    const url = `/api/v1/leases/${lease.lease_id}/release?csrf=${encodeURIComponent(csrf)}`;
    if (beacon && navigator.sendBeacon) navigator.sendBeacon(url);
    else fetch(url, { method: "POST", credentials: "same-origin", keepalive: true });
  }

  function heartbeat() {
    for (const lease of queue) {
      call(`/api/v1/leases/${lease.lease_id}/heartbeat`).catch((e) => {
        if (e.status !== 409) return;
        // The lease ran out while the page slept and the pair went to someone else: move on.
        const wasShown = queue[0] === lease;
        queue = queue.filter((l) => l !== lease);
        if (wasShown) say("That pair's lease ran out and went to someone else; here is another.", true);
        render();
        prefetch();
      });
    }
  }

  function openDialog(id) {
    const d = $(id);
    if (!d.open) d.showModal();
  }

  function flag() {
    if (!queue[0]) return;
    $("flag-note").value = "";
    openDialog("flag-dialog");
    $("flag-note").focus();
  }

  $("flag-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const note = $("flag-note").value.trim();
    if (!note || !queue[0]) return;
    $("flag-dialog").close();
    try {
      await call(`/ui/api/leases/${queue[0].lease_id}/flag`, { note });
      await answer("skip", `flagged: ${note}`);
      say("Flagged and skipped. Thank you.");
    } catch (e) {
      say(`Flag not saved: ${e.message}`, true);
    }
  });
  $("flag-cancel").addEventListener("click", () => $("flag-dialog").close());

  document.querySelectorAll("[data-choice]").forEach((b) =>
    b.addEventListener("click", () => answer(b.dataset.choice)));
  $("undo").addEventListener("click", undo);
  $("undo-done").addEventListener("click", undo);
  $("flag").addEventListener("click", flag);
  $("show-help").addEventListener("click", () => openDialog("help"));
  $("show-guidelines").addEventListener("click", () => openDialog("guidelines"));

  const keys = {
    "1": () => answer("left"), ArrowLeft: () => answer("left"),
    "2": () => answer("right"), ArrowRight: () => answer("right"),
    t: () => answer("tie"), b: () => answer("both_bad"), s: () => answer("skip"),
    u: undo, f: flag, g: () => openDialog("guidelines"), "?": () => openDialog("help"),
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t instanceof HTMLTextAreaElement || t instanceof HTMLInputElement || t instanceof HTMLSelectElement) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    if (document.querySelector("dialog[open]")) return;
    const action = keys[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
    if (action) { ev.preventDefault(); action(); }
  });

  // Long completions scroll together, so the same part of both is in view.
  function sync(from, to) {
    from.addEventListener("scroll", () => {
      if (from.dataset.synced) { delete from.dataset.synced; return; }
      const span = from.scrollHeight - from.clientHeight;
      const room = to.scrollHeight - to.clientHeight;
      if (span <= 0 || room <= 0) return;
      const target = (from.scrollTop / span) * room;
      if (Math.abs(to.scrollTop - target) < 1) return;
      to.dataset.synced = "1";
      to.scrollTop = target;
    });
  }
  sync($("left"), $("right"));
  sync($("right"), $("left"));

  setInterval(heartbeat, Math.max(5, Math.min(60, leaseSeconds / 3)) * 1000);
  window.addEventListener("pagehide", () => { queue.forEach((l) => release(l, true)); queue = []; });

  // The guidelines open by themselves on an annotator's first visit to a project.
  const seenKey = `prefloop:guidelines-seen:${project}`;
  if (bench.dataset.guidelines && !localStorage.getItem(seenKey)) {
    openDialog("guidelines");
    localStorage.setItem(seenKey, "1");
  }

  fetchNext(0)
    .then(() => { render(); prefetch(); })
    .catch((e) => {
      if (e.status === 403) stop(e.message);
      else $("loading").textContent = `Could not fetch a pair: ${e.message}`;
    });
})();
