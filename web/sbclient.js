// sbclient.js: a small, dependency-free client for the Switchboard WebSocket protocol v1.
//
// It owns one socket at a time and hides its drops: requests are matched to replies by id and
// returned as promises; every stream (the session stream joined by `hello`, and anything passed
// to `subscribe`) remembers the last `seq` it delivered, so that after a drop the client sends
// `hello` again with the same `session_id` and `after_seq`, re-subscribes every other stream with
// its own `after_seq`, and drops anything it has already delivered. The application sees each
// event exactly once, in order, across reconnects and server restarts.
//
// Works in browsers and in any runtime with a WHATWG WebSocket (pass `WebSocket` in the options
// otherwise). Documented in protocol/js-client.md.

/** Connection states reported through the `state` callback. */
export const ConnState = Object.freeze({
  IDLE: 'idle', // constructed, connect() not called yet
  CONNECTING: 'connecting', // first connection attempt, never been live
  LIVE: 'live', // hello answered, streams flowing
  RECONNECTING: 'reconnecting', // dropped (or a first attempt failed): waiting or retrying
  CLOSED: 'closed', // close() was called, or the token was refused: no more retries
});

/** Close codes the protocol gives a meaning to. */
export const CloseCode = Object.freeze({
  AUTH: 4401, // bad or revoked token, or no hello: do not retry with the same token
  HELLO_TIMEOUT: 4408, // no hello in time: retry
  RESUME: 4409, // we fell too far behind: reconnect at once and resume with after_seq
});

/** An error reply, a local timeout, or a request cut off by a dropped connection. */
export class SwitchboardError extends Error {
  /**
   * @param {string} code   the server's snake_case code, or `timeout`, `disconnected`, `closed`
   * @param {string} message a sentence for a person
   */
  constructor(code, message) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
  }
}

const DEFAULTS = {
  token: null, // string, or a function returning one (read at every hello)
  sessionId: null, // attach to this session on the first hello instead of creating one
  deviceId: null,
  requestTimeoutMs: 30000,
  backoff: { initialMs: 500, maxMs: 30000, factor: 2 },
  heartbeat: true, // send `ping` every heartbeat_ms and reconnect when no reply comes back
  WebSocket: globalThis.WebSocket,
};

export class SwitchboardClient {
  /**
   * @param {string} url  ws:// or wss:// URL of the `/ws` endpoint
   * @param {object} [options] see DEFAULTS above
   */
  constructor(url, options = {}) {
    this.url = url;
    this.opts = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...options.backoff } };
    this._listeners = new Map(); // type -> Set<fn>
    this._state = ConnState.IDLE;
    this._stateInfo = { state: ConnState.IDLE };
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> { resolve, reject, timer, op }
    this._outbox = []; // requests made while not live, sent after the next hello
    this._streams = new Map(); // stream -> { lastSeq, wanted, active, inflight, waiters, resyncing }
    this._sessionId = options.sessionId || null;
    this._hello = null; // last hello result
    this._attempt = 0; // failed attempts since the last successful hello
    this._retryTimer = null;
    this._heartbeatTimer = null;
    this._everLive = false;
    this._stopped = false;
    this._firstHello = null; // { resolve, reject } of connect()
    this._onOnline = () => this._retryNow();
    if (typeof addEventListener === 'function') addEventListener('online', this._onOnline);
  }

  // ---- public API --------------------------------------------------------------------------

  /** Current connection state (one of ConnState). */
  get state() { return this._state; }
  /** The last state notification: { state, attempt, retryAt, closeCode, reason }. */
  get stateInfo() { return this._stateInfo; }
  /** Session this connection is attached to (known after the first hello). */
  get sessionId() { return this._sessionId; }
  /** The result of the last successful hello (user_id, roles, permissions, ...). */
  get helloResult() { return this._hello; }
  /** Name of this connection's own session stream, e.g. `session:7f0c...`. */
  get sessionStream() { return this._sessionId ? `session:${this._sessionId}` : null; }

  /**
   * Listen for `state`, `hello`, `event`, `reset`, `authfailed` or `error`.
   * Returns a function that removes the listener.
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  /**
   * Open the connection. Resolves with the first hello result; rejects only when the token is
   * refused or close() is called first. Network failures are retried, not reported as errors.
   */
  connect() {
    if (this._firstHello) return this._firstHello.promise;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    this._firstHello = { promise, resolve, reject };
    this._stopped = false;
    this._open();
    return promise;
  }

  /**
   * Send one op and wait for its reply. Resolves with `result`, rejects with a
   * SwitchboardError. While the connection is down the request waits for the next hello
   * (up to the timeout); a request already sent when the socket drops rejects with
   * `disconnected`, because the client cannot know whether the server acted on it: send an
   * `idempotency_key` with submits so that retrying is safe.
   */
  request(op, fields = {}, { timeoutMs = this.opts.requestTimeoutMs } = {}) {
    if (op === 'hello') return Promise.reject(new SwitchboardError('bad_request', 'hello is sent by the client itself'));
    if (this._stopped) return Promise.reject(new SwitchboardError('closed', 'The connection is closed.'));
    const id = this._nextId++;
    const frame = { ...fields, op, id };
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, op, timer: null };
      entry.timer = setTimeout(() => {
        this._pending.delete(id);
        this._outbox = this._outbox.filter((f) => f.id !== id);
        reject(new SwitchboardError('timeout', `No reply to ${op} within ${Math.round(timeoutMs / 1000)} s.`));
      }, timeoutMs);
      this._pending.set(id, entry);
      if (this._state === ConnState.LIVE) this._send(frame);
      else this._outbox.push(frame);
    });
  }

  /**
   * Subscribe to a stream (`session:<id>` or `audit`). With `afterSeq`, the server first replays
   * every stored event after that seq. The subscription is remembered and restored after every
   * reconnect with the last seq seen. Subscribing to a stream that is already live resolves at once.
   * Resolves with `{ stream, last_seq }`.
   */
  subscribe(stream, { afterSeq } = {}) {
    const s = this._stream(stream);
    s.wanted = true;
    if (afterSeq != null && (s.lastSeq == null || afterSeq > s.lastSeq)) s.lastSeq = afterSeq;
    if (s.active) return Promise.resolve({ stream, last_seq: s.lastSeq });
    // Settled by the subscribe below, or by the resubscribe after the next hello when the
    // connection is down now: a drop in between does not fail the caller.
    const done = new Promise((resolve, reject) => s.waiters.push({ resolve, reject }));
    // The session stream is joined by hello itself; asking again would only duplicate events.
    if (this._state === ConnState.LIVE && stream !== this.sessionStream) {
      this._sendSubscribe(stream).catch(() => {});
    }
    return done;
  }

  /** Stop receiving a stream and forget its position. */
  async unsubscribe(stream) {
    const s = this._streams.get(stream);
    this._streams.delete(stream);
    if (s?.active && this._state === ConnState.LIVE) await this.request('unsubscribe', { stream });
  }

  /** Last seq delivered on a stream, or null when none yet. */
  lastSeq(stream) { return this._streams.get(stream)?.lastSeq ?? null; }

  /** Close for good: no more reconnects; pending requests reject with `closed`. */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._stopHeartbeat();
    if (typeof removeEventListener === 'function') removeEventListener('online', this._onOnline);
    const ws = this._ws;
    this._detach();
    if (ws && ws.readyState <= 1) ws.close(1000, 'client closed');
    this._failAll(new SwitchboardError('closed', 'The connection is closed.'), true);
    this._firstHello?.reject(new SwitchboardError('closed', 'The connection is closed.'));
    this._setState(ConnState.CLOSED, { reason: 'closed' });
  }

  // ---- connection lifecycle ----------------------------------------------------------------

  _open() {
    if (this._stopped) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._setState(this._everLive || this._attempt > 0 ? ConnState.RECONNECTING : ConnState.CONNECTING,
      { attempt: this._attempt, retryAt: null });
    let ws;
    try {
      ws = new this.opts.WebSocket(this.url);
    } catch (err) {
      this._scheduleReconnect({ reason: String(err?.message || err) });
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._sendHello();
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = (ev) => this._onClose(ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows; handled there
  }

  _sendHello() {
    const token = typeof this.opts.token === 'function' ? this.opts.token() : this.opts.token;
    const frame = { op: 'hello', id: this._nextId++ };
    if (token) frame.token = token;
    if (this.opts.deviceId) frame.device_id = this.opts.deviceId;
    if (this._sessionId) {
      frame.session_id = this._sessionId;
      // Resume the session stream exactly where we stopped; the server replays the rest.
      const last = this._streams.get(`session:${this._sessionId}`)?.lastSeq;
      if (last != null) frame.after_seq = last;
    }
    this._helloId = frame.id;
    this._helloSentSession = !!frame.session_id;
    this._send(frame);
  }

  _onHelloReply(msg) {
    if (!msg.ok) {
      const err = new SwitchboardError(msg.error?.code || 'unauthorized', msg.error?.message || 'hello was refused');
      if (err.code === 'unauthorized') { this._authFailed(err); return; }
      if (this._helloSentSession) {
        // The session we tried to re-attach is gone (ended, or the store was reset): start a
        // fresh one rather than failing.
        this._forgetSession();
        this._freshRetry = true;
      } else if (err.code === 'forbidden') {
        this._authFailed(err);
        return;
      }
      // Do not wait for the server's 4401 close: it would read as a bad token.
      this._drop(`hello failed: ${err.code}`);
      return;
    }
    const r = msg.result || {};
    if (this._sessionId && r.session_id !== this._sessionId) this._forgetSession();
    this._sessionId = r.session_id;
    this._hello = r;
    const own = this._stream(`session:${r.session_id}`);
    own.wanted = true;
    own.active = true;
    const head = typeof r.last_seq === 'number' ? r.last_seq : 0;
    if (own.lastSeq == null) {
      own.lastSeq = head; // without after_seq the server sends only what comes after last_seq
    } else if (head < own.lastSeq) {
      own.lastSeq = head; // the stream is shorter than what we saw: the store was reset
      this._emit('reset', { stream: this.sessionStream, lastSeq: head });
    }
    // Events we asked for were pruned (data retention): the replay starts at earliest_seq.
    if (typeof r.earliest_seq === 'number') this._pruned(this.sessionStream, r.earliest_seq);
    const resumed = this._everLive;
    this._everLive = true;
    this._attempt = 0;
    this._freshRetry = false;
    this._setState(ConnState.LIVE, {});
    this._startHeartbeat(r.heartbeat_ms);
    for (const w of own.waiters.splice(0)) w.resolve({ stream: this.sessionStream, last_seq: head });
    this._emit('hello', r, { resumed });
    this._firstHello?.resolve(r);
    // Restore every other stream with its own position, then send what was queued.
    for (const [name, s] of this._streams) {
      if (name !== this.sessionStream && s.wanted && !s.active) this._sendSubscribe(name).catch(() => {});
    }
    const queued = this._outbox;
    this._outbox = [];
    for (const f of queued) if (this._pending.has(f.id)) this._send(f);
  }

  _onClose(code, reason) {
    this._detach();
    this._failAll(new SwitchboardError('disconnected', 'The connection dropped before the reply.'), false);
    if (this._stopped) return;
    if (code === CloseCode.AUTH && !this._freshRetry) {
      this._authFailed(new SwitchboardError('unauthorized', reason || 'The token was refused.'));
      return;
    }
    // 4409 (too far behind) and a fresh-session retry are not failures: reconnect at once.
    if (code === CloseCode.RESUME || this._freshRetry) {
      this._setState(ConnState.RECONNECTING, { attempt: this._attempt, retryAt: null, closeCode: code });
      this._retryTimer = setTimeout(() => this._open(), Math.random() * 250);
      return;
    }
    this._scheduleReconnect({ closeCode: code, reason });
  }

  /** Exponential backoff with jitter, so a restarted server is not hit by every tab at once. */
  _scheduleReconnect(info) {
    const { initialMs, maxMs, factor } = this.opts.backoff;
    const base = Math.min(maxMs, initialMs * factor ** this._attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this._attempt += 1;
    const retryAt = Date.now() + delay;
    this._setState(ConnState.RECONNECTING, { ...info, attempt: this._attempt, retryAt });
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  /** The browser came back online: skip the rest of the backoff wait. */
  _retryNow() {
    if (this._retryTimer && !this._ws && !this._stopped) this._open();
  }

  _authFailed(err) {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._stopHeartbeat();
    const ws = this._ws;
    this._detach();
    if (ws && ws.readyState <= 1) ws.close(1000);
    this._failAll(err, true);
    this._setState(ConnState.CLOSED, { reason: 'unauthorized', message: err.message });
    this._emit('authfailed', err);
    this._firstHello?.reject(err);
  }

  /** Forget a dropped socket without waiting for its close handshake (it may never come). */
  _detach() {
    const ws = this._ws;
    this._ws = null;
    this._stopHeartbeat();
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    for (const s of this._streams.values()) { s.active = false; s.inflight = null; s.resyncing = false; }
  }

  /** Drop the current socket (heartbeat lost, sequence gap) and reconnect with resume. */
  _drop(reason) {
    const ws = this._ws;
    if (!ws) return;
    try { ws.close(4000, reason); } catch { /* already closing */ }
    this._onClose(4000, reason);
  }

  _forgetSession() {
    if (this._sessionId) this._streams.delete(`session:${this._sessionId}`);
    this._sessionId = null;
  }

  _startHeartbeat(ms) {
    this._stopHeartbeat();
    if (!this.opts.heartbeat) return;
    const every = Math.max(2000, Number(ms) || 15000);
    // No reply within one interval means the path is dead even if TCP has not noticed.
    this._heartbeatTimer = setInterval(() => {
      this.request('ping', {}, { timeoutMs: every }).catch((e) => {
        if (e.code === 'timeout') this._drop('heartbeat timeout');
      });
    }, every);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  // ---- frames --------------------------------------------------------------------------------

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  _onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.op === 'reply') {
      if (msg.id != null && msg.id === this._helloId) { this._helloId = null; this._onHelloReply(msg); return; }
      const p = this._pending.get(msg.id);
      if (!p) { if (!msg.ok) this._emit('error', new SwitchboardError(msg.error?.code, msg.error?.message)); return; }
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result ?? {});
      else p.reject(new SwitchboardError(msg.error?.code || 'internal', msg.error?.message || `${p.op} failed`));
    } else if (msg.op === 'event') {
      this._onEvent(msg);
    }
  }

  /** Deliver an event at most once and in order; a gap makes us ask again from the last seq. */
  _onEvent(ev) {
    const s = this._stream(ev.stream);
    if (ev.type === 'stream.pruned') { this._pruned(ev.stream, ev.data?.earliest_seq); return; }
    if (typeof ev.seq === 'number' && s.lastSeq != null) {
      if (ev.seq <= s.lastSeq) return; // already delivered (replay overlap)
      if (ev.seq > s.lastSeq + 1) { this._resync(ev.stream); return; } // missing events: refetch
    }
    if (typeof ev.seq === 'number') s.lastSeq = ev.seq;
    this._emit('event', ev);
  }

  /**
   * Events of `stream` before `earliestSeq` were pruned by the server's retention: go on from
   * there (the server sends that event next) and tell the application, which should reload
   * whatever state it built from the events it will not get.
   */
  _pruned(stream, earliestSeq) {
    if (typeof earliestSeq !== 'number') return;
    const s = this._stream(stream);
    if (s.lastSeq != null && s.lastSeq >= earliestSeq - 1) return; // nothing we wanted is missing
    s.lastSeq = earliestSeq - 1;
    this._emit('pruned', { stream, earliestSeq });
  }

  _resync(stream) {
    const s = this._streams.get(stream);
    if (!s || s.resyncing) return;
    s.resyncing = true;
    // The own session stream belongs to hello, so the clean way to refill it is a resume.
    if (stream === this.sessionStream) { this._drop('sequence gap'); return; }
    this.request('unsubscribe', { stream })
      .catch(() => {})
      .then(() => { s.active = false; return this._sendSubscribe(stream); })
      .catch(() => {});
  }

  _sendSubscribe(stream) {
    const s = this._stream(stream);
    if (s.inflight) return s.inflight;
    const fields = { stream };
    const afterSeq = s.lastSeq;
    if (afterSeq != null) fields.after_seq = afterSeq;
    s.inflight = this.request('subscribe', fields).then((r) => {
      s.inflight = null;
      s.active = true;
      s.resyncing = false;
      const head = typeof r.last_seq === 'number' ? r.last_seq : null;
      if (afterSeq == null) {
        // Live only: what comes next is after the head (events already seen keep theirs).
        s.lastSeq = Math.max(s.lastSeq ?? 0, head ?? 0);
      } else if (head != null && head < afterSeq) {
        // The stream is shorter than what we saw: the store was reset. Start over from its head.
        s.lastSeq = head;
        this._emit('reset', { stream, lastSeq: head });
      } else if (typeof r.earliest_seq === 'number') {
        this._pruned(stream, r.earliest_seq); // the replay starts at earliest_seq
      }
      const result = { stream, last_seq: head };
      for (const w of s.waiters.splice(0)) w.resolve(result);
      return result;
    }, (err) => {
      s.inflight = null;
      if (err.code === 'disconnected') throw err; // restored after the next hello
      err.stream = stream;
      if (err.code !== 'timeout') s.wanted = false; // forbidden, not_found: retrying will not help
      this._emit('error', err);
      for (const w of s.waiters.splice(0)) w.reject(err);
      throw err;
    });
    return s.inflight;
  }

  _stream(name) {
    let s = this._streams.get(name);
    if (!s) {
      s = { lastSeq: null, wanted: false, active: false, inflight: null, waiters: [], resyncing: false };
      this._streams.set(name, s);
    }
    return s;
  }

  /** Reject in-flight requests; queued ones survive a drop unless `all`. */
  _failAll(err, all) {
    for (const [id, p] of this._pending) {
      const queued = this._outbox.some((f) => f.id === id);
      if (queued && !all) continue;
      clearTimeout(p.timer);
      this._pending.delete(id);
      p.reject(err);
    }
    if (all) {
      this._outbox = [];
      for (const s of this._streams.values()) for (const w of s.waiters.splice(0)) w.reject(err);
    }
  }

  _setState(state, info) {
    this._state = state;
    this._stateInfo = { state, ...info };
    this._emit('state', this._stateInfo);
  }

  _emit(type, ...args) {
    for (const fn of this._listeners.get(type) || []) {
      try { fn(...args); } catch (err) { console.error(`switchboard ${type} listener failed`, err); }
    }
  }
}

/** The `/ws` URL of the server that served this page (ws: or wss: to match the page). */
export function defaultUrl(loc = globalThis.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}
