// Submit form: an agent from the live agent list (unavailable ones shown disabled with their
// reason) or a skill, a prompt and JSON params, sent as task.submit with an idempotency key so
// that a retry after a dropped connection cannot start the task twice.

import { h, clear, setText, shortId, uuid, toast } from '../lib/dom.js';

const SKILL_PREFIX = 'skill:';

export function createSubmit({ root, client, store, onSubmitted }) {
  let agents = [];
  let skills = [];

  const agentSel = h('select', { id: 'submit-agent', name: 'agent', required: true });
  const agentInfo = h('p', { id: 'submit-agent-info', class: 'hint' });
  const refreshBtn = h('button', { type: 'button', class: 'btn btn-ghost', id: 'refresh-agents', text: 'Refresh list' });
  const prompt = h('textarea', { id: 'submit-prompt', name: 'prompt', rows: '7', required: true, placeholder: 'What should the agent do?', 'aria-describedby': 'submit-prompt-hint' });
  const params = h('textarea', { id: 'submit-params', name: 'params', rows: '3', class: 'mono', spellcheck: 'false', placeholder: '{"delay_ms": 100}', 'aria-describedby': 'submit-params-error' });
  const paramsError = h('p', { id: 'submit-params-error', class: 'form-error', role: 'alert' });
  const openAfter = h('input', { type: 'checkbox', id: 'submit-open', checked: true });
  const button = h('button', { type: 'submit', id: 'submit-button', class: 'btn btn-primary', text: 'Submit task' });
  const result = h('p', { id: 'submit-result', class: 'muted', role: 'status' });
  const agentCards = h('ul', { id: 'agent-list', class: 'agent-cards', 'aria-label': 'Agents on this server' });

  const form = h('form', { id: 'submit-form', class: 'card form', novalidate: true },
    h('h2', { text: 'Submit a task' }),
    h('div', { class: 'field' },
      h('label', { for: 'submit-agent', text: 'Agent or skill' }),
      h('div', { class: 'row' }, agentSel, refreshBtn),
      agentInfo),
    h('div', { class: 'field' },
      h('label', { for: 'submit-prompt', text: 'Prompt' }),
      prompt,
      h('p', { id: 'submit-prompt-hint', class: 'hint', text: 'Ctrl+Enter submits.' })),
    h('div', { class: 'field' },
      h('label', { for: 'submit-params', text: 'Params (JSON object, optional)' }),
      params, paramsError),
    h('div', { class: 'field field-check' }, openAfter, h('label', { for: 'submit-open', text: 'Open the task on the board after submitting' })),
    h('div', { class: 'form-actions' }, button, result));

  root.append(h('div', { class: 'submit-layout' },
    form,
    h('aside', { class: 'card agents-panel', 'aria-labelledby': 'agents-title' },
      h('h2', { id: 'agents-title', text: 'Agents' }), agentCards)));

  // ---- agent and skill lists -----------------------------------------------------------------
  function reasonOf(a) {
    const m = a.metadata || {};
    return m.reason || m.unavailable_reason || m.error || 'unavailable';
  }

  function renderOptions() {
    const previous = agentSel.value;
    clear(agentSel);
    const ag = h('optgroup', { label: 'Agents' }, agents.map((a) => h('option', {
      value: a.agent_type,
      disabled: a.available === false,
      text: a.available === false ? `${a.name || a.agent_type} (unavailable: ${reasonOf(a)})` : (a.name && a.name !== a.agent_type ? `${a.name} (${a.agent_type})` : a.agent_type),
    })));
    agentSel.append(ag);
    if (skills.length) {
      agentSel.append(h('optgroup', { label: 'Skills (the server picks an agent)' }, skills.map((s) => h('option', {
        value: SKILL_PREFIX + s.skill_id, text: s.name || s.skill_id,
      }))));
    }
    const usable = [...agentSel.options].filter((o) => !o.disabled);
    const keep = usable.find((o) => o.value === previous);
    agentSel.value = keep ? previous : (usable.find((o) => o.value === 'echo') || usable[0])?.value ?? '';
    renderInfo();
  }

  function renderInfo() {
    const v = agentSel.value;
    if (v.startsWith(SKILL_PREFIX)) {
      const s = skills.find((x) => SKILL_PREFIX + x.skill_id === v);
      const agentsOf = s?.metadata?.agents || s?.agents;
      setText(agentInfo, [s?.description, agentsOf?.length ? `Agents: ${agentsOf.join(', ')}` : null].filter(Boolean).join(' · '));
      return;
    }
    const a = agents.find((x) => x.agent_type === v);
    setText(agentInfo, a ? [a.description, a.capabilities?.length ? `Capabilities: ${a.capabilities.join(', ')}` : null].filter(Boolean).join(' · ') : '');
  }

  function renderCards() {
    clear(agentCards);
    if (!agents.length) {
      agentCards.append(h('li', { class: 'muted', text: 'No agents listed.' }));
      return;
    }
    // Available agents first, so the ones a person can use are in view.
    const sorted = [...agents].sort((a, b) => (a.available === false) - (b.available === false)
      || String(a.name || a.agent_type).localeCompare(String(b.name || b.agent_type)));
    for (const a of sorted) {
      const ok = a.available !== false;
      agentCards.append(h('li', { class: `agent-card${ok ? '' : ' unavailable'}`, dataset: { agentType: a.agent_type } },
        h('div', { class: 'agent-card-head' },
          h('strong', { text: a.name || a.agent_type }),
          h('span', { class: `pill ${ok ? 'pill-ok' : 'pill-off'}`, text: ok ? 'available' : 'unavailable' })),
        h('code', { text: a.agent_type }),
        a.description ? h('p', { text: a.description }) : null,
        ok ? null : h('p', { class: 'reason', text: reasonOf(a) }),
        a.capabilities?.length ? h('p', { class: 'caps' }, a.capabilities.map((c) => h('span', { class: 'tag', text: c }))) : null));
    }
  }

  async function loadLists() {
    refreshBtn.disabled = true;
    try {
      const [a, s] = await Promise.allSettled([client.request('agents.list'), client.request('skills.list')]);
      if (a.status === 'fulfilled') agents = listOf(a.value, 'agents');
      else toast(`Could not list agents: ${a.reason.message}`, 'error');
      skills = s.status === 'fulfilled' ? listOf(s.value, 'skills') : [];
      renderOptions();
      renderCards();
    } finally {
      refreshBtn.disabled = false;
    }
  }

  // ---- submitting ----------------------------------------------------------------------------
  function readParams() {
    const text = params.value.trim();
    if (!text) return { ok: true, value: undefined };
    try {
      const v = JSON.parse(text);
      if (v === null || typeof v !== 'object' || Array.isArray(v)) return { ok: false, message: 'Params must be a JSON object, like {"delay_ms": 100}.' };
      return { ok: true, value: v };
    } catch (err) {
      return { ok: false, message: `Params are not valid JSON: ${err.message}` };
    }
  }

  async function submit(e) {
    e?.preventDefault();
    const target = agentSel.value;
    if (!target) { toast('Choose an agent first.', 'error'); agentSel.focus(); return; }
    if (!prompt.value.trim()) { toast('Write a prompt first.', 'error'); prompt.focus(); return; }
    const p = readParams();
    setText(paramsError, p.ok ? '' : p.message);
    params.setAttribute('aria-invalid', p.ok ? 'false' : 'true');
    if (!p.ok) { params.focus(); return; }

    const frame = { prompt: prompt.value, idempotency_key: uuid() };
    if (target.startsWith(SKILL_PREFIX)) frame.skill = target.slice(SKILL_PREFIX.length);
    else frame.agent_type = target;
    if (p.value) frame.params = p.value;

    button.disabled = true;
    setText(result, 'Submitting…');
    try {
      const r = await client.request('task.submit', frame);
      // Show it on the board now; its pending event, if it comes later, changes nothing.
      store.applySnapshot({ ...r, prompt: r.prompt ?? frame.prompt, agent_type: r.agent_type ?? frame.agent_type }, 'front');
      setText(result, `Submitted task ${shortId(r.task_id)}.`);
      toast(`Submitted task ${shortId(r.task_id)} to ${r.agent_type || frame.agent_type || frame.skill}.`, 'success');
      if (openAfter.checked) onSubmitted(r.task_id);
    } catch (err) {
      setText(result, '');
      toast(`Submit failed: ${err.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  }

  form.addEventListener('submit', submit);
  prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) submit(e);
  });
  agentSel.addEventListener('change', renderInfo);
  refreshBtn.addEventListener('click', loadLists);

  return {
    /** Called when the view is shown: the agent list is fetched fresh each time. */
    show() { loadLists(); },
    focus() { (agentSel.value ? prompt : agentSel).focus(); },
  };
}

function listOf(v, key) {
  if (Array.isArray(v)) return v;
  if (Array.isArray(v?.[key])) return v[key];
  return [];
}
