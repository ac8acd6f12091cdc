// Audit (admin:system): the newest page from GET /api/audit/events, then a live tail of the
// `audit` stream subscribed with after_seq = the newest record of that page (so the page and the
// tail neither overlap nor leave a gap), filters, and the chain verification.

import { h, clear, setText, fmtWhen, fmtIso, fmtValue, shortId, toast } from '../lib/dom.js';
import { asList } from '../lib/api.js';

const KEEP = 2000; // records kept in memory
const SHOW = 500; // rows in the table at most

export function createAudit({ root, api, client }) {
  const records = []; // newest first
  const seen = new Set(); // seq (or event_id) of every record kept, to drop duplicates
  const types = new Set();
  const filter = { type: '', user: '', status: '' };
  let paused = false;
  let pausedBuffer = [];
  let started = false;

  const typeInput = h('input', { id: 'audit-filter-type', type: 'search', list: 'audit-types', placeholder: 'e.g. task.', autocomplete: 'off' });
  const typeList = h('datalist', { id: 'audit-types' });
  const userInput = h('input', { id: 'audit-filter-user', type: 'search', placeholder: 'user id', autocomplete: 'off' });
  const statusSel = h('select', { id: 'audit-filter-status' },
    h('option', { value: '', text: 'Any' }),
    ['success', 'denied', 'failure'].map((s) => h('option', { value: s, text: s })));
  const pauseBtn = h('button', { type: 'button', id: 'audit-pause', class: 'btn btn-ghost', 'aria-pressed': 'false', text: 'Pause' });
  const verifyBtn = h('button', { type: 'button', id: 'verify-chain', class: 'btn btn-primary', text: 'Verify chain' });
  const verifyResult = h('p', { id: 'verify-result', class: 'verify-result', role: 'status' });
  const tbody = h('tbody', { id: 'audit-rows' });
  const info = h('p', { id: 'audit-info', class: 'muted', role: 'status' });

  root.append(h('div', { class: 'stack' },
    h('section', { class: 'card', 'aria-labelledby': 'verify-title' },
      h('div', { class: 'card-head' },
        h('h2', { id: 'verify-title', text: 'Audit chain' }),
        verifyBtn),
      verifyResult),
    h('section', { class: 'card', 'aria-labelledby': 'audit-title' },
      h('div', { class: 'card-head' },
        h('h2', { id: 'audit-title', text: 'Audit log' }),
        h('span', { class: 'live-dot', 'aria-hidden': 'true' }),
        info),
      h('div', { class: 'toolbar' },
        h('label', { class: 'field-inline', for: 'audit-filter-type' }, 'Event type', typeInput, typeList),
        h('label', { class: 'field-inline', for: 'audit-filter-user' }, 'User', userInput),
        h('label', { class: 'field-inline', for: 'audit-filter-status' }, 'Status', statusSel),
        pauseBtn),
      h('div', { class: 'table-wrap' },
        h('table', { class: 'data-table audit-table', 'aria-label': 'Audit records, newest first' },
          h('thead', {}, h('tr', {}, ['Time', 'Event', 'User', 'Action', 'Resource', 'Status', 'Seq', ''].map((t) => h('th', { scope: 'col', text: t })))),
          tbody)))));

  // ---- filtering and rows --------------------------------------------------------------------
  function matches(r) {
    if (filter.type && !String(r.event_type || '').startsWith(filter.type)) return false;
    if (filter.user && !String(r.user_id || '').toLowerCase().includes(filter.user)) return false;
    if (filter.status && r.status !== filter.status) return false;
    return true;
  }

  function row(r) {
    const detailsRow = h('tr', { class: 'audit-details', hidden: true },
      h('td', { colspan: '8' }, h('pre', { class: 'block', text: fmtValue(r) })));
    const toggle = h('button', {
      type: 'button', class: 'btn btn-small btn-ghost', text: 'Details', 'aria-expanded': 'false',
      'aria-label': `Details of audit record ${r.seq ?? r.event_id}`,
    });
    toggle.addEventListener('click', () => {
      detailsRow.hidden = !detailsRow.hidden;
      toggle.setAttribute('aria-expanded', String(!detailsRow.hidden));
    });
    const resource = [r.resource_type, r.resource_id ? shortId(r.resource_id) : null].filter(Boolean).join(' ');
    const tr = h('tr', { class: `audit-row status-${r.status || 'unknown'}`, dataset: { seq: r.seq ?? '', eventType: r.event_type || '' } },
      h('td', {}, h('time', { datetime: fmtIso(r.timestamp), title: fmtIso(r.timestamp), text: fmtWhen(r.timestamp) })),
      h('td', {}, h('code', { text: r.event_type || '—' })),
      h('td', { text: r.user_id || '—' }),
      h('td', { text: r.action || '—' }),
      h('td', { class: 'mono', title: r.resource_id || '', text: resource || '—' }),
      h('td', {}, h('span', { class: `pill pill-${r.status === 'success' ? 'ok' : r.status === 'denied' ? 'warn' : 'off'}`, text: r.status || '—' })),
      h('td', { class: 'mono', text: r.seq ?? '' }),
      h('td', {}, toggle));
    return [tr, detailsRow];
  }

  function renderAll() {
    clear(tbody);
    const rows = [];
    for (const r of records) {
      if (rows.length >= SHOW) break;
      if (matches(r)) rows.push(r);
    }
    for (const r of rows) tbody.append(...row(r));
    renderInfo();
  }

  function renderInfo() {
    const shownRows = tbody.querySelectorAll('tr.audit-row').length;
    const extra = paused && pausedBuffer.length ? ` · paused, ${pausedBuffer.length} new` : '';
    setText(info, `${shownRows} shown of ${records.length} loaded${extra}`);
  }

  function keyOf(r) { return r.seq ?? r.event_id; }

  /** Add one record: kept newest first; its row goes on top without touching the others. */
  function add(r, { render = true } = {}) {
    const k = keyOf(r);
    if (k != null && seen.has(k)) return;
    if (k != null) seen.add(k);
    if (r.event_type && !types.has(r.event_type)) {
      types.add(r.event_type);
      typeList.append(h('option', { value: r.event_type }));
    }
    records.unshift(r);
    if (records.length > KEEP) {
      const old = records.pop();
      seen.delete(keyOf(old));
    }
    if (render && matches(r)) {
      const [tr, details] = row(r);
      tbody.prepend(tr, details);
      const rowsNow = tbody.querySelectorAll('tr.audit-row');
      if (rowsNow.length > SHOW) {
        const last = rowsNow[rowsNow.length - 1];
        last.nextElementSibling?.remove();
        last.remove();
      }
    }
  }

  // ---- live tail -----------------------------------------------------------------------------
  function onEvent(ev) {
    const r = { ...(ev.data || {}) };
    if (r.seq == null && typeof ev.seq === 'number') r.seq = ev.seq;
    if (paused) { pausedBuffer.push(r); renderInfo(); return; }
    add(r);
    renderInfo();
  }

  async function start() {
    if (started) return;
    started = true;
    setText(info, 'Loading…');
    let afterSeq;
    try {
      const page = asList(await api.get('api/audit/events?limit=100'), 'events', 'items');
      // The page is newest first; add oldest first so `records` stays newest first.
      for (const r of [...page].reverse()) add(r, { render: false });
      afterSeq = page.reduce((m, r) => (typeof r.seq === 'number' && r.seq > m ? r.seq : m), 0);
      renderAll();
    } catch (err) {
      setText(info, err.missing ? 'The audit list is not available on this server; showing live records only.' : `Could not load the audit log: ${err.message}`);
    }
    try {
      await client.subscribe('audit', afterSeq != null ? { afterSeq } : {});
    } catch (err) {
      toast(`Live audit tail unavailable: ${err.message}`, 'error');
    }
  }

  async function verify() {
    verifyBtn.disabled = true;
    verifyResult.className = 'verify-result';
    setText(verifyResult, 'Verifying…');
    try {
      const r = await api.get('api/audit/verify');
      const head = r.head ? ` Head ${String(r.head).slice(0, 16)}…` : '';
      if (r.ok) {
        verifyResult.classList.add('ok');
        setText(verifyResult, `✓ Chain intact: ${r.checked} record${r.checked === 1 ? '' : 's'} checked.${head}`);
      } else {
        verifyResult.classList.add('bad');
        setText(verifyResult, `✗ Chain broken at event ${r.first_bad_event_id ?? 'unknown'} (${r.checked} records checked).`);
      }
      verifyResult.title = `Checked at ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      verifyResult.classList.add('bad');
      setText(verifyResult, err.missing ? 'Chain verification is not available on this server.' : `Verification failed: ${err.message}`);
    } finally {
      verifyBtn.disabled = false;
    }
  }

  typeInput.addEventListener('input', () => { filter.type = typeInput.value.trim(); renderAll(); });
  userInput.addEventListener('input', () => { filter.user = userInput.value.trim().toLowerCase(); renderAll(); });
  statusSel.addEventListener('change', () => { filter.status = statusSel.value; renderAll(); });
  pauseBtn.addEventListener('click', () => {
    paused = !paused;
    pauseBtn.setAttribute('aria-pressed', String(paused));
    setText(pauseBtn, paused ? 'Resume' : 'Pause');
    if (!paused) {
      for (const r of pausedBuffer) add(r, { render: false });
      pausedBuffer = [];
      renderAll();
    }
    renderInfo();
  });
  verifyBtn.addEventListener('click', verify);

  return { show: start, onEvent };
}
