// The dashboard's one script. No framework, no build step: every write goes to the REST API
// with the session cookie and the page's CSRF token; what may be done is decided by the API.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const init = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(url, init);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const detail = data && data.detail;
    throw new Error(`${r.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return data;
}

// A form's data-* attribute. Not form.dataset: a field named "dataset" would shadow it.
const attr = (el, name) => el.getAttribute(`data-${name}`);

// "/ui/training/{id}" with fields of the API's answer.
const fill = (template, data) =>
  template.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(data && data[k] !== undefined ? data[k] : ""));

function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  // A numeric next key ("models.0.model") makes a list, so forms can build arrays of objects.
  keys.slice(0, -1).forEach((k, i) => { o = o[k] = o[k] || (/^\d+$/.test(keys[i + 1]) ? [] : {}); });
  o[keys[keys.length - 1]] = value;
}

// Form fields -> JSON body: dotted names nest; data-type number | bool | list | map | json;
// share(s): a device count or a percentage ("1", "25%"), one or a comma-separated list;
// data-split="a,b" splits "x|y" into two fields; empty text fields are left out.
const share = (text) => (/^\d+$/.test(text.trim()) ? Number(text) : text.trim());

function formBody(form) {
  const body = {};
  for (const el of form.elements) {
    if (!el.name || el.type === "submit" || el.disabled) continue;
    const type = el.dataset.type || "";
    let value;
    if (type === "bool") value = el.checked;
    else if (el.type === "checkbox") { if (!el.checked) continue; value = el.value; }
    else if (el.value === "" && !el.dataset.keepEmpty) continue;
    else if (type === "number") value = Number(el.value);
    else if (type === "share") value = share(el.value);
    else if (type === "shares") value = el.value.split(",").map((s) => s.trim()).filter(Boolean).map(share);
    else if (type === "list") value = el.value.split(",").map((s) => s.trim()).filter(Boolean);
    else if (type === "map") {
      value = {};
      el.value.split(",").map((s) => s.trim()).filter(Boolean).forEach((kv) => {
        const i = kv.indexOf("=");
        if (i < 1) throw new Error(`${el.name}: "${kv}" is not key=value`);
        value[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
      });
    } else if (type === "json") value = JSON.parse(el.value);
    else value = el.value;
    if (el.dataset.split) {
      const names = el.dataset.split.split(",");
      const parts = String(value).split("|");
      names.forEach((n, i) => setPath(body, n, parts[i]));
    } else setPath(body, el.name, value);
  }
  return body;
}

function showError(form, err) {
  const out = form.querySelector(".form-error");
  if (out) out.textContent = err.message;
}

function download(name, data) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function bindApiForms() {
  document.querySelectorAll("form[data-api]").forEach((form) => {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showError(form, { message: "" });
      try {
        const method = attr(form, "method") || "POST";
        const data = await api(method, attr(form, "api"), method === "DELETE" ? undefined : formBody(form));
        if (attr(form, "show")) form.querySelector("output").textContent = data[attr(form, "show")];
        if (attr(form, "download")) {
          const b = data[attr(form, "download")];
          download(`${b.device_id || "bundle"}.json`, b);
          form.querySelector("output").textContent = `Registered ${b.device_id}; its bundle (with the password, shown once) was downloaded.`;
        }
        if (attr(form, "then")) location.assign(fill(attr(form, "then"), data));
      } catch (err) { showError(form, err); }
    });
  });
}

// Multipart uploads with a progress bar (XMLHttpRequest reports upload progress, fetch does not).
function bindUploads() {
  document.querySelectorAll("form[data-upload]").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const bar = form.querySelector("progress");
      const report = form.querySelector(".report");
      showError(form, { message: "" });
      const xhr = new XMLHttpRequest();
      // Path parts chosen in the form ("{model}" from a data-url-field select), not sent as fields.
      const parts = {};
      form.querySelectorAll("[data-url-field]").forEach((el) => { parts[attr(el, "url-field")] = el.value; });
      xhr.open("POST", Object.keys(parts).length ? fill(attr(form, "upload"), parts) : attr(form, "upload"));
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      bar.hidden = false;
      bar.value = 0;
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = { detail: xhr.responseText }; }
        if (xhr.status >= 300) {
          showError(form, new Error(`${xhr.status}: ${typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)}`));
          return;
        }
        bar.value = 100;
        if (attr(form, "then")) { location.assign(fill(attr(form, "then"), data)); return; }
        report.hidden = false;
        if (attr(form, "topk") !== null) {
          // An OIP v2 answer ("try it"): the package's top-k output ("score:index:label" a line)
          // or, for a model without one, the five highest scores of its first output.
          const outputs = data.outputs || [];
          const out = outputs.find((o) => o.name.endsWith("_topk"));
          if (out) report.textContent = out.data.join("\n");
          else if (outputs.length && typeof outputs[0].data[0] === "number") {
            const top = outputs[0].data.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
            report.textContent = top.map(([v, i]) => `${v.toPrecision(4)}:${i}`).join("\n");
          } else report.textContent = JSON.stringify(data, null, 1);
          report.dataset.done = "true";
        } else if (data.imported !== undefined) {
          report.textContent = `imported ${data.imported}, duplicates ${data.duplicates.length}, errors ${data.errors.length}` +
            (data.labels_added.length ? `, labels added: ${data.labels_added.join(", ")}` : "") +
            data.errors.slice(0, 20).map((e) => `\n${JSON.stringify(e)}`).join("");
          report.dataset.done = "true";
        } else {
          report.textContent = JSON.stringify(data, null, 1);
          if (attr(form, "fill")) {
            document.querySelectorAll(`input[name="${attr(form, "fill")}"]`).forEach((i) => { i.value = data[attr(form, "fill")]; });
          }
        }
      };
      xhr.onerror = () => showError(form, new Error("upload failed: connection lost"));
      xhr.send(new FormData(form));
    });
  });
}

// Bulk labelling from the sample grid: the checked samples, one API call.
function bindBulk() {
  const form = document.querySelector("form[data-bulk]");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const ids = [...document.querySelectorAll("#sample-grid input[type=checkbox]:checked")].map((c) => Number(c.value));
    const op = ev.submitter ? ev.submitter.value : "set";
    const body = { sample_ids: ids, op };
    if (op !== "clear") body.label = form.elements.label.value;
    try { await api("POST", attr(form, "bulk"), body); location.reload(); } catch (err) { showError(form, err); }
  });
}

// --- labelling ------------------------------------------------------------------------------

const UNDO_KEY = "dashboard-undo";

// Undo the last labelling change (kept in sessionStorage: works from the next sample's page,
// or the "nothing left" page, as well).
async function undo(report) {
  const last = JSON.parse(sessionStorage.getItem(UNDO_KEY) || "null");
  if (!last) { report("nothing to undo"); return; }
  sessionStorage.removeItem(UNDO_KEY);
  try { await api("PUT", last.url, { annotations: last.annotations }); location.assign(last.page); }
  catch (err) { report(err.message); }
}

function labeller() {
  const root = document.getElementById("labeller");
  const done = document.getElementById("nothing-to-label");
  if (!root && done) {
    document.addEventListener("keydown", (ev) => { if (ev.key === "z") undo((m) => { done.textContent = m; }); });
  }
  if (!root) return;
  const current = JSON.parse(document.getElementById("current-annotations").textContent);
  const status = document.getElementById("label-status");
  const error = document.getElementById("label-error");
  const canWrite = root.dataset.can === "true";
  const strip = (a) => {
    const out = { label: a.label, source: a.source, confidence: a.confidence };
    if (a.source === "model") out.creator = a.creator;
    if (a.box) out.box = { x: a.box[0], y: a.box[1], w: a.box[2], h: a.box[3] };
    return out;
  };

  async function save(annotations, then) {
    error.textContent = "";
    if (!canWrite) { error.textContent = "your role cannot label (needs labeller)"; return; }
    try {
      sessionStorage.setItem(UNDO_KEY, JSON.stringify({ url: root.dataset.url, page: location.href, annotations: current.map(strip) }));
      await api("PUT", root.dataset.url, { annotations });
      status.textContent = "saved";
      if (then) location.assign(then);
    } catch (err) { error.textContent = err.message; }
  }

  const accept = document.getElementById("accept-prelabels");
  const acceptAll = () => save(current.map((a) => ({ ...strip(a), source: "person", confidence: 1 })), root.dataset.after);
  if (accept) accept.addEventListener("click", acceptAll);

  const buttons = [...document.querySelectorAll("[data-label]")];
  const boxes = root.dataset.kind === "boxes" ? boxEditor(root, current, buttons) : null;

  const choose = (name) => {
    if (boxes) { boxes.setLabel(name); return; }
    if (root.dataset.multi === "true") {
      const names = new Set(current.map((a) => a.label));
      if (names.has(name)) names.delete(name); else names.add(name);
      save([...names].map((n) => ({ label: n })), location.href);
    } else save([{ label: name }], root.dataset.after);
  };
  buttons.forEach((b) => b.addEventListener("click", () => choose(b.dataset.label)));

  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select, textarea")) return;
    const byKey = buttons.find((b) => b.dataset.key && b.dataset.key === ev.key);
    if (byKey) { ev.preventDefault(); choose(byKey.dataset.label); }
    else if (ev.key === "0" && !boxes) save([], root.dataset.after);
    else if (ev.key === "ArrowRight" && root.dataset.next) location.assign(root.dataset.next);
    else if (ev.key === "ArrowLeft" && root.dataset.prev) location.assign(root.dataset.prev);
    else if (ev.key === "z") undo((m) => { error.textContent = m; });
    else if (ev.key === "a" && accept) acceptAll();
    else if (ev.key === "s" && boxes) boxes.save();
    else if ((ev.key === "Delete" || ev.key === "Backspace") && boxes) { ev.preventDefault(); boxes.remove(); }
  });

  if (boxes) document.getElementById("save-boxes").addEventListener("click", () => boxes.save());

  // Detection: boxes drawn, moved, resized and deleted on a canvas over the image, in image
  // pixels (the canvas is scaled to the displayed size).
  function boxEditor(root, current, buttons) {
    const img = document.getElementById("sample-image");
    const canvas = document.getElementById("box-canvas");
    const ctx = canvas.getContext("2d");
    const W = Number(root.dataset.width), H = Number(root.dataset.height);
    let items = current.map(strip).filter((a) => a.box);
    let selected = -1;
    let label = buttons.length ? buttons[0].dataset.label : "";
    let drag = null;
    const HANDLE = 8;

    const scale = () => canvas.width / W;
    function fit() {
      canvas.width = img.clientWidth;
      canvas.height = img.clientHeight;
      draw();
    }
    function draw() {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      const s = scale();
      items.forEach((a, i) => {
        const b = a.box;
        ctx.strokeStyle = i === selected ? "#f59e0b" : a.source === "model" ? "#9333ea" : "#22c55e";
        ctx.lineWidth = 2;
        ctx.strokeRect(b.x * s, b.y * s, b.w * s, b.h * s);
        ctx.fillStyle = ctx.strokeStyle;
        ctx.font = "12px sans-serif";
        const conf = a.source === "model" ? ` ${a.confidence.toFixed(2)}` : "";
        ctx.fillText(a.label + conf, b.x * s + 2, b.y * s - 3 > 10 ? b.y * s - 3 : b.y * s + 12);
        if (i === selected) ctx.fillRect((b.x + b.w) * s - HANDLE / 2, (b.y + b.h) * s - HANDLE / 2, HANDLE, HANDLE);
      });
      buttons.forEach((b) => b.classList.toggle("active", b.dataset.label === label));
      canvas.dataset.boxes = String(items.length);
    }
    const at = (ev) => {
      const r = canvas.getBoundingClientRect();
      const s = scale();
      return { x: Math.max(0, Math.min(W, (ev.clientX - r.left) / s)), y: Math.max(0, Math.min(H, (ev.clientY - r.top) / s)) };
    };
    const hit = (p) => {
      for (let i = items.length - 1; i >= 0; i--) {
        const b = items[i].box;
        const corner = Math.abs(p.x - (b.x + b.w)) * scale() < HANDLE && Math.abs(p.y - (b.y + b.h)) * scale() < HANDLE;
        if (corner) return { i, mode: "resize" };
        if (p.x >= b.x && p.x <= b.x + b.w && p.y >= b.y && p.y <= b.y + b.h) return { i, mode: "move" };
      }
      return null;
    };
    canvas.addEventListener("mousedown", (ev) => {
      const p = at(ev);
      const h = hit(p);
      if (h) {
        selected = h.i;
        const b = items[h.i].box;
        drag = { mode: h.mode, start: p, orig: { ...b } };
        label = items[h.i].label;
      } else {
        items.push({ label, source: "person", confidence: 1, box: { x: p.x, y: p.y, w: 0, h: 0 } });
        selected = items.length - 1;
        drag = { mode: "draw", start: p };
      }
      draw();
    });
    window.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      const p = at(ev);
      const a = items[selected];
      const b = a.box;
      if (drag.mode === "draw") {
        b.x = Math.min(p.x, drag.start.x); b.y = Math.min(p.y, drag.start.y);
        b.w = Math.abs(p.x - drag.start.x); b.h = Math.abs(p.y - drag.start.y);
      } else if (drag.mode === "move") {
        b.x = Math.max(0, Math.min(W - b.w, drag.orig.x + p.x - drag.start.x));
        b.y = Math.max(0, Math.min(H - b.h, drag.orig.y + p.y - drag.start.y));
      } else {
        b.w = Math.max(1, p.x - b.x); b.h = Math.max(1, p.y - b.y);
      }
      a.source = "person"; a.confidence = 1; delete a.creator;
      draw();
    });
    window.addEventListener("mouseup", () => {
      if (drag && drag.mode === "draw") {
        const b = items[selected].box;
        if (b.w < 2 || b.h < 2) { items.splice(selected, 1); selected = -1; }
      }
      drag = null;
      draw();
    });
    if (img.complete) fit(); else img.addEventListener("load", fit);
    window.addEventListener("resize", fit);
    return {
      setLabel(name) {
        label = name;
        if (selected >= 0) { items[selected].label = name; items[selected].source = "person"; items[selected].confidence = 1; }
        draw();
      },
      remove() { if (selected >= 0) { items.splice(selected, 1); selected = -1; draw(); } },
      save() {
        const round = (v) => Math.round(v * 10) / 10;
        save(items.map((a) => ({ ...a, box: { x: round(a.box.x), y: round(a.box.y), w: round(a.box.w), h: round(a.box.h) } })), location.href);
      },
    };
  }
}

// --- review mode (captured samples) --------------------------------------------------------

// One capture at a time: accept the model's label, correct it with a number key (0-9, the
// labels in order), drop the sample, or skip. A reviewed capture leaves the queue, so the page
// reloads at the same position to show the next one.
function reviewer() {
  const root = document.getElementById("reviewer");
  const prev = document.getElementById("prev");
  if (!root && document.getElementById("nothing-to-review") && prev) {
    document.addEventListener("keydown", (ev) => { if (ev.key === "ArrowLeft") location.assign(prev.href); });
  }
  if (!root) return;
  const status = document.getElementById("review-status");
  const error = document.getElementById("review-error");
  const canWrite = root.dataset.can === "true";

  async function review(body) {
    error.textContent = "";
    if (!canWrite) { error.textContent = "your role cannot review (needs labeller)"; return; }
    try {
      await api("POST", root.dataset.url, body);
      status.textContent = { accept: "accepted", correct: "corrected", drop: "dropped" }[body.action];
      location.assign(root.dataset.after);
    } catch (err) { error.textContent = err.message; }
  }

  const accept = document.getElementById("accept-capture");
  const drop = document.getElementById("drop-capture");
  const corrections = [...document.querySelectorAll("[data-correct]")];
  accept.addEventListener("click", () => review({ action: "accept" }));
  drop.addEventListener("click", () => review({ action: "drop" }));
  corrections.forEach((b) => b.addEventListener("click", () => review({ action: "correct", label: b.dataset.correct })));

  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select, textarea")) return;
    const byKey = corrections.find((b) => b.dataset.key && b.dataset.key === ev.key);
    if (byKey) { ev.preventDefault(); review({ action: "correct", label: byKey.dataset.correct }); }
    else if (ev.key === "Enter" || ev.key === "a") {
      ev.preventDefault();
      // Disabled for a labeller only when the model gave no label; a viewer is told why.
      if (!(accept.disabled && canWrite)) review({ action: "accept" });
    }
    else if (ev.key === "d") review({ action: "drop" });
    else if ((ev.key === "n" || ev.key === "ArrowRight") && root.dataset.next) location.assign(root.dataset.next);
    else if (ev.key === "ArrowLeft" && root.dataset.prev) location.assign(root.dataset.prev);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  bindApiForms();
  bindUploads();
  bindBulk();
  labeller();
  reviewer();
});
