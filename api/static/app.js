// trainproof dashboard: vanilla JS over the /v1 REST API, live through /v1/events (SSE).
"use strict";
const LEVELS = ["trace", "op", "chunk", "element", "partial", "one-step", "resolved"];
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const short = (h) => (h ? esc(h.slice(0, 10)) + "…" : "—");
const badge = (s) => `<span class="badge ${esc(s)}" data-status="${esc(s)}">${esc(s)}</span>`;
// a job's bundle check (docs/protocol.md §7): unavailable / invalid = unverifiable
const BUNDLE_TEXT = { verified: "inputs verified", unavailable: "unverifiable: inputs unavailable",
  invalid: "unverifiable: inputs invalid", unchecked: "inputs unchecked" };
const bundleBadge = (b) => {
  const what = [b.part, b.why].filter(Boolean).join(": ") || b.scope || "";
  return `<span class="bundle ${esc(b.status)}" data-bundle="${esc(b.status)}" title="${esc(what)}">${esc(BUNDLE_TEXT[b.status] || b.status)}</span>`;
};
// times in UTC, saying so (the local time on hover); amounts in ETH (the exact wei on hover)
const when = (t) => {
  if (!t) return "—";
  const d = new Date(t * 1000);
  return `<time datetime="${d.toISOString()}" title="${esc(d.toString())}">${d.toISOString().replace("T", " ").slice(0, 19)} UTC</time>`;
};
const WEI_PER_ETH = 10n ** 18n;
const eth = (wei) => {
  if (wei === null || wei === undefined) return "—";
  const w = BigInt(wei);
  const sign = w < 0n ? "-" : "";
  const abs = w < 0n ? -w : w;
  const frac = (abs % WEI_PER_ETH).toString().padStart(18, "0").replace(/0+$/, "");
  const text = `${sign}${abs / WEI_PER_ETH}${frac ? "." + frac : ""}`;
  return `<span class="eth" data-wei="${esc(wei)}" title="${esc(wei)} wei">${text} ETH</span>`;
};

async function api(path) {
  const r = await fetch("/v1" + path);
  if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
  return r.json();
}

async function jobList() {
  const status = $("#f-status").value;
  const page = await api("/jobs?limit=100" + (status ? "&status=" + status : ""));
  const rows = page.items.map((j) => `<tr class="job" data-id="${j.id}">
    <td><a href="#/jobs/${j.id}">#${j.id}</a></td><td>${badge(j.status)}</td>
    <td><code>${short(j.trainer)}</code></td><td><code>${short(j.requester)}</code></td>
    <td>${j.steps} / ${j.every}</td><td class="reward">${eth(j.reward)}</td><td>${eth(j.stake)}</td>
    <td>${j.open_games} / ${j.games_total}</td>
    <td>${when(j.challenge_deadline)}</td><td>${bundleBadge(j.bundle)}</td></tr>`).join("");
  return `<p id="job-count">${page.total} jobs</p><table id="jobs"><thead><tr><th>job</th><th>status</th>
    <th>trainer</th><th>requester</th><th>steps / k</th><th>reward</th><th>stake</th><th>open / all disputes</th>
    <th>challenge deadline</th><th>bundle</th></tr></thead><tbody>${rows}</tbody></table>`;
}

async function jobView(id) {
  const j = await api("/jobs/" + id);
  const cps = await api(`/jobs/${id}/checkpoints`);
  const cov = await api(`/jobs/${id}/coverage`);
  const timeline = j.timeline.map((e) => `<tr><td>${e.block_number}</td><td>${when(e.timestamp)}</td>
    <td>${esc(e.event)}</td><td>${e.game_id ? `<a href="#/disputes/${e.game_id}">game ${e.game_id}</a>` : ""}</td></tr>`).join("");
  const games = j.games.map((g) => `<li><a href="#/disputes/${g.id}">game ${g.id}</a> interval ${g.interval}:
    level <b>${esc(g.level)}</b>${g.trainer_won === null ? "" : g.trainer_won ? " — trainer won" : " — challenger won"}</li>`).join("");
  return `<h2>job #${j.id} ${badge(j.status)}</h2>
    <section><b>run root</b> <code>${esc(j.run_root || "—")}</code><br>
    <b>trainer</b> <code>${esc(j.trainer || "—")}</code> · <b>reward</b> <span id="reward">${eth(j.reward)}</span> ·
    <b>stake</b> ${eth(j.stake)} · <b>bond</b> ${eth(j.bond)} ·
    <b>challenge deadline</b> ${when(j.challenge_deadline)}<br>
    <b>bundle</b> <span id="bundle">${bundleBadge(j.bundle)} <code>${short(j.bundle.address)}</code>
    ${j.bundle.part ? `— <b>${esc(j.bundle.part)}</b>: ${esc(j.bundle.why)}` : j.bundle.why ? `— ${esc(j.bundle.why)}` : ""}
    ${j.bundle.scope ? `(${esc(j.bundle.scope)})` : ""} · checked ${when(j.bundle.checked_at)}</span><br>
    <b>bonded coverage</b> <span title="signers that have posted a dispute bond or a stake">≥1 bonded challenger: ${(cov.bonded_covered_1 * 100).toFixed(0)} %, ≥3: ${(cov.bonded_covered_3 * 100).toFixed(0)} %</span><br>
    <b>raw coverage</b> <span title="any key that signed, unvetted">≥1 key: ${(cov.covered_1 * 100).toFixed(0)} %, ≥3: ${(cov.covered_3 * 100).toFixed(0)} %</span></section>
    <h3>timeline</h3><table id="timeline"><thead><tr><th>block</th><th>time</th><th>event</th><th></th></tr></thead><tbody>${timeline}</tbody></table>
    <h3>disputes</h3><ul id="games">${games || "<li>none</li>"}</ul>
    <h3>checkpoints</h3><ol start="0">${cps.checkpoints.map((c) => `<li>step ${c.step}: <code>${short(c.root)}</code></li>`).join("")}</ol>`;
}

async function disputeView(id) {
  const g = await api("/disputes/" + id);
  const cur = LEVELS.indexOf(g.level);
  const levels = LEVELS.map((lv, i) => `<li class="${i < cur ? "done" : i === cur ? "current" : ""}" data-level="${lv}">${lv}</li>`).join("");
  const hist = g.levels.map((lv) => `<h4>${esc(lv.level)}</h4><table class="moves"><tbody>${lv.moves.map((m) => `<tr><td>seq ${m.seq}</td>
    <td>→ ${esc(m.phase)}</td><td>[${m.lo}, ${m.hi})</td><td>${m.values.length} values</td><td>block ${m.block_number}</td></tr>`).join("")}</tbody></table>`).join("");
  const verdict = g.trainer_won === null ? (g.level === "resolved" ? "abandoned" : `${esc(g.to_move)} to move`)
    : g.trainer_won ? "trainer won" : "challenger won";
  return `<h2 id="dispute" data-level="${esc(g.level)}">dispute ${g.id} — <a href="#/jobs/${g.job_id}">job #${g.job_id}</a>, interval ${g.interval}</h2>
    <ol class="levels" id="levels">${levels}</ol>
    <section><b>phase</b> <span id="phase">${esc(g.phase)}</span> · <b>move</b> ${g.seq} · <b>range</b> [${g.lo}, ${g.hi}) ·
    <b id="verdict">${verdict}</b>${g.reason ? " (" + esc(g.reason) + ")" : ""}
    <div class="clocks"><span>trainer clock ${g.trainer_clock_left} s</span><span>challenger clock ${g.challenger_clock_left} s</span></div></section>
    <h3>history</h3>${hist}`;
}

async function render() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  $("#filters").style.display = parts[0] ? "none" : "";
  try {
    let html;
    if (parts[0] === "jobs" && parts[1]) html = await jobView(parts[1]);
    else if (parts[0] === "disputes" && parts[1]) html = await disputeView(parts[1]);
    else html = await jobList();
    $("#view").innerHTML = html;
    const idx = await api("/index");
    $("#tip").textContent = `block ${idx.tip}`;
  } catch (e) {
    $("#view").innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function live() {
  if (!window.EventSource) return;
  const es = new EventSource("/v1/events");
  es.onopen = () => { $("#live").className = "live on"; };
  es.onerror = () => { $("#live").className = "live off"; };
  let pending = null;
  const refresh = () => { clearTimeout(pending); pending = setTimeout(render, 150); };
  ["job", "game", "reorg"].forEach((k) => es.addEventListener(k, refresh));
}

window.addEventListener("hashchange", render);
$("#f-status").addEventListener("change", render);
render();
// ?live=0 turns the event stream off (e.g. for headless snapshots)
if (new URLSearchParams(location.search).get("live") !== "0") live();
