// Where the sign-in token lives: sessionStorage only (gone when the tab closes, never in a URL
// or a log). The first-start link carries it in the fragment (#token=...), which browsers never
// send to the server; we take it and wipe the fragment before anything else runs.

const TOKEN_KEY = 'switchboard.token';
const SESSION_KEY = 'switchboard.session'; // this tab's session, so a reload re-attaches to it
const DEVICE_KEY = 'switchboard.device'; // a stable id for this browser, shown in presence

/** Move a `#token=` fragment into sessionStorage and remove it from the address bar and history. */
export function takeTokenFromFragment() {
  const hash = location.hash || '';
  const m = /^#(?:.*&)?token=([^&]*)/.exec(hash);
  if (!m) return false;
  // replaceState first: even if decoding fails, the token must not stay in the URL.
  history.replaceState(null, '', location.pathname + location.search);
  let token = '';
  try { token = decodeURIComponent(m[1]); } catch { token = m[1]; }
  if (token) setToken(token);
  return !!token;
}

export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

/** Forget the token and this tab's session id. */
export function clearAuth() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(SESSION_KEY);
  } catch { /* storage disabled */ }
}

export function getSavedSession() {
  try { return sessionStorage.getItem(SESSION_KEY); } catch { return null; }
}

export function saveSession(id) {
  try { sessionStorage.setItem(SESSION_KEY, id); } catch { /* storage disabled */ }
}

/** A random id for this browser, kept across tabs and restarts; not a secret. */
export function deviceId() {
  try {
    let id = localStorage.getItem(DEVICE_KEY);
    if (!id) {
      const rnd = crypto.getRandomValues(new Uint8Array(8));
      id = `web-${[...rnd].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
      localStorage.setItem(DEVICE_KEY, id);
    }
    return id;
  } catch {
    return null;
  }
}
