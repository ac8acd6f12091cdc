// Sessions, presence and devices. Sessions come from the shared SessionsModel; presence and
// devices (admin:users) are polled while the view is open. Endpoints a server does not have
// yet answer 404, which shows as "not available on this server" instead of an error.

import { h, clear, shortId, fmtWhen, fmtIso, toast } from '../lib/dom.js';
import { asList } from '../lib/api.js';

const POLL_MS = 5000;

export function createSessions({ root, api, sessions, can, me }) {
  const sessionsBody = h('div', { id: 'sessions-table', class: 'table-wrap' });
  const presenceBody = h('div', { id: 'presence-table', class: 'table-wrap' });
  const devicesBody = h('div', { id: 'devices-table', class: 'table-wrap' });
  const presenceCard = h('section', { class: 'card', id: 'presence-card', 'aria-labelledby': 'presence-title' },
    h('div', { class: 'card-head' }, h('h2', { id: 'presence-title', text: 'Connected now' })), presenceBody);
  const devicesCard = h('section', { class: 'card', id: 'devices-card', 'aria-labelledby': 'devices-title' },
    h('div', { class: 'card-head' }, h('h2', { id: 'devices-title', text: 'Devices' })), devicesBody);

  root.append(h('div', { class: 'stack' },
    h('section', { class: 'card', 'aria-labelledby': 'sessions-title' },
      h('div', { class: 'card-head' },
        h('h2', { id: 'sessions-title', text: 'Sessions' }),
        h('button', { type: 'button', class: 'btn btn-ghost', text: 'Refresh', on: { click: () => sessions.refresh() } })),
      sessionsBody),
    presenceCard,
    devicesCard));

  // ---- sessions ------------------------------------------------------------------------------
  function renderSessions() {
    clear(sessionsBody);
    if (!sessions.available) {
      sessionsBody.append(notAvailable('The session list'));
      return;
    }
    const list = sessions.list.sort((a, b) => String(b.last_activity || '').localeCompare(String(a.last_activity || '')));
    if (!list.length) {
      sessionsBody.append(h('p', { class: 'muted', text: sessions.error ? `Could not load sessions: ${sessions.error.message}` : 'No sessions.' }));
      return;
    }
    const own = me().sessionId;
    sessionsBody.append(table(['Session', 'User', 'Device', 'State', 'Created', 'Last activity', ''], list.map((s) => [
      h('span', { class: 'mono', title: s.session_id, text: shortId(s.session_id) }, s.session_id === own ? h('span', { class: 'tag', text: 'this tab' }) : null),
      s.user_id || '—',
      s.device_id || '—',
      h('span', { class: `pill ${s.state === 'active' ? 'pill-ok' : 'pill-off'}`, text: s.state || '—' }),
      time(s.created_at),
      time(s.last_activity),
      s.state === 'active' && s.session_id !== own && s.user_id === me().userId
        ? h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost', text: 'End', 'aria-label': `End session ${shortId(s.session_id)}`, on: { click: () => endSession(s) } })
        : '',
    ]), { label: 'Sessions' }));
  }

  async function endSession(s) {
    if (!confirm(`End session ${shortId(s.session_id)}?`)) return;
    try {
      await api.del(`api/runtime/sessions/${encodeURIComponent(s.session_id)}`);
      toast(`Session ${shortId(s.session_id)} ended.`, 'success');
      sessions.refresh();
    } catch (err) {
      toast(`Could not end the session: ${err.message}`, 'error');
    }
  }

  // ---- presence ------------------------------------------------------------------------------
  let presenceMissing = false;
  async function loadPresence() {
    if (presenceMissing) return;
    try {
      const data = await api.get('api/presence');
      const list = asList(data, 'presence', 'connections', 'items');
      clear(presenceBody);
      if (!list.length) { presenceBody.append(h('p', { class: 'muted', text: 'Nobody is connected.' })); return; }
      // One row per open connection: a user with two tabs shows twice.
      presenceBody.append(table(['User', 'Device', 'Session', 'Since', 'From'], list.map((p) => [
        p.user_id || '—',
        p.device_id || p.device?.device_id || '—',
        p.session_id ? h('span', { class: 'mono', title: p.session_id, text: shortId(p.session_id) }, p.session_id === me().sessionId ? h('span', { class: 'tag', text: 'this tab' }) : null) : '—',
        time(p.since ?? p.connected_at),
        [p.peer, p.node_id].filter(Boolean).join(' · ') || '—',
      ]), { label: 'Connected now' }));
    } catch (err) {
      clear(presenceBody);
      if (err.missing) { presenceMissing = true; presenceBody.append(notAvailable('Presence')); }
      else if (err.status === 403) { presenceMissing = true; presenceCard.hidden = true; }
      else presenceBody.append(h('p', { class: 'form-error', text: `Could not load presence: ${err.message}` }));
    }
  }

  // ---- devices -------------------------------------------------------------------------------
  let devicesMissing = false;
  let devicesSig = '';
  async function loadDevices() {
    if (devicesMissing) return;
    try {
      const list = asList(await api.get('api/devices'), 'devices', 'items');
      const sig = JSON.stringify(list);
      if (sig === devicesSig) return; // unchanged: keep focus on its buttons
      devicesSig = sig;
      clear(devicesBody);
      if (!list.length) { devicesBody.append(h('p', { class: 'muted', text: 'No devices registered.' })); return; }
      devicesBody.append(table(['Device', 'Name', 'User', 'State', 'Key', 'First seen', 'Last seen', 'Actions'], list.map((d) => [
        h('span', { class: 'mono', text: d.device_id }),
        d.name || '—',
        d.user_id || '—',
        h('span', { class: `pill pill-${d.state === 'trusted' ? 'ok' : d.state === 'pending' ? 'warn' : 'off'}`, text: d.state || '—' }),
        d.public_key ? 'Ed25519' : 'none',
        time(d.first_seen),
        time(d.last_seen),
        h('span', { class: 'row-actions' },
          d.state !== 'trusted' && d.state !== 'revoked'
            ? h('button', { type: 'button', class: 'btn btn-small btn-primary', text: 'Approve', 'aria-label': `Approve device ${d.device_id}`, on: { click: () => deviceAction(d, 'approve') } })
            : null,
          d.state !== 'revoked'
            ? h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost', text: 'Revoke', 'aria-label': `Revoke device ${d.device_id}`, on: { click: () => deviceAction(d, 'revoke') } })
            : null),
      ]), { label: 'Devices' }));
    } catch (err) {
      devicesSig = '';
      clear(devicesBody);
      if (err.missing) { devicesMissing = true; devicesBody.append(notAvailable('Device management')); }
      else devicesBody.append(h('p', { class: 'form-error', text: `Could not load devices: ${err.message}` }));
    }
  }

  async function deviceAction(d, action) {
    if (action === 'revoke' && !confirm(`Revoke device ${d.device_id}? Its live sessions end at once.`)) return;
    try {
      await api.post(`api/devices/${encodeURIComponent(d.device_id)}/${action}`, {});
      toast(`Device ${d.device_id} ${action === 'approve' ? 'approved' : 'revoked'}.`, 'success');
    } catch (err) {
      toast(err.missing ? 'Device management is not available on this server.' : `Could not ${action} the device: ${err.message}`, 'error');
    }
    devicesSig = '';
    loadDevices();
  }

  // ---- lifecycle -----------------------------------------------------------------------------
  sessions.onChange(renderSessions);
  let timer = null;
  // Presence lists the user's own connections (everyone's with admin:system); devices are
  // managed by admin:users holders only.
  function poll() {
    loadPresence();
    if (can('admin:users')) loadDevices();
  }

  return {
    show() {
      presenceCard.hidden = presenceMissing && !presenceBody.firstChild;
      devicesCard.hidden = !can('admin:users');
      sessions.refresh();
      renderSessions();
      poll();
      clearInterval(timer);
      timer = setInterval(poll, POLL_MS);
    },
    hide() { clearInterval(timer); timer = null; },
  };
}

function time(ts) {
  return h('time', { datetime: fmtIso(ts), title: fmtIso(ts), text: fmtWhen(ts) });
}

function notAvailable(what) {
  return h('p', { class: 'muted not-available', text: `${what} is not available on this server.` });
}

/** A plain table: header labels and rows of cells (strings or nodes). */
export function table(headers, rows, { label } = {}) {
  return h('table', { class: 'data-table', 'aria-label': label },
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c) => h('td', {}, c))))));
}

