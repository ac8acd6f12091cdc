// The live task board: state chips with counts (they double as the state filter), agent and
// session filters, and a windowed list. The chips show the server's totals over every task the
// user may see (GET /api/runtime/tasks/counts), not the rows loaded here: they move at once with
// each live event, and are set right again from the server shortly after and every few seconds. Only the rows in view exist in the DOM; an event patches
// its row's badge at once, and anything that can move rows (a new task, a filter) is coalesced
// into one re-window per frame, so thousands of tasks and bursts of events stay smooth.

import { h, clear, setText, shortId, fmtWhen, fmtIso, frameScheduler } from '../lib/dom.js';
import { STATES } from '../lib/tasks.js';

const ROW_H = 44; // px; must match .task-row height in styles.css
const OVERSCAN = 8; // rows rendered above and below the viewport

const COUNTS_POLL_MS = 10000;
const COUNTS_SETTLE_MS = 400; // after a change, ask the server again once things settle

export function createBoard({ root, store, sessions, detailRoot, onOpen, onLoadMore, onNeedPrompt, fetchCounts }) {
  const filter = { state: '', agent: '', session: '', text: '' };
  let filtered = []; // ids matching the filter, in store order
  const rendered = new Map(); // id -> row element currently in the DOM
  let selectedId = null;
  let ownSession = null;
  // Roving tabindex: one row is in the Tab order, arrows move within the list. Rows are kept in
  // the DOM in creation order, not display order, so per-row tab stops would jump around.
  let activeId = null;

  // ---- static structure ----------------------------------------------------------------------
  const chipCounts = new Map();
  const chips = [['', 'All'], ...STATES.map((s) => [s, s])].map(([state, label]) => {
    const count = h('span', { class: 'chip-count', 'data-testid': `count-${state || 'all'}`, text: '0' });
    chipCounts.set(state, count);
    return h('button', {
      type: 'button', class: `chip${state ? ` chip-${state}` : ''}`, dataset: { state },
      'aria-pressed': state === '' ? 'true' : 'false',
      on: { click: () => setFilter({ state }) },
    }, h('span', { class: 'chip-label', text: label }), count);
  });
  const agentSel = h('select', { id: 'filter-agent', on: { change: (e) => setFilter({ agent: e.target.value }) } });
  const sessionSel = h('select', { id: 'filter-session', on: { change: (e) => setFilter({ session: e.target.value }) } });
  const textInput = h('input', {
    id: 'filter-text', type: 'search', placeholder: 'id, prompt or message', autocomplete: 'off',
    on: { input: (e) => setFilter({ text: e.target.value.trim().toLowerCase() }) },
  });

  const spacer = h('div', { class: 'task-spacer' });
  const viewport = h('div', {
    id: 'task-list', class: 'task-viewport', role: 'list', 'aria-label': 'Tasks, newest first', tabindex: '-1',
  }, spacer);
  const empty = h('div', { class: 'empty', id: 'board-empty' });
  const shown = h('span', { id: 'task-shown', class: 'muted' });
  const loadMoreBtn = h('button', { type: 'button', id: 'load-more', class: 'btn', hidden: true, text: 'Load older tasks' });
  loadMoreBtn.addEventListener('click', async () => {
    loadMoreBtn.disabled = true;
    try { await onLoadMore(); } finally { loadMoreBtn.disabled = false; }
  });

  root.append(h('div', { class: 'board' },
    h('div', { class: 'board-main' },
      h('div', { class: 'toolbar' },
        h('div', { class: 'chips', role: 'group', 'aria-label': 'Filter by state' }, chips),
        h('div', { class: 'filters' },
          h('label', { class: 'field-inline', for: 'filter-agent' }, 'Agent', agentSel),
          h('label', { class: 'field-inline', for: 'filter-session' }, 'Session', sessionSel),
          h('label', { class: 'field-inline', for: 'filter-text' }, 'Search', textInput))),
      h('div', { class: 'task-table' },
        h('div', { class: 'task-head', 'aria-hidden': 'true' },
          ['State', 'Task', 'Agent', 'Prompt / last message', 'Session', 'Created'].map((t) => h('span', { text: t }))),
        viewport, empty),
      h('div', { class: 'list-foot' }, shown, loadMoreBtn)),
    detailRoot));

  // ---- filtering and windowing ---------------------------------------------------------------
  function matches(task) {
    if (filter.state && task.state !== filter.state) return false;
    if (filter.agent && task.agent !== filter.agent) return false;
    if (filter.session && task.session !== filter.session) return false;
    if (filter.text) {
      const hay = `${task.id} ${task.prompt || task.preview || ''} ${task.message || ''}`.toLowerCase();
      if (!hay.includes(filter.text)) return false;
    }
    return true;
  }

  function recompute() {
    // Keep the first visible row where it is when rows are added above it.
    const top = viewport.scrollTop;
    const anchorIdx = Math.floor(top / ROW_H);
    const anchorId = top > 0 ? filtered[anchorIdx] : null;
    filtered = store.order.filter((id) => matches(store.tasks.get(id)));
    spacer.style.height = `${filtered.length * ROW_H}px`;
    if (anchorId) {
      const idx = filtered.indexOf(anchorId);
      if (idx >= 0 && idx !== anchorIdx) viewport.scrollTop = top + (idx - anchorIdx) * ROW_H;
    }
    renderWindow();
    renderFooter();
  }
  const scheduleRecompute = frameScheduler(recompute);
  const scheduleWindow = frameScheduler(renderWindow);

  function renderWindow() {
    const top = viewport.scrollTop;
    const height = viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(filtered.length, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    const keep = new Set();
    for (let i = first; i < last; i++) {
      const id = filtered[i];
      keep.add(id);
      let row = rendered.get(id);
      if (!row) {
        row = makeRow(id);
        rendered.set(id, row);
        viewport.append(row);
      }
      row.style.transform = `translateY(${i * ROW_H}px)`;
      row.setAttribute('aria-posinset', String(i + 1));
      row.setAttribute('aria-setsize', String(filtered.length));
    }
    for (const [id, row] of rendered) {
      // The focused row stays (off screen) so keyboard focus is never dropped on the floor.
      if (keep.has(id) || (row === document.activeElement && filtered.includes(id))) continue;
      row.remove();
      rendered.delete(id);
    }
    const tabStop = rendered.has(activeId) ? activeId : filtered[Math.min(filtered.length - 1, Math.floor(top / ROW_H))];
    for (const [id, row] of rendered) row.tabIndex = id === tabStop ? 0 : -1;
  }

  function makeRow(id) {
    const task = store.tasks.get(id);
    const row = h('div', {
      class: 'task-row', role: 'listitem', tabindex: '-1', dataset: { taskId: id },
      on: { click: () => onOpen(id), keydown: (e) => onRowKey(e, id), focus: () => setActive(id) },
    },
    h('span', { class: 'cell cell-state' }, h('span', { class: 'state-badge' })),
    h('span', { class: 'cell cell-id mono', title: id, text: shortId(id) }),
    h('span', { class: 'cell cell-agent' }),
    h('span', { class: 'cell cell-summary' }),
    h('span', { class: 'cell cell-session mono' }),
    h('span', { class: 'cell cell-time' }));
    patchRow(row, task);
    // A task first seen through its events has no prompt yet: ask for it, for rows on screen only.
    if (!task.prompt && !task.preview) onNeedPrompt?.(id);
    return row;
  }

  /** Update a row's cells from its task; cheap enough to run on every event. */
  function patchRow(row, task) {
    const [stateCell, , agentCell, summaryCell, sessionCell, timeCell] = row.children;
    const badge = stateCell.firstChild;
    const state = task.state || 'unknown';
    setText(badge, state);
    badge.className = `state-badge s-${state}`;
    setText(agentCell, task.agent || '—');
    const summary = task.prompt || task.preview || task.message || '';
    setText(summaryCell, summary);
    summaryCell.title = summary;
    setText(sessionCell, shortId(task.session));
    sessionCell.title = task.session || '';
    if (task.session && task.session === ownSession) sessionCell.classList.add('own');
    setText(timeCell, fmtWhen(task.createdAt));
    timeCell.title = fmtIso(task.createdAt);
    row.classList.toggle('selected', task.id === selectedId);
    if (task.id === selectedId) row.setAttribute('aria-current', 'true');
    else row.removeAttribute('aria-current');
    row.setAttribute('aria-label', `${state} task ${shortId(task.id)}, agent ${task.agent || 'unknown'}${summary ? `: ${summary.slice(0, 80)}` : ''}`);
  }

  /** Arrow keys move between rows (scrolling the window), Enter or Space opens one. */
  function onRowKey(e, id) {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onOpen(id); return; }
    const step = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10, Home: -Infinity, End: Infinity }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    const idx = filtered.indexOf(id);
    const next = Math.max(0, Math.min(filtered.length - 1, idx + step));
    focusIndex(next);
  }

  function setActive(id) {
    if (activeId === id) return;
    activeId = id;
    for (const [rid, row] of rendered) row.tabIndex = rid === id ? 0 : -1;
  }

  function focusIndex(i) {
    const top = i * ROW_H;
    if (top < viewport.scrollTop) viewport.scrollTop = top;
    else if (top + ROW_H > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = top + ROW_H - viewport.clientHeight;
    renderWindow();
    rendered.get(filtered[i])?.focus();
  }

  function renderFooter() {
    const total = store.size;
    setText(shown, filtered.length === total ? `${total} task${total === 1 ? '' : 's'}` : `${filtered.length} of ${total} tasks`);
    empty.hidden = filtered.length > 0;
    if (!filtered.length) {
      setText(empty, total ? 'No task matches these filters.' : emptyText);
    }
  }
  let emptyText = 'Loading tasks…';

  // ---- state counts: the server's totals, nudged by live events between fetches ----------------
  let totals = null; // Map state -> count from the server; null until it answered (or if it cannot)
  let askCounts = fetchCounts || null;
  let settleTimer = null;

  async function refreshCounts() {
    if (!askCounts) return;
    try {
      const r = await askCounts();
      totals = new Map(STATES.map((s) => [s, Number(r?.by_state?.[s] ?? 0)]));
    } catch (err) {
      // An older server without the endpoint: count the loaded rows, as before.
      if (err?.missing || err?.status === 403) { askCounts = null; totals = null; }
    }
    renderCounts();
  }

  function settleCounts() {
    clearTimeout(settleTimer);
    settleTimer = setTimeout(refreshCounts, COUNTS_SETTLE_MS);
  }

  /** A live change moves one task between states: move it in the totals too, until they settle. */
  function nudgeCounts(c) {
    if (!totals || (c.kind !== 'new' && c.kind !== 'state')) return;
    const now = c.task?.state;
    const before = c.kind === 'new' ? null : c.prev;
    if (before === now) return;
    if (before && totals.has(before)) totals.set(before, Math.max(0, totals.get(before) - 1));
    if (now && totals.has(now)) totals.set(now, totals.get(now) + 1);
    settleCounts();
  }

  function renderCounts() {
    const source = totals || store.counts;
    let total = 0;
    for (const s of STATES) {
      const n = source.get(s) || 0;
      total += n;
      setText(chipCounts.get(s), n);
    }
    setText(chipCounts.get(''), total);
  }

  function setFilter(patch) {
    Object.assign(filter, patch);
    for (const c of chips) c.setAttribute('aria-pressed', c.dataset.state === filter.state ? 'true' : 'false');
    viewport.scrollTop = 0;
    scheduleRecompute();
  }

  // ---- filter options ------------------------------------------------------------------------
  let agentSig = null; // null: never rendered, so the "All agents" option appears even with none
  function renderAgentOptions() {
    const agents = [...store.agents].sort();
    const sig = agents.join('\n');
    if (sig === agentSig) return;
    agentSig = sig;
    clear(agentSel).append(h('option', { value: '', text: 'All agents' }),
      ...agents.map((a) => h('option', { value: a, text: a, selected: a === filter.agent })));
  }

  let sessionSig = '';
  function renderSessionOptions() {
    const known = new Map();
    for (const s of sessions.list) known.set(s.session_id, s);
    for (const id of store.sessions) if (!known.has(id)) known.set(id, { session_id: id });
    const items = [...known.values()];
    const sig = items.map((s) => `${s.session_id}${s.user_id}${s.state}`).join('|') + ownSession;
    if (sig === sessionSig) return;
    sessionSig = sig;
    const label = (s) => {
      const parts = [shortId(s.session_id)];
      if (s.user_id) parts.push(s.user_id);
      if (s.device_id) parts.push(s.device_id);
      if (s.session_id === ownSession) parts.push('this tab');
      if (s.state && s.state !== 'active') parts.push(s.state);
      return parts.join(' · ');
    };
    clear(sessionSel).append(h('option', { value: '', text: 'All sessions' }),
      ...items.map((s) => h('option', { value: s.session_id, text: label(s), selected: s.session_id === filter.session })));
  }

  // ---- reacting to the model -----------------------------------------------------------------
  store.onChange((c) => {
    nudgeCounts(c);
    renderCounts();
    if (c.kind === 'bulk' || c.kind === 'new') {
      renderAgentOptions();
      renderSessionOptions();
      scheduleRecompute();
      return;
    }
    const row = rendered.get(c.id);
    if (row) patchRow(row, c.task); // the badge changes now, not on the next frame
    renderAgentOptions(); // an agent name can arrive after the task (no-op when unchanged)
    // With a filter on, a change can move the task in or out of the view; without one it cannot.
    if (filter.state || filter.agent || filter.session || filter.text) scheduleRecompute();
  });
  sessions.onChange(() => renderSessionOptions());
  viewport.addEventListener('scroll', scheduleWindow, { passive: true });
  new ResizeObserver(scheduleWindow).observe(viewport);

  renderCounts();
  renderAgentOptions();
  renderSessionOptions();
  recompute();
  refreshCounts();
  setInterval(refreshCounts, COUNTS_POLL_MS);

  return {
    /** Highlight the task shown in the detail panel (null: none). */
    select(id) {
      const prev = selectedId;
      selectedId = id;
      for (const x of [prev, id]) {
        const row = x && rendered.get(x);
        if (row) patchRow(row, store.tasks.get(x));
      }
    },
    /** The hello session, marked "this tab" in the session filter. */
    setOwnSession(id) { ownSession = id; renderSessionOptions(); },
    /** Whether older pages may exist (shows the "Load older tasks" button). */
    setHasMore(more) { loadMoreBtn.hidden = !more; },
    setEmptyText(text) { emptyText = text; renderFooter(); },
    /** Focus the row of a task if it is in the filtered list (used after closing the detail). */
    focusTask(id) {
      const i = filtered.indexOf(id);
      if (i >= 0) focusIndex(i);
    },
    refresh: scheduleRecompute,
    /** Ask the server for the state totals again (after a reconnect, say). */
    refreshCounts,
  };
}
