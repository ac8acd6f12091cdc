// Switchboard dashboard: sign-in, the connection, routing between views, and the data flow
// that feeds the board (sessions -> subscriptions -> task list -> live events).
//
// Data flow in one breath: hello gives the user, permissions and this tab's session; the board
// lists sessions over REST and subscribes to each `session:<id>` stream *before* loading the
// task list, so no transition can fall between the list and the live events; the client
// resumes every stream with after_seq after a drop, so a server restart loses nothing.

import { SwitchboardClient, defaultUrl } from './sbclient.js';
import { createApi, asList, query } from './lib/api.js';
import * as auth from './lib/auth.js';
import { initTheme } from './lib/theme.js';
import { setText, toast } from './lib/dom.js';
import { TaskStore } from './lib/tasks.js';
import { SessionsModel } from './lib/sessions.js';
import { createBoard } from './views/board.js';
import { createDetail } from './views/detail.js';
import { createSubmit } from './views/submit.js';
import { createSessions } from './views/sessions.js';
import { createAudit } from './views/audit.js';
import { createHosts } from './views/hosts.js';

const $ = (id) => document.getElementById(id);
const PAGE = 500; // tasks per list page
const NOTICE_KEY = 'switchboard.notice'; // a message for the sign-in screen across a reload

// The token must leave the address bar before anything else could read, log or share the URL.
auth.takeTokenFromFragment();
initTheme($('theme-toggle'));

let client = null;
let app = null; // built on the first successful hello
let permissions = new Set();
const me = { userId: null, roles: [], sessionId: null };
const api = createApi(auth.getToken, () => signOut('Your token is no longer accepted. Sign in again.'));

/** Whether the signed-in user holds a permission (the hello's list is authoritative). */
function can(p) {
  return permissions.has(p) || permissions.has('*') || permissions.has('all');
}

// ---- sign-in -----------------------------------------------------------------------------------

function showSignIn() {
  $('signin-view').hidden = false;
  $('app-shell').hidden = true;
  $('nav').hidden = true;
  $('user').hidden = true;
  $('sign-out').hidden = true;
  renderConn({ state: 'closed' });
  let notice = null;
  try {
    notice = sessionStorage.getItem(NOTICE_KEY);
    sessionStorage.removeItem(NOTICE_KEY);
  } catch { /* storage disabled */ }
  setText($('signin-error'), notice || '');
  $('token-input').focus();
}

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token-input').value.trim();
  if (!token) {
    setText($('signin-error'), 'Paste a token first.');
    $('token-input').focus();
    return;
  }
  auth.setToken(token);
  $('token-input').value = '';
  startApp();
});

/** Forget the token and go back to the sign-in screen, from a clean page. */
function signOut(notice) {
  client?.close();
  auth.clearAuth();
  try { if (notice) sessionStorage.setItem(NOTICE_KEY, notice); } catch { /* storage disabled */ }
  // A reload drops every task and record of this user from memory.
  history.replaceState(null, '', location.pathname + location.search);
  location.reload();
}

$('sign-out').addEventListener('click', () => signOut(null));

// ---- connection --------------------------------------------------------------------------------

function startApp() {
  $('signin-view').hidden = true;
  $('app-shell').hidden = false;
  $('boot').hidden = false;
  client = new SwitchboardClient(defaultUrl(), {
    token: auth.getToken, // read at every hello, never logged
    sessionId: auth.getSavedSession(), // a reload re-attaches to this tab's session
    deviceId: auth.deviceId(),
  });
  client.on('state', renderConn);
  client.on('hello', onHello);
  client.on('event', onEvent);
  client.on('reset', () => app?.reloadTasks());
  // Events we were to resume from were pruned (retention): what they said is read again.
  client.on('pruned', () => { app?.reloadTasks(); app?.detail.reload(); });
  client.on('authfailed', () => signOut(app ? 'Your token is no longer accepted. Sign in again.' : 'That token was not accepted.'));
  // Subscription failures (err.stream set) are handled where the subscribe was made.
  client.on('error', (err) => { if (!err.stream) toast(err.message, 'error'); });
  client.connect().catch(() => { /* authfailed handles refusals */ });
}

let countdown = null;
/** Header indicator: #conn-state is exactly connecting | live | reconnecting | offline. */
function renderConn(info) {
  const word = { connecting: 'connecting', live: 'live', reconnecting: 'reconnecting' }[info.state] || 'offline';
  const conn = $('conn');
  // Signed out is not a fault: a grey dot, not a red one (the text still says offline).
  conn.dataset.state = word === 'offline' && !auth.getToken() ? 'signedout' : word;
  setText($('conn-state'), word);
  clearInterval(countdown);
  const detail = $('conn-detail');
  const tick = () => {
    if (word === 'reconnecting' && info.retryAt) {
      const s = Math.max(0, Math.ceil((info.retryAt - Date.now()) / 1000));
      setText(detail, s > 0 ? `in ${s}s` : 'now');
    } else {
      setText(detail, word === 'offline' ? (auth.getToken() ? '' : 'signed out') : '');
    }
  };
  tick();
  if (word === 'reconnecting' && info.retryAt) countdown = setInterval(tick, 500);
  conn.title = info.attempt ? `Attempt ${info.attempt}${info.closeCode ? `, last close code ${info.closeCode}` : ''}` : '';
}

function onHello(r, { resumed }) {
  auth.saveSession(r.session_id);
  permissions = new Set(r.permissions || []);
  me.userId = r.user_id;
  me.roles = r.roles || [];
  me.sessionId = r.session_id;
  setText($('user-id'), r.user_id || '');
  setText($('user-roles'), me.roles.join(', '));
  $('user').hidden = false;
  $('sign-out').hidden = false;
  $('nav').hidden = false;
  $('boot').hidden = true;
  if (!app) {
    app = buildApp();
    app.start();
  } else if (resumed) {
    app.sessions.refresh(); // sessions opened while we were away get subscribed
    if (app.wallOn()) app.reloadTasks(); // the wall is live only: what changed meanwhile is read
  }
  app.onHello(r);
  applyPermissions();
  route();
}

function onEvent(ev) {
  if (!app) return;
  if (ev.stream === 'audit') {
    app.views.audit?.onEvent(ev);
    return;
  }
  if (ev.stream === 'tasks') {
    // The wall (admin:system): every task's state changes, live only. A lag means some were
    // dropped: the list and the counts are read again.
    if (ev.type === 'tasks.lagged') app.reloadTasks();
    else if (ev.task_id) app.store.applyEvent(ev);
    return;
  }
  if (typeof ev.stream === 'string' && ev.stream.startsWith('session:')) {
    // With the wall on, state changes reach the board from it; session streams still carry output.
    if (ev.task_id && !(app.wallOn() && ev.type === 'task.state')) app.store.applyEvent(ev);
    app.detail.onEvent(ev);
  }
}

// ---- the app -----------------------------------------------------------------------------------

function buildApp() {
  const store = new TaskStore();
  const sessions = new SessionsModel(api);
  const detailRoot = document.createElement('aside');
  const detail = createDetail({
    root: detailRoot, client, store, can, onClose: closeTask,
    // A task seen on the wall may be in a session not followed yet: follow it (replayed from 0).
    onLoaded: (t) => { if (t.session_id) follow([{ session_id: t.session_id, state: 'active' }], { initial: false }); },
  });
  const board = createBoard({
    root: $('view-board'), store, sessions, detailRoot,
    onOpen: (id) => { location.hash = `#/task/${encodeURIComponent(id)}`; },
    onLoadMore: loadMore,
    onNeedPrompt: needPrompt,
    fetchCounts: () => api.get('api/runtime/tasks/counts'),
  });
  const views = {
    board: null,
    submit: null, // created only for task:submit holders, so others have no such controls
    sessions: createSessions({ root: $('view-sessions'), api, sessions, can, me: () => me }),
    hosts: createHosts({ root: $('view-hosts'), api }),
    audit: null, // created only for admin:system holders
  };
  const subscribed = new Set();
  let fallbackTimer = null;
  let wall = false;

  /** With admin:system, one subscription to `tasks` keeps the whole board live, however many
   *  sessions there are; session subscriptions then only feed the task detail. */
  async function followAll() {
    if (!can('admin:system') || wall) return;
    try {
      await client.subscribe('tasks');
      wall = true;
    } catch { /* an older server: per-session subscriptions and polling as before */ }
  }

  /** Subscribe to session streams not yet followed. Sessions found after the first load are
   *  replayed from seq 0, since their tasks may predate our list. */
  async function follow(list, { initial }) {
    const jobs = [];
    // The server caps subscriptions per connection: the most recently active sessions go first,
    // and whatever does not fit is kept right by the polling fallback.
    const byActivity = [...list].sort((a, b) => String(b?.last_activity || '').localeCompare(String(a?.last_activity || '')));
    for (const s of byActivity) {
      if (!s || s.state === 'ended' || subscribed.has(s.session_id)) continue;
      subscribed.add(s.session_id);
      const stream = `session:${s.session_id}`;
      jobs.push(client.subscribe(stream, initial ? {} : { afterSeq: 0 }).catch((err) => {
        subscribed.delete(s.session_id);
        // Over a subscription limit, say: keep the board right by polling the list instead.
        if (err.code !== 'not_found' && !wall) startFallback();
      }));
    }
    await Promise.allSettled(jobs);
  }

  function startFallback() {
    if (fallbackTimer) return;
    toast('Some sessions could not be followed live; the board refreshes every 5 s instead.', 'info');
    fallbackTimer = setInterval(async () => {
      try {
        const r = await client.request('task.list', { limit: 200 });
        for (const t of asList(r, 'tasks')) store.applySnapshot(t, 'front');
      } catch { /* try again next tick */ }
    }, 5000);
  }

  // Events do not carry the prompt: rows shown for such tasks fetch their state once, one
  // request at a time, so a burst of new tasks costs at most a screenful of requests.
  const promptAsked = new Set();
  const promptQueue = [];
  let promptPumping = false;
  function needPrompt(id) {
    if (promptAsked.has(id)) return;
    promptAsked.add(id);
    promptQueue.push(id);
    pumpPrompts();
  }
  async function pumpPrompts() {
    if (promptPumping) return;
    promptPumping = true;
    while (promptQueue.length) {
      const id = promptQueue.shift();
      try {
        store.applySnapshot(await api.get(`api/runtime/tasks/${encodeURIComponent(id)}/state`));
      } catch { /* the row keeps its last message */ }
    }
    promptPumping = false;
  }

  async function loadFirstPage() {
    let items;
    try {
      items = asList(await client.request('task.list', { limit: PAGE }), 'tasks');
    } catch (err) {
      try {
        items = asList(await api.get(`api/runtime/tasks${query({ limit: PAGE })}`), 'tasks');
      } catch {
        toast(`Could not load tasks: ${err.message}`, 'error');
        items = [];
      }
    }
    store.loadPage(items);
    board.setHasMore(items.length >= PAGE);
    board.setEmptyText(can('task:submit') ? 'No tasks yet. Submit one from the Submit tab.' : 'No tasks yet.');
  }

  async function loadMore() {
    try {
      const items = asList(await api.get(`api/runtime/tasks${query({ limit: PAGE, after: store.oldestId() })}`), 'tasks');
      store.loadPage(items);
      board.setHasMore(items.length >= PAGE);
    } catch (err) {
      toast(err.missing ? 'Older tasks are not available on this server.' : `Could not load older tasks: ${err.message}`, 'error');
      if (err.missing) board.setHasMore(false);
    }
  }

  return {
    store, sessions, detail, board, views,
    async start() {
      await sessions.refresh();
      // Subscribe before listing: a transition between the two then shows up as an event.
      await followAll();
      await follow(sessions.list, { initial: true });
      sessions.onChange(({ added }) => follow(added.map((id) => sessions.byId.get(id)), { initial: false }));
      await loadFirstPage();
      sessions.start();
    },
    onHello(r) {
      board.setOwnSession(r.session_id);
      // Without a session list endpoint, the hello session is the one we know.
      sessions.remember({ session_id: r.session_id, user_id: r.user_id, device_id: auth.deviceId(), state: 'active' });
      subscribed.add(r.session_id);
    },
    reloadTasks: () => { board.refreshCounts(); return loadFirstPage(); },
    wallOn: () => wall,
    followAll,
    /** admin:system was taken away: the server ended the subscription's right, drop it here too. */
    leaveWall() {
      if (!wall) return;
      wall = false;
      client.unsubscribe('tasks').catch(() => {});
    },
  };
}

// ---- permissions and routing -------------------------------------------------------------------

const VIEW_PERMS = { board: null, submit: 'task:submit', sessions: null, hosts: 'agent:list', audit: 'admin:system' };

function applyPermissions() {
  for (const a of document.querySelectorAll('#nav a[data-perm]')) a.hidden = !can(a.dataset.perm);
  const { views } = app;
  if (can('task:submit') && !views.submit) {
    views.submit = createSubmit({ root: $('view-submit'), client, store: app.store, onSubmitted: (id) => { location.hash = `#/task/${encodeURIComponent(id)}`; } });
  } else if (!can('task:submit') && views.submit) {
    $('view-submit').replaceChildren();
    views.submit = null;
  }
  if (can('admin:system')) app.followAll();
  else app.leaveWall();
  if (can('admin:system') && !views.audit) {
    views.audit = createAudit({ root: $('view-audit'), api, client });
  } else if (!can('admin:system') && views.audit) {
    $('view-audit').replaceChildren();
    views.audit = null;
    client.unsubscribe('audit').catch(() => {});
  }
  app.detail.refreshPermissions();
}

let currentView = null;

function route() {
  if (!app) return;
  const [name, arg] = location.hash.replace(/^#\/?/, '').split('/');
  if (name === 'task' && arg) {
    showView('board');
    const id = decodeURIComponent(arg);
    if (app.detail.taskId !== id) app.detail.open(id);
    app.board.select(id);
    return;
  }
  const view = name in VIEW_PERMS ? name : 'board';
  const perm = VIEW_PERMS[view];
  if (perm && !can(perm)) {
    history.replaceState(null, '', '#/board');
    showView('board');
  } else {
    showView(view);
  }
  if (view === 'board' || (perm && !can(perm))) {
    app.detail.close();
    app.board.select(null);
  }
}

function showView(name) {
  for (const v of Object.keys(VIEW_PERMS)) $(`view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (currentView === name) return;
  if (currentView) app.views[currentView]?.hide?.();
  currentView = name;
  app.views[name]?.show?.();
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Switchboard`;
}

function closeTask() {
  const id = app.detail.taskId;
  location.hash = '#/board';
  if (id) requestAnimationFrame(() => app.board.focusTask(id));
}

window.addEventListener('hashchange', route);

// ---- boot --------------------------------------------------------------------------------------

if (auth.getToken()) startApp();
else showSignIn();
