// The list of sessions the user can see (GET /api/runtime/sessions), polled every few seconds
// so that sessions opened elsewhere (another tab, the console client, a script) show up on the
// board and get subscribed.

import { asList } from './api.js';

export class SessionsModel {
  constructor(api, { intervalMs = 5000 } = {}) {
    this.api = api;
    this.intervalMs = intervalMs;
    /** session_id -> session object as the server sent it */
    this.byId = new Map();
    /** false once the server answered 404: the board then uses the hello session only */
    this.available = true;
    this.error = null;
    this._timer = null;
    this._listeners = new Set();
    this._signature = '';
  }

  /** fn({added: [ids], all: [sessions]}) after each refresh that changed something */
  onChange(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  get list() { return [...this.byId.values()]; }

  async refresh() {
    if (!this.available) return;
    let items;
    try {
      items = asList(await this.api.get('api/runtime/sessions'), 'sessions', 'items');
      this.error = null;
    } catch (err) {
      if (err.missing) this.available = false;
      this.error = err;
      this._emit([]);
      return;
    }
    const added = [];
    for (const s of items) {
      if (!s?.session_id) continue;
      if (!this.byId.has(s.session_id)) added.push(s.session_id);
      this.byId.set(s.session_id, s);
    }
    // Re-render only when something a person would see changed.
    const sig = JSON.stringify(items.map((s) => [s.session_id, s.state, s.last_activity, s.device_id]));
    if (added.length || sig !== this._signature) {
      this._signature = sig;
      this._emit(added);
    }
  }

  /** Make sure a session is known even when the list endpoint is missing (the hello session). */
  remember(session) {
    if (!session?.session_id || this.byId.has(session.session_id)) return;
    this.byId.set(session.session_id, session);
    this._emit([session.session_id]);
  }

  start() {
    this.stop();
    this._timer = setInterval(() => this.refresh(), this.intervalMs);
  }

  stop() {
    clearInterval(this._timer);
    this._timer = null;
  }

  _emit(added) {
    for (const fn of this._listeners) fn({ added, all: this.list });
  }
}
