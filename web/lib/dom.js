// Small DOM and formatting helpers shared by the views. No framework: views build their nodes
// once with h() and then patch text and attributes in place when data changes.

/**
 * Create an element. `attrs` keys: `class`, `text`, `dataset` (object), `on` (object of event
 * handlers), `hidden`, `disabled`, anything else becomes an attribute. Children may be nodes,
 * strings, or null (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'hidden' || k === 'disabled' || k === 'selected' || k === 'checked') el[k] = !!v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Remove every child of a node. */
export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

/** Set text only when it changed: cheap to call on every event. */
export function setText(node, text) {
  const t = text == null ? '' : String(text);
  if (node.textContent !== t) node.textContent = t;
}

/** First 8 characters of a UUID, enough to tell tasks apart on screen. */
export function shortId(id) {
  return id ? String(id).slice(0, 8) : '—';
}

/** Milliseconds since the epoch from an RFC 3339 string, or NaN. */
export function toMs(ts) {
  if (ts == null) return NaN;
  if (typeof ts === 'number') return ts;
  return Date.parse(ts);
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** Local clock time with milliseconds, for timelines: 14:03:07.215 */
export function fmtClock(ts) {
  const ms = toMs(ts);
  if (Number.isNaN(ms)) return '—';
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Local time, with the date when it is not today: "14:03:07" or "2024-05-02 14:03". */
export function fmtWhen(ts) {
  const ms = toMs(ts);
  if (Number.isNaN(ms)) return '—';
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) {
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Full ISO time for title attributes (hover shows the exact instant). */
export function fmtIso(ts) {
  const ms = toMs(ts);
  return Number.isNaN(ms) ? '' : new Date(ms).toISOString();
}

/** A value for display: strings as they are, anything else as indented JSON. */
export function fmtValue(v) {
  if (v == null) return '';
  if (typeof v === 'string') return v;
  try { return JSON.stringify(v, null, 2); } catch { return String(v); }
}

/**
 * A random UUID v4. crypto.randomUUID exists only in secure contexts, and a dashboard opened
 * over plain http on a LAN address is not one, so fall back to getRandomValues.
 */
export function uuid() {
  if (globalThis.crypto?.randomUUID) {
    try { return crypto.randomUUID(); } catch { /* insecure context */ }
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((n) => n.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/**
 * Coalesce calls into one run per animation frame. The timeout backs up requestAnimationFrame,
 * which browsers pause for hidden tabs and some headless setups.
 */
export function frameScheduler(fn) {
  let queued = false;
  const run = () => {
    if (!queued) return;
    queued = false;
    fn();
  };
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(run);
    setTimeout(run, 100);
  };
}

// ---- toasts ----------------------------------------------------------------------------------

let toastRegion = null;

/**
 * Show a short message in the toast region. kind: 'info' | 'success' | 'error'.
 * Errors stay until dismissed longer, and are announced assertively.
 */
export function toast(message, kind = 'info', { timeoutMs } = {}) {
  toastRegion ??= document.getElementById('toasts');
  if (!toastRegion) return;
  const close = h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss message', text: '×' });
  const node = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-text', text: message }), close);
  const remove = () => node.remove();
  close.addEventListener('click', remove);
  toastRegion.append(node);
  // Keep the region short: the oldest go first.
  while (toastRegion.children.length > 3) toastRegion.firstElementChild.remove();
  setTimeout(remove, timeoutMs ?? (kind === 'error' ? 10000 : 3500));
}
