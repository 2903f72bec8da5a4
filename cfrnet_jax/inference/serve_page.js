// The script of the counting page (serve_page.html), served as /serve_page.js: a file of
// its own, so that the page runs under a content-security policy without inline script
// (inference/http_limits.py).
"use strict";
const state = { pictures: [], results: new Map(), maxBytes: Infinity };
// The server's limits first: every upload waits for them.
state.queue = fetch("/api/info").then(r => r.json()).then(info => {
  state.maxBytes = info.max_upload_mb * 1e6;
  document.getElementById("info").textContent =
    `Up to ${info.max_upload_mb} MB and ${info.max_megapixels} megapixels a picture.`;
}).catch(() => {});

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;"}[c]));
}

function addFiles(files) {
  for (const file of files) {
    const picture = { id: state.pictures.length, file };
    state.pictures.push(picture);
    count(picture);
  }
}

function count(picture) {
  // One request at a time: the server counts pictures one by one anyway. A failure of
  // one picture is shown on its card and does not hold up the next.
  state.queue = state.queue.then(() => send(picture)).catch(error => showError(picture, error));
}

function showError(picture, error) {
  const card = cardFor(picture);
  card.className = "card error";
  card.querySelector(".body").innerHTML =
    `<div class="message">${escapeHtml(error.message)}</div>`;
  state.results.delete(picture.id);
  renderTable();
}

async function send(picture) {
  const card = cardFor(picture);
  card.className = "card";
  card.querySelector(".body").innerHTML = "<span class='hint'>Counting...</span>";
  const params = new URLSearchParams({ name: picture.file.name });
  const regions = document.getElementById("regions").value.trim();
  if (regions) params.set("regions", regions);
  if (picture.file.size > state.maxBytes) {
    // The server would refuse it unread; say so here rather than after a dropped upload.
    throw new Error(`${picture.file.name} is ${(picture.file.size / 1e6).toFixed(1)} MB; ` +
      `this server takes pictures of at most ${state.maxBytes / 1e6} MB.`);
  }
  let response;
  for (let attempt = 1; ; attempt += 1) {
    response = await fetch("/api/count?" + params, { method: "POST", body: picture.file });
    // 503: other clients fill the server's queue; wait as long as it says, a few times.
    if (response.status !== 503 || attempt === 5) break;
    const wait = Math.min(Number(response.headers.get("Retry-After")) || 2, 60);
    card.querySelector(".body").innerHTML =
      `<span class='hint'>The server is busy; trying again in ${wait} s...</span>`;
    await new Promise(resolve => setTimeout(resolve, wait * 1000));
  }
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  state.results.set(picture.id, answer);
  renderCard(picture, card, answer);
  renderTable();
}

function cardFor(picture) {
  let card = document.getElementById("card-" + picture.id);
  if (!card) {
    card = document.createElement("div");
    card.id = "card-" + picture.id;
    card.dataset.name = picture.file.name;
    card.innerHTML = `<strong>${escapeHtml(picture.file.name)}</strong><div class="body"></div>`;
    document.getElementById("cards").appendChild(card);
  }
  return card;
}

function renderCard(picture, card, answer) {
  const regionText = Object.entries(answer.regions)
    .map(([name, value]) => `${escapeHtml(name)}: ${value.toFixed(1)}`).join(", ");
  card.querySelector(".body").innerHTML = `
    <div class="count">${answer.count.toFixed(1)}</div>
    <div class="hint">people; ${answer.heads} heads located; ${answer.width}x${answer.height}
      pixels; ${answer.tiles} tile(s); ${answer.seconds.toFixed(2)} s</div>
    ${regionText ? `<div class="regions">Regions: ${regionText}</div>` : ""}
    <div class="stage"><img class="overlay" alt="density overlay of ${escapeHtml(answer.name)}"
      src="${answer.overlay}"><svg viewBox="0 0 ${answer.width} ${answer.height}"
      preserveAspectRatio="none"><polyline fill="rgba(255,255,0,.25)" stroke="yellow"
      stroke-width="${Math.max(answer.width, answer.height) / 300}" points=""/></svg></div>
    <div><button class="draw">Draw a region</button>
      <button class="finish" disabled>Finish region</button></div>`;
  const stage = card.querySelector(".stage");
  const line = stage.querySelector("polyline");
  const drawButton = card.querySelector(".draw");
  const finishButton = card.querySelector(".finish");
  let corners = null;
  drawButton.onclick = () => {
    corners = [];
    line.setAttribute("points", "");
    stage.classList.add("drawing");
    finishButton.disabled = false;
  };
  stage.onclick = event => {
    if (!corners) return;
    const box = stage.getBoundingClientRect();
    const x = (event.clientX - box.left) / box.width * answer.width;
    const y = (event.clientY - box.top) / box.height * answer.height;
    corners.push([Math.round(x), Math.round(y)]);
    line.setAttribute("points", corners.map(c => c.join(",")).join(" "));
  };
  finishButton.onclick = () => {
    stage.classList.remove("drawing");
    finishButton.disabled = true;
    if (corners && corners.length >= 3) {
      const field = document.getElementById("regions");
      let spec = {};
      try {
        spec = field.value.trim() ? JSON.parse(field.value) : {};
      } catch (error) {
        alert("The regions box does not hold valid JSON; fix it, then draw again.");
        corners = null;
        return;
      }
      if (Array.isArray(spec)) spec = Object.fromEntries(spec.map(r => [r.name, r.polygon]));
      let number = Object.keys(spec).length + 1;
      while (("region " + number) in spec) number += 1;
      spec["region " + number] = corners;
      field.value = JSON.stringify(spec);
      count(picture);  // this picture; "Count again" applies the regions to every picture
    }
    corners = null;
  };
}

function tableRows() {
  const names = new Set();
  for (const answer of state.results.values()) Object.keys(answer.regions).forEach(n => names.add(n));
  const regionNames = [...names];
  const header = ["picture", "count", "heads", "width", "height", "tiles",
    ...regionNames.map(n => "region:" + n)];
  const rows = [...state.results.values()].map(a => [a.name, a.count.toFixed(2), a.heads,
    a.width, a.height, a.tiles, ...regionNames.map(n => n in a.regions ? a.regions[n].toFixed(2) : "")]);
  return [header, rows];
}

function renderTable() {
  const body = document.querySelector("#results tbody");
  body.innerHTML = "";
  for (const answer of state.results.values()) {
    const regions = Object.entries(answer.regions)
      .map(([name, value]) => `${name}: ${value.toFixed(1)}`).join(", ");
    const row = document.createElement("tr");
    row.innerHTML = [answer.name, answer.count.toFixed(1), answer.heads, answer.width,
      answer.height, answer.tiles, regions].map(v => `<td>${escapeHtml(v)}</td>`).join("");
    body.appendChild(row);
  }
  document.getElementById("download").disabled = state.results.size === 0;
}

function csvField(value) {
  let text = String(value);
  // A text cell that a spreadsheet would read as a formula is kept as text.
  if (/^[=+\-@]/.test(text) && isNaN(Number(text))) text = "'" + text;
  return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

document.getElementById("download").onclick = () => {
  const [header, rows] = tableRows();
  const text = [header, ...rows].map(r => r.map(csvField).join(",")).join("\n") + "\n";
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  link.download = "counts.csv";
  link.click();
};
document.getElementById("recount").onclick = () => state.pictures.forEach(count);
document.getElementById("files").onchange = event => addFiles(event.target.files);
const drop = document.getElementById("drop");
drop.ondragover = event => { event.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = event => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
};
