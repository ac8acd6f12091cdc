// Task detail panel: the timeline of a task (from task.get), its output streaming live, result
// or error, and the actions the user's permissions allow. Live events that arrive while task.get
// is in flight are buffered and merged by seq, so nothing shows twice or goes missing.

import { h, clear, setText, shortId, fmtClock, fmtWhen, fmtIso, fmtValue, toMs, toast } from '../lib/dom.js';
import { TERMINAL } from '../lib/tasks.js';

export function createDetail({ root, client, store, can, onClose, onLoaded = () => {} }) {
  let taskId = null;
  let gen = 0; // bumps on every open: replies for a task no longer shown are ignored
  let loading = false;
  let buffer = []; // live events received while task.get was in flight
  let lastSeq = -Infinity; // highest event seq shown
  let snapshotKeys = new Set();
  let state = null;
  let lastOutputItem = null; // the timeline entry that aggregates consecutive output chunks

  root.id = 'task-detail';
  root.classList.add('detail');
  root.setAttribute('aria-labelledby', 'detail-title');
  root.hidden = true;

  const title = h('h2', { id: 'detail-title' });
  const closeBtn = h('button', { type: 'button', id: 'close-detail', class: 'icon-btn', 'aria-label': 'Close task detail', text: '×', on: { click: () => onClose() } });
  const stateBadge = h('span', { id: 'task-state', class: 'state-badge' });
  const meta = h('dl', { class: 'detail-meta' });
  const actions = h('div', { class: 'detail-actions', id: 'task-actions' });
  const promptBox = h('pre', { id: 'task-prompt', class: 'block' });
  const promptSection = h('section', { class: 'detail-section', hidden: true }, h('h3', { text: 'Prompt' }), promptBox);
  const output = h('pre', { id: 'task-output', class: 'block output', tabindex: '0', 'aria-label': 'Task output' });
  const resultBox = h('pre', { id: 'task-result', class: 'block' });
  const resultSection = h('section', { class: 'detail-section', hidden: true }, h('h3', { text: 'Result' }), resultBox);
  const errorBox = h('pre', { id: 'task-error', class: 'block error-block' });
  const errorSection = h('section', { class: 'detail-section', hidden: true }, h('h3', { text: 'Error' }), errorBox);
  const timeline = h('ol', { id: 'task-timeline', class: 'timeline' });
  const status = h('p', { class: 'muted', id: 'detail-status', role: 'status' });

  root.append(
    h('header', { class: 'detail-head' }, title, closeBtn),
    h('div', { class: 'detail-state' }, stateBadge, status),
    meta,
    actions,
    promptSection,
    h('section', { class: 'detail-section' }, h('h3', { text: 'Output' }), output),
    resultSection,
    errorSection,
    h('section', { class: 'detail-section' }, h('h3', { text: 'Timeline' }), timeline));
  root.addEventListener('keydown', (e) => { if (e.key === 'Escape') onClose(); });

  // ---- actions -------------------------------------------------------------------------------
  // Buttons are created only for permissions the user holds, so a viewer has none in the page.
  let cancelBtn = null;
  let approveBtn = null;
  let denyBtn = null;
  let respondInput = null;

  function buildActions() {
    clear(actions);
    cancelBtn = approveBtn = denyBtn = respondInput = null;
    if (can('task:submit')) {
      respondInput = h('input', { id: 'respond-input', type: 'text', placeholder: 'Optional reply to the agent', autocomplete: 'off', 'aria-label': 'Reply sent with approve or deny' });
      approveBtn = h('button', { type: 'button', id: 'approve-task', class: 'btn btn-primary', text: 'Approve', on: { click: () => respond(true) } });
      denyBtn = h('button', { type: 'button', id: 'deny-task', class: 'btn btn-danger-ghost', text: 'Deny', on: { click: () => respond(false) } });
      actions.append(h('div', { class: 'respond' }, respondInput, approveBtn, denyBtn));
    }
    if (can('task:cancel')) {
      cancelBtn = h('button', { type: 'button', id: 'cancel-task', class: 'btn btn-danger', text: 'Cancel task', on: { click: cancel } });
      actions.append(cancelBtn);
    }
    updateActions();
  }

  function updateActions() {
    const waiting = state === 'waiting';
    if (approveBtn) {
      approveBtn.parentElement.hidden = !waiting;
    }
    if (cancelBtn) cancelBtn.hidden = !state || TERMINAL.has(state);
    actions.hidden = ![...actions.children].some((c) => !c.hidden);
  }

  async function cancel() {
    const id = taskId;
    cancelBtn.disabled = true;
    try {
      const r = await client.request('task.cancel', { task_id: id });
      // The reply is authoritative even before the event arrives (a session not followed yet).
      const change = r?.state ? store.applySnapshot({ task_id: id, state: r.state }) : null;
      if (id === taskId && change) setState(change.task.state);
      toast(`Task ${shortId(id)} ${r?.state || 'cancelled'}.`, 'success');
    } catch (err) {
      toast(`Cancel failed: ${err.message}`, 'error');
    } finally {
      if (cancelBtn) cancelBtn.disabled = false;
    }
  }

  async function respond(approve) {
    const id = taskId;
    const fields = { task_id: id, approve };
    const input = respondInput?.value.trim();
    if (input) fields.input = input;
    approveBtn.disabled = denyBtn.disabled = true;
    try {
      const r = await client.request('task.respond', fields);
      const change = store.applySnapshot(r);
      if (id === taskId && change) setState(change.task.state);
      toast(`Task ${shortId(id)} ${approve ? 'approved' : 'denied'}.`, 'success');
      if (respondInput) respondInput.value = '';
    } catch (err) {
      toast(`${approve ? 'Approve' : 'Deny'} failed: ${err.message}`, 'error');
    } finally {
      if (approveBtn) approveBtn.disabled = denyBtn.disabled = false;
    }
  }

  // ---- rendering -----------------------------------------------------------------------------
  function setState(next) {
    state = next;
    setText(stateBadge, next || 'unknown');
    stateBadge.className = `state-badge s-${next || 'unknown'}`;
    updateActions();
  }

  function renderMeta(t) {
    const rows = [
      ['Task', h('span', { class: 'mono', title: t.id, text: t.id })],
      ['Agent', t.agent || '—'],
      ['Session', h('span', { class: 'mono', title: t.session || '', text: shortId(t.session) })],
      ['Created', h('time', { datetime: fmtIso(t.createdAt), text: fmtWhen(t.createdAt) })],
    ];
    if (t.user) rows.splice(2, 0, ['User', t.user]);
    if (t.executionTime != null) rows.push(['Run time', `${Number(t.executionTime).toFixed(2)} s`]);
    clear(meta).append(...rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
  }

  function renderOutcome(t) {
    const hasResult = t.result !== undefined && t.result !== null && t.result !== '';
    resultSection.hidden = !hasResult;
    setText(resultBox, hasResult ? fmtValue(t.result) : '');
    const hasError = t.error !== undefined && t.error !== null && t.error !== '';
    errorSection.hidden = !hasError;
    setText(errorBox, hasError ? fmtValue(t.error) : '');
  }

  function addStateItem(at, st, message) {
    lastOutputItem = null;
    timeline.append(h('li', { class: 'tl-item' },
      h('time', { datetime: fmtIso(at), title: fmtIso(at), text: fmtClock(at) }),
      h('span', { class: `state-badge s-${st || 'unknown'}`, text: st || 'event' }),
      message ? h('span', { class: 'tl-msg', text: message }) : null));
  }

  /** Consecutive output chunks share one timeline entry that counts them. */
  function addOutput(at, chunk) {
    const text = chunk == null ? '' : String(chunk);
    const nearBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 24;
    output.append(text); // a text node per chunk: no re-layout of what is already there
    if (nearBottom) output.scrollTop = output.scrollHeight;
    if (!lastOutputItem) {
      const count = h('span', { class: 'tl-msg muted' });
      lastOutputItem = { chunks: 0, chars: 0, count, first: toMs(at) };
      timeline.append(h('li', { class: 'tl-item tl-output' },
        h('time', { datetime: fmtIso(at), title: fmtIso(at), text: fmtClock(at) }),
        h('span', { class: 'tl-kind', text: 'output' }), count));
    }
    const o = lastOutputItem;
    o.chunks += 1;
    o.chars += text.length;
    // The span of the run as a duration: short enough to stay on one line in the panel.
    const span = toMs(at) - o.first;
    const over = o.chunks > 1 && span >= 0 ? ` over ${fmtSpan(span)}` : '';
    setText(o.count, `${o.chunks} chunk${o.chunks === 1 ? '' : 's'}, ${o.chars} chars${over}`);
    if (over) o.count.title = `last chunk at ${fmtIso(at)}`;
  }

  /** One live event for the shown task. */
  function applyLive(ev) {
    if (typeof ev.seq === 'number') {
      if (ev.seq <= lastSeq) return;
      lastSeq = ev.seq;
    }
    const d = ev.data || {};
    if (ev.type === 'task.output') {
      addOutput(ev.at, d.chunk);
    } else if (ev.type === 'task.state') {
      addStateItem(ev.at, d.state, d.message);
      setState(d.state);
      const t = store.tasks.get(taskId);
      if (t) renderOutcome({ result: d.result ?? t.result, error: d.error ?? t.error });
      // Events carry the state, not the result: fetch it once the task is over.
      if (TERMINAL.has(d.state)) refreshOutcome();
    }
  }

  async function refreshOutcome() {
    const g = gen;
    const id = taskId;
    try {
      const t = await client.request('task.get', { task_id: id });
      if (g !== gen) return;
      const change = store.applySnapshot(t);
      renderOutcome(t);
      if (change) renderMeta(change.task);
    } catch { /* the outcome stays as it is; the timeline is already right */ }
  }

  function key(kind, at, stateOrChunk) {
    return `${kind}|${toMs(at)}|${stateOrChunk ?? ''}`;
  }

  // ---- open / close --------------------------------------------------------------------------
  async function open(id) {
    const g = ++gen;
    taskId = id;
    loading = true;
    buffer = [];
    lastSeq = -Infinity;
    snapshotKeys = new Set();
    lastOutputItem = null;
    root.hidden = false;
    setText(title, `Task ${shortId(id)}`);
    clear(output);
    clear(timeline);
    renderOutcome({});
    const known = store.tasks.get(id);
    setState(known?.state ?? null);
    if (known) renderMeta(known);
    else clear(meta);
    promptSection.hidden = !known?.prompt;
    setText(promptBox, known?.prompt || '');
    setText(status, 'Loading…');
    buildActions();

    let t;
    try {
      t = await client.request('task.get', { task_id: id });
    } catch (err) {
      if (g !== gen) return;
      loading = false;
      setText(status, err.code === 'not_found' ? 'This task does not exist or is not visible to you.' : `Could not load the task: ${err.message}`);
      for (const ev of buffer) applyLive(ev);
      buffer = [];
      return;
    }
    if (g !== gen) return;
    loading = false;
    setText(status, '');
    onLoaded(t); // its session's events must reach us live
    const change = store.applySnapshot(t, 'front');
    const task = change?.task || known;
    if (task) renderMeta(task);
    promptSection.hidden = !task?.prompt;
    setText(promptBox, task?.prompt || '');

    for (const e of t.events || []) {
      if (typeof e.seq === 'number') lastSeq = Math.max(lastSeq, e.seq);
      if (e.event_type === 'output') {
        addOutput(e.timestamp, e.chunk);
        snapshotKeys.add(key('output', e.timestamp, e.chunk));
      } else {
        addStateItem(e.timestamp, e.state, e.message);
        snapshotKeys.add(key('state', e.timestamp, e.state));
      }
    }
    setState(t.state);
    renderOutcome(t);
    // Live events that raced the snapshot: keep those it does not already contain. The seq
    // check covers it when task.get reports stream seqs; the content key when it does not.
    for (const ev of buffer) {
      const d = ev.data || {};
      const k = ev.type === 'task.output' ? key('output', ev.at, d.chunk) : key('state', ev.at, d.state);
      if (!snapshotKeys.has(k)) applyLive(ev);
    }
    buffer = [];
  }

  function close() {
    gen++;
    taskId = null;
    root.hidden = true;
  }

  return {
    open,
    close,
    get taskId() { return taskId; },
    /** Every session-stream event goes through here; only the shown task's are used. */
    onEvent(ev) {
      if (!taskId || ev.task_id !== taskId) return;
      if (loading) buffer.push(ev);
      else applyLive(ev);
    },
    /** Events of the shown task may have been pruned: read its state and events again. */
    reload() { if (taskId) open(taskId); },
    /** Permissions changed (a new hello): rebuild the buttons. */
    refreshPermissions() { if (taskId) buildActions(); },
    focus() { closeBtn.focus(); },
  };
}

/** A duration for the timeline: "850 ms", "4.2 s", "3 min 5 s". */
function fmtSpan(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}
