// Remote agent hosts (`switchboard link`): each linked host, the agents it offers and what they
// run. Live by polling GET /api/runtime/hosts every few seconds while the view is open (a host
// that links or drops shows up within one poll, without a reload); polling keeps the event bus
// out of it, and the list is small. The host list is what `switchboard host list` prints.

import { h, clear, fmtWhen, fmtIso } from '../lib/dom.js';
import { asList } from '../lib/api.js';
import { table } from './sessions.js';

const POLL_MS = 3000;

export function createHosts({ root, api }) {
  const body = h('div', { id: 'hosts-list', class: 'stack', 'aria-live': 'polite' });
  const updated = h('span', { id: 'hosts-updated', class: 'muted' });
  root.append(h('div', { class: 'stack' },
    h('section', { class: 'card', 'aria-labelledby': 'hosts-title' },
      h('div', { class: 'card-head' },
        h('h2', { id: 'hosts-title', text: 'Remote agent hosts' }),
        updated,
        h('button', { type: 'button', class: 'btn btn-ghost', text: 'Refresh', on: { click: () => load() } })),
      h('p', { class: 'muted', text: 'Machines that linked out to this node with `switchboard link` and run its tasks for their agents. Submit to an agent by its name, or to agent@host for one host only.' }),
      body)));

  let sig = null;
  let missing = false;
  async function load() {
    if (missing) return;
    try {
      const hosts = asList(await api.get('api/runtime/hosts'), 'hosts');
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      const next = JSON.stringify(hosts);
      if (next === sig) return; // unchanged: keep the DOM (and any selection) as it is
      sig = next;
      render(hosts);
    } catch (err) {
      sig = null;
      clear(body);
      if (err.missing) missing = true;
      body.append(h('p', { class: 'form-error', text: err.missing ? 'Remote hosts are not available on this server.' : `Could not load hosts: ${err.message}` }));
    }
  }

  function render(hosts) {
    clear(body);
    if (!hosts.length) {
      body.append(h('p', { class: 'muted', id: 'hosts-empty', text: `No host is linked. On a machine with agents, run: switchboard link --server ${location.origin} --config agents.toml` }));
      return;
    }
    for (const host of hosts) body.append(hostCard(host));
  }

  let timer = null;
  return {
    show() {
      load();
      clearInterval(timer);
      timer = setInterval(load, POLL_MS);
    },
    hide() { clearInterval(timer); timer = null; },
  };
}

function hostCard(host) {
  const linked = host.state === 'linked';
  const facts = [
    `user ${host.user_id || '—'}`,
    `node ${host.node_id || '—'}`,
    host.device_id ? `device ${host.device_id}` : null,
    `${host.running ?? 0} running`,
  ].filter(Boolean).join(' · ');
  const since = h('time', { datetime: fmtIso(host.linked_at), title: fmtIso(host.linked_at), text: fmtWhen(host.linked_at) });
  const away = !linked && host.away_until ? ` until ${fmtIso(host.away_until)}` : '';
  return h('article', { class: 'host-card', 'data-host': host.name, 'aria-label': `Host ${host.name}` },
    h('div', { class: 'card-head' },
      h('h3', { class: 'mono', text: host.name }),
      h('span', { class: `pill ${linked ? 'pill-ok' : 'pill-warn'}`, 'data-testid': 'host-state', text: linked ? 'linked' : `away${away}` }),
      h('span', { class: 'muted', text: facts }),
      h('span', { class: 'muted' }, 'linked ', since)),
    table(['Agent', 'Kind', 'Running', 'Capabilities', 'Description'], (host.agents || []).map((a) => [
      h('span', { class: 'mono', 'data-agent': a.agent_type, text: a.agent_type }),
      a.kind || '—',
      `${a.running ?? 0} / ${a.max_concurrent ?? '—'}`,
      h('span', { class: 'caps' }, (a.capabilities || []).map((c) => h('span', { class: 'tag', text: c }))),
      a.description || '—',
    ]), { label: `Agents of ${host.name}` }));
}
