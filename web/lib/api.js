// REST helper: same origin, relative URLs, `Authorization: Bearer` on every call. The token
// never goes into a URL, so it cannot leak through logs, history or Referer headers.

/** A failed REST call: HTTP status plus the server's error code and message when it sent one. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }

  /** True for a route this server does not have (yet): a 404 on a list or action endpoint. */
  get missing() {
    return this.status === 404 || this.status === 405 || this.status === 501;
  }
}

/**
 * @param {() => string|null} getToken
 * @param {(err: ApiError) => void} onUnauthorized called on 401, e.g. to go back to sign-in
 */
export function createApi(getToken, onUnauthorized) {
  async function call(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      // Paths are given as "api/..." (relative), so a dashboard served under a prefix still works.
      res = await fetch(path, init);
    } catch {
      throw new ApiError(0, 'unavailable', 'The server could not be reached.');
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const e = data?.error || {};
      const err = new ApiError(res.status, e.code || `http_${res.status}`, e.message || `${method} ${path} failed (${res.status}).`);
      if (res.status === 401) onUnauthorized?.(err);
      throw err;
    }
    return data;
  }

  return {
    get: (path) => call('GET', path),
    post: (path, body = {}) => call('POST', path, body),
    del: (path) => call('DELETE', path),
  };
}

/** Build a query string from the defined values of an object: {a:1,b:null} -> "?a=1". */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Lists come back as arrays, or wrapped as {items|events|tasks|...: [...]}: accept both. */
export function asList(data, ...keys) {
  if (Array.isArray(data)) return data;
  for (const k of keys) if (Array.isArray(data?.[k])) return data[k];
  return [];
}
