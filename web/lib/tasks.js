// The task model behind the board: one Map of tasks, an order (newest first), and counts per
// state, updated incrementally from stream events and from list/get snapshots. Views listen
// for changes and patch only the rows that changed.

import { toMs } from './dom.js';

export const STATES = ['pending', 'planning', 'running', 'waiting', 'completed', 'failed', 'cancelled'];
export const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** `session:<id>` -> `<id>` */
export function sessionOfStream(stream) {
  return typeof stream === 'string' && stream.startsWith('session:') ? stream.slice(8) : null;
}

export class TaskStore {
  constructor() {
    /** task_id -> task (see _blank for the fields) */
    this.tasks = new Map();
    /** task ids, newest first: live arrivals go to the front, older list pages to the back */
    this.order = [];
    /** state -> number of tasks in it */
    this.counts = new Map(STATES.map((s) => [s, 0]));
    this.agents = new Set();
    this.sessions = new Set();
    this._listeners = new Set();
  }

  /**
   * fn(change): change is {kind:'new'|'state'|'info', id, task, prev} for one task, or
   * {kind:'bulk'} after a list page was merged.
   */
  onChange(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  get size() { return this.order.length; }

  /** Apply a `task.state` or `task.output` event from a session stream. */
  applyEvent(ev) {
    if (!ev.task_id) return;
    const data = ev.data || {};
    const session = sessionOfStream(ev.stream) ?? ev.session_id ?? null;
    let task = this.tasks.get(ev.task_id);
    const isNew = !task;
    if (isNew) {
      task = this._create(ev.task_id, 'front');
      task.createdAt = ev.at ?? null;
    }
    this._fill(task, { agent: data.agent_type, session, prompt: data.prompt, user: data.user_id });
    if (ev.at) task.updatedAt = ev.at;

    if (ev.type === 'task.state' && data.state) {
      const at = toMs(ev.at);
      const prev = task.state;
      // Terminal is final, and an event older than a snapshot we already applied (a replay
      // overlapping a list page) must not roll the badge back.
      const stale = (TERMINAL.has(prev) && !TERMINAL.has(data.state)) || at < task.stateAt;
      if (!stale) {
        this._setState(task, data.state);
        task.stateAt = Number.isNaN(at) ? task.stateAt : at;
        if (data.message != null) task.message = data.message;
        if (data.result !== undefined) task.result = data.result;
        if (data.error !== undefined) task.error = data.error;
      }
      this._emit({ kind: isNew ? 'new' : 'state', id: task.id, task, prev });
    } else {
      // Output (or an event type this dashboard does not know yet): the task is alive.
      if (isNew) this._setState(task, ev.type === 'task.output' ? 'running' : 'pending');
      this._emit({ kind: isNew ? 'new' : 'info', id: task.id, task, prev: task.state });
    }
  }

  /**
   * Merge a task object from task.list, task.get, GET /api/runtime/tasks or a submit reply.
   * `where` places a task we have not seen: 'front' (just submitted) or 'back' (older page).
   * Returns the change, or null when nothing visible changed.
   */
  applySnapshot(obj, where = 'back', { silent = false } = {}) {
    const id = obj?.task_id;
    if (!id) return null;
    let task = this.tasks.get(id);
    const isNew = !task;
    if (isNew) task = this._create(id, where);
    const meta = obj.metadata || {};
    this._fill(task, {
      agent: obj.agent_type ?? meta.agent_type,
      session: obj.session_id ?? meta.session_id,
      prompt: obj.prompt ?? meta.prompt,
      preview: obj.prompt_preview, // lists carry the start of the prompt; task.get all of it
      user: obj.user_id ?? meta.user_id,
    });
    task.createdAt ??= obj.created_at ?? meta.created_at ?? obj.updated_at ?? null;
    if (obj.updated_at) task.updatedAt = obj.updated_at;
    if ('result' in obj) task.result = obj.result;
    if ('error' in obj) task.error = obj.error;
    if (obj.execution_time != null) task.executionTime = obj.execution_time;

    const prev = task.state;
    const at = toMs(obj.updated_at);
    let apply;
    if (isNew || prev == null) apply = true;
    else if (TERMINAL.has(prev)) apply = false; // terminal is final
    else if (TERMINAL.has(obj.state)) apply = true;
    else apply = !Number.isNaN(at) && at > task.stateAt; // newer than the last event we applied
    if (apply && obj.state) {
      this._setState(task, obj.state);
      if (!Number.isNaN(at)) task.stateAt = at;
    }
    const change = { kind: isNew ? 'new' : prev !== task.state ? 'state' : 'info', id, task, prev };
    if (!silent) this._emit(change);
    return change;
  }

  /** Merge a page of tasks (newest first) at the back of the order, with one notification. */
  loadPage(items) {
    for (const t of items) this.applySnapshot(t, 'back', { silent: true });
    this._emit({ kind: 'bulk' });
  }

  /** The oldest task that came from a list page, for the `after` cursor of the next page. */
  oldestId() {
    return this.order.length ? this.order[this.order.length - 1] : null;
  }

  _create(id, where) {
    const task = {
      id,
      state: null,
      stateAt: -Infinity, // ms of the information the state came from
      agent: null,
      session: null,
      user: null,
      prompt: null,
      preview: null,
      message: null,
      result: undefined,
      error: undefined,
      executionTime: null,
      createdAt: null,
      updatedAt: null,
    };
    this.tasks.set(id, task);
    if (where === 'front') this.order.unshift(id);
    else this.order.push(id);
    return task;
  }

  _fill(task, fields) {
    for (const [k, v] of Object.entries(fields)) {
      if (v != null && v !== '' && task[k] == null) task[k] = v;
    }
    if (task.agent) this.agents.add(task.agent);
    if (task.session) this.sessions.add(task.session);
  }

  _setState(task, state) {
    if (task.state === state) return;
    if (task.state != null && this.counts.has(task.state)) this.counts.set(task.state, this.counts.get(task.state) - 1);
    if (!this.counts.has(state)) this.counts.set(state, 0); // a state added by a newer server
    this.counts.set(state, this.counts.get(state) + 1);
    task.state = state;
  }

  _emit(change) {
    for (const fn of this._listeners) fn(change);
  }
}
