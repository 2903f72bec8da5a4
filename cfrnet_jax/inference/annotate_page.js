// The annotation page's script (annotate_page.html; server: inference/annotate.py).
//
// One picture at a time on a canvas: the model's head points are drawn as hollow rings
// (proposals) until accepted, the annotation's points as filled dots; everything is drawn
// in one pass per frame, so thousands of points stay fluid (no DOM element per point).
// Points are kept in the pixels of the picture as displayed (the server sends those
// pixels and their size), and the view (zoom and pan) maps them to the screen.
// Every change is written to localStorage at once (a draft per folder and picture), so a
// reload or moving to another picture loses nothing; a save clears the draft unless a
// change came while the save was on its way.
"use strict";

(() => {
  const HIT_RADIUS = 8; // screen pixels within which a point is under the mouse
  const CLICK_SLOP = 3; // screen pixels a press may move and still be a click
  const UNDO_LIMIT = 500;

  // The token: taken once from ?token=, then kept for this tab and sent with each request.
  const params = new URLSearchParams(location.search);
  let token = params.get("token");
  if (token) {
    sessionStorage.setItem("cfrnet-token", token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  } else {
    token = sessionStorage.getItem("cfrnet-token");
  }

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const context = canvas.getContext("2d");

  const state = {
    folderId: "",
    pictures: [], // [{name, done}]
    index: -1,
    picture: null, // {name, width, height, count, proposals}
    image: null, // ImageBitmap of the picture as displayed
    points: [], // [[x, y]] the annotation, picture pixels
    accepted: false, // proposals taken into `points` (or an annotation was loaded)
    showProposals: true,
    dirty: false,
    edits: {}, // {picture name: changes so far}: a save clears only the draft it saved
    undo: [],
    view: { scale: 1, x: 0, y: 0 }, // screen = picture * scale + (x, y), CSS pixels
    hover: -1,
    drag: null,
    mouse: null, // last mouse position on the canvas, CSS pixels
    loading: 0, // increases with each load: a late answer for another picture is dropped
    drawPending: false,
  };

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (token) headers["X-Token"] = token;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: response.statusText }));
      throw new Error(body.error || `${response.status} ${response.statusText}`);
    }
    return response;
  }

  function setStatus(text, kind = "") {
    $("status").textContent = text;
    $("status").className = kind;
  }

  // Drafts ------------------------------------------------------------------------------

  const draftKey = (name) => `cfrnet-annotate/${state.folderId}/${name}`;

  function readDraft(name) {
    try {
      const draft = JSON.parse(localStorage.getItem(draftKey(name)));
      return draft && Array.isArray(draft.points) ? draft : null;
    } catch {
      return null;
    }
  }

  function changed() {
    state.dirty = true;
    state.edits[state.picture.name] = (state.edits[state.picture.name] || 0) + 1;
    try {
      const draft = { points: state.points, accepted: state.accepted, when: Date.now() };
      localStorage.setItem(draftKey(state.picture.name), JSON.stringify(draft));
      setStatus("Unsaved changes (kept in this browser).", "unsaved");
    } catch (error) {
      setStatus(`Unsaved, and the browser cannot keep a draft (${error.message}): save.`,
                "error");
    }
    renderList();
    showCounts();
    requestDraw();
  }

  function record(step) {
    state.undo.push(step);
    if (state.undo.length > UNDO_LIMIT) state.undo.shift();
  }

  // The list and the counts -------------------------------------------------------------

  function renderList() {
    const list = $("pictures");
    list.replaceChildren(
      ...state.pictures.map((picture, index) => {
        const item = document.createElement("li");
        item.classList.toggle("current", index === state.index);
        item.classList.toggle("done", picture.done);
        item.classList.toggle("draft", readDraft(picture.name) !== null);
        item.dataset.name = picture.name;
        const button = document.createElement("button");
        button.textContent = picture.name;
        button.addEventListener("click", () => open(index));
        item.append(button);
        return item;
      }),
    );
  }

  function showCounts() {
    $("npoints").textContent = String(state.points.length);
    const picture = state.picture;
    $("model").textContent = picture ? picture.count.toFixed(1) : "-";
    $("nproposals").textContent = picture ? String(picture.proposals.length) : "0";
  }

  // Loading a picture -------------------------------------------------------------------

  async function open(index) {
    if (index < 0 || index >= state.pictures.length) return;
    const load = ++state.loading;
    const name = state.pictures[index].name;
    state.index = index;
    renderList();
    setStatus(`Loading ${name} (the model proposes its points)…`);
    document.body.dataset.loaded = "";
    try {
      const query = "?name=" + encodeURIComponent(name);
      const [info, blob] = await Promise.all([
        api("/api/picture" + query).then((r) => r.json()),
        api("/api/image" + query).then((r) => r.blob()),
      ]);
      const image = await createImageBitmap(blob);
      if (load !== state.loading) return;
      if (image.width !== info.width || image.height !== info.height) {
        throw new Error(`the picture shows ${image.width}x${image.height} pixels, ` +
                        `the server says ${info.width}x${info.height}`);
      }
      state.picture = info;
      state.image = image;
      const draft = readDraft(name);
      if (draft) {
        state.points = draft.points;
        state.accepted = Boolean(draft.accepted);
        state.dirty = true;
      } else {
        state.points = info.saved ? info.saved.map((p) => [p[0], p[1]]) : [];
        state.accepted = info.saved !== null;
        state.dirty = false;
      }
      state.undo = [];
      state.hover = -1;
      $("name").textContent = `${name} (${info.width}x${info.height})`;
      $("note").textContent = info.note || "";
      fit();
      showCounts();
      if (draft) setStatus("Unsaved changes from before (kept in this browser).", "unsaved");
      else if (info.saved) setStatus("Saved annotation.");
      else setStatus("The model's proposals: a accepts them all.");
      draw();
      document.body.dataset.loaded = name;
    } catch (error) {
      if (load === state.loading) setStatus(`${name}: ${error.message}`, "error");
    }
  }

  // The view ----------------------------------------------------------------------------

  function resizeCanvas() {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(canvas.clientWidth * ratio);
    canvas.height = Math.round(canvas.clientHeight * ratio);
    requestDraw();
  }

  function fit() {
    if (!state.picture) return;
    const { width, height } = state.picture;
    const scale = Math.min(canvas.clientWidth / width, canvas.clientHeight / height);
    state.view = {
      scale,
      x: (canvas.clientWidth - width * scale) / 2,
      y: (canvas.clientHeight - height * scale) / 2,
    };
    requestDraw();
  }

  function zoom(factor, at) {
    const view = state.view;
    const scale = Math.min(64, Math.max(0.01, view.scale * factor));
    const applied = scale / view.scale;
    view.x = at.x - (at.x - view.x) * applied;
    view.y = at.y - (at.y - view.y) * applied;
    view.scale = scale;
    updateHover();
    requestDraw();
  }

  const toPicture = (at) => [(at.x - state.view.x) / state.view.scale,
                             (at.y - state.view.y) / state.view.scale];

  function onPicture([x, y]) {
    return state.picture && x >= 0 && y >= 0 && x <= state.picture.width &&
           y <= state.picture.height;
  }

  function clamp([x, y]) {
    const { width, height } = state.picture;
    return [Math.min(width, Math.max(0, x)), Math.min(height, Math.max(0, y))];
  }

  function nearest(at) {
    // The point closest to screen position `at` within HIT_RADIUS, or -1.
    const { scale, x, y } = state.view;
    let best = -1;
    let bestDistance = HIT_RADIUS * HIT_RADIUS;
    const points = state.points;
    for (let i = 0; i < points.length; i++) {
      const dx = points[i][0] * scale + x - at.x;
      const dy = points[i][1] * scale + y - at.y;
      const distance = dx * dx + dy * dy;
      if (distance <= bestDistance) {
        best = i;
        bestDistance = distance;
      }
    }
    return best;
  }

  function updateHover() {
    const hover = state.mouse ? nearest(state.mouse) : -1;
    if (hover !== state.hover) {
      state.hover = hover;
      requestDraw();
    }
  }

  // Drawing -----------------------------------------------------------------------------

  function requestDraw() {
    if (state.drawPending) return;
    state.drawPending = true;
    requestAnimationFrame(() => {
      state.drawPending = false;
      draw();
    });
  }

  function draw() {
    const start = performance.now();
    const ratio = canvas.width / Math.max(1, canvas.clientWidth);
    const cssWidth = canvas.clientWidth;
    const cssHeight = canvas.clientHeight;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.fillStyle = "#333";
    context.fillRect(0, 0, cssWidth, cssHeight);
    if (!state.picture || !state.image) return;
    const { scale, x, y } = state.view;
    const { width, height } = state.picture;
    context.imageSmoothingEnabled = scale < 2;
    context.drawImage(state.image, x, y, width * scale, height * scale);
    const radius = Math.max(2.5, Math.min(7, 2.5 * Math.sqrt(scale * 2)));

    function trace(points) {
      // One path for every visible point: one fill and one stroke per kind of point.
      context.beginPath();
      for (let i = 0; i < points.length; i++) {
        const sx = points[i][0] * scale + x;
        const sy = points[i][1] * scale + y;
        if (sx < -radius || sy < -radius || sx > cssWidth + radius || sy > cssHeight + radius) {
          continue;
        }
        context.moveTo(sx + radius, sy);
        context.arc(sx, sy, radius, 0, 2 * Math.PI);
      }
    }

    if (!state.accepted && state.showProposals) {
      trace(state.picture.proposals);
      context.lineWidth = 1.5;
      context.strokeStyle = "#00e5ff";
      context.stroke();
    }
    trace(state.points);
    context.fillStyle = "#ff3b30";
    context.fill();
    context.lineWidth = 1;
    context.strokeStyle = "#fff";
    context.stroke();
    if (state.hover >= 0 && state.hover < state.points.length) {
      const [px, py] = state.points[state.hover];
      context.beginPath();
      context.arc(px * scale + x, py * scale + y, radius + 3, 0, 2 * Math.PI);
      context.lineWidth = 2;
      context.strokeStyle = "#ffeb3b";
      context.stroke();
    }
    canvas.dataset.drawMs = (performance.now() - start).toFixed(3);
  }

  // Editing -----------------------------------------------------------------------------

  function accept() {
    if (!state.picture || state.accepted) return;
    record({ kind: "accept", before: state.points.length });
    for (const [x, y] of state.picture.proposals) state.points.push([x, y]);
    state.accepted = true;
    changed();
  }

  function add(point) {
    state.points.push(point);
    record({ kind: "add" });
    changed();
  }

  function remove(index) {
    if (index < 0 || index >= state.points.length) return;
    const [point] = state.points.splice(index, 1);
    record({ kind: "remove", index, point });
    state.hover = -1;
    changed();
  }

  function undo() {
    const step = state.undo.pop();
    if (!step) {
      setStatus("Nothing to undo.");
      return;
    }
    if (step.kind === "add") state.points.pop();
    else if (step.kind === "remove") state.points.splice(step.index, 0, step.point);
    else if (step.kind === "move") state.points[step.index] = step.from;
    else if (step.kind === "accept") {
      state.points.length = step.before;
      state.accepted = false;
    }
    state.hover = -1;
    changed();
  }

  async function save() {
    const picture = state.picture;
    if (!picture) return;
    const load = state.loading;
    const edits = state.edits[picture.name] || 0;
    setStatus(`Saving ${picture.name}…`);
    try {
      const response = await api("/api/annotation?name=" + encodeURIComponent(picture.name), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ points: state.points }),
      });
      const answer = await response.json();
      state.pictures.find((p) => p.name === picture.name).done = true;
      // No change to this picture since its points were sent (edits of another picture,
      // opened meanwhile, leave its draft to the saved file).
      const unchanged = edits === (state.edits[picture.name] || 0);
      if (unchanged) localStorage.removeItem(draftKey(picture.name));
      if (unchanged && load === state.loading) {
        state.dirty = false;
        const backup = answer.backup ? ` (the old file is kept as ${answer.backup})` : "";
        setStatus(`Saved ${answer.points} points in ${answer.saved}${backup}.`);
        $("note").textContent = "";
      }
      renderList();
    } catch (error) {
      setStatus(`Not saved: ${error.message}`, "error");
    }
  }

  // Mouse and keyboard ------------------------------------------------------------------

  const position = (event) => {
    const box = canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  };

  canvas.addEventListener("contextmenu", (event) => event.preventDefault());

  canvas.addEventListener("mousedown", (event) => {
    if (!state.picture) return;
    const at = position(event);
    state.mouse = at;
    const hit = nearest(at);
    if (event.button === 2 || (event.button === 0 && (event.shiftKey || event.altKey))) {
      if (hit >= 0) remove(hit);
      return;
    }
    if (event.button === 0 && hit >= 0 && !event.ctrlKey) {
      state.drag = { kind: "move", index: hit, from: state.points[hit].slice(), start: at,
                     moved: false };
    } else if (event.button === 0 || event.button === 1) {
      state.drag = { kind: "pan", start: at, view: { ...state.view }, moved: false,
                     click: event.button === 0 };
    }
    event.preventDefault();
  });

  window.addEventListener("mousemove", (event) => {
    const at = position(event);
    state.mouse = at;
    const drag = state.drag;
    if (!drag) {
      updateHover();
      return;
    }
    const dx = at.x - drag.start.x;
    const dy = at.y - drag.start.y;
    if (!drag.moved && dx * dx + dy * dy > CLICK_SLOP * CLICK_SLOP) drag.moved = true;
    if (!drag.moved) return;
    if (drag.kind === "move") {
      state.points[drag.index] = clamp(toPicture(at));
      state.hover = drag.index;
    } else {
      state.view.x = drag.view.x + dx;
      state.view.y = drag.view.y + dy;
    }
    requestDraw();
  });

  window.addEventListener("mouseup", (event) => {
    const drag = state.drag;
    state.drag = null;
    if (!drag) return;
    const at = position(event);
    if (drag.kind === "move" && drag.moved) {
      state.points[drag.index] = clamp(toPicture(at));
      record({ kind: "move", index: drag.index, from: drag.from });
      changed();
    } else if (drag.kind === "pan" && !drag.moved && drag.click) {
      const point = toPicture(at);
      if (onPicture(point)) add(point);
    }
  });

  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoom(Math.exp(-event.deltaY * 0.0015), position(event));
  }, { passive: false });

  const center = () => ({ x: canvas.clientWidth / 2, y: canvas.clientHeight / 2 });

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    const key = event.key;
    const command = event.ctrlKey || event.metaKey;
    let handled = true;
    if (command && (key === "z" || key === "Z")) undo();
    else if (command && (key === "s" || key === "S")) save();
    else if (command || event.altKey) handled = false;
    else if (key === "a") accept();
    else if (key === "z") undo();
    else if (key === "s") save();
    else if (key === "n" || key === "ArrowRight" || key === "PageDown") open(state.index + 1);
    else if (key === "p" || key === "ArrowLeft" || key === "PageUp") open(state.index - 1);
    else if (key === "Delete" || key === "Backspace" || key === "d" || key === "x") {
      remove(state.mouse ? nearest(state.mouse) : -1);
    } else if (key === "+" || key === "=") zoom(1.25, state.mouse || center());
    else if (key === "-") zoom(0.8, state.mouse || center());
    else if (key === "f" || key === "0") fit();
    else if (key === "v") {
      state.showProposals = !state.showProposals;
      requestDraw();
    } else handled = false;
    if (handled) event.preventDefault();
  });

  $("accept").addEventListener("click", accept);
  $("undo").addEventListener("click", undo);
  $("save").addEventListener("click", save);
  $("previous").addEventListener("click", () => open(state.index - 1));
  $("next").addEventListener("click", () => open(state.index + 1));
  $("fit").addEventListener("click", fit);
  new ResizeObserver(resizeCanvas).observe(canvas);

  // Read-only state for tests and benchmarks, which aim the mouse with it.
  window.annotator = {
    view: () => ({ ...state.view }),
    points: () => state.points.map((p) => p.slice()),
    proposals: () => (state.picture ? state.picture.proposals.map((p) => p.slice()) : []),
  };

  async function start() {
    try {
      const listing = await (await api("/api/pictures")).json();
      state.folderId = listing.folder_id;
      state.pictures = listing.pictures;
      $("folder").textContent = `${listing.folder} (${listing.pictures.length} pictures, ` +
                                `label "${listing.label}")`;
      resizeCanvas();
      if (!state.pictures.length) {
        setStatus("The folder holds no picture.", "error");
        return;
      }
      renderList();
      const first = state.pictures.findIndex((p) => !p.done);
      open(first < 0 ? 0 : first);
    } catch (error) {
      setStatus(error.message, "error");
    }
  }

  start();
})();
