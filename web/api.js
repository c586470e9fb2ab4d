// api.js: the server's HTTP API as seen by the page.
//
// Every call goes to the page's own origin. An API key, when the user gave
// one, is kept in localStorage and sent as "Authorization: Bearer KEY".
// Error answers ({"error": {code, type, message}}) become ApiError, which
// also carries Retry-After (seconds) for 429 and 503.

const KEY_STORE = 'ditmoe.apiKey';

export const apiKey = {
  get: () => localStorage.getItem(KEY_STORE) || '',
  set: (k) => (k ? localStorage.setItem(KEY_STORE, k) : localStorage.removeItem(KEY_STORE)),
};

export class ApiError extends Error {
  constructor(status, type, message, retryAfter) {
    super(message);
    this.status = status; // HTTP status, 0 when the server could not be reached
    this.type = type;     // the error body's "type" (e.g. "invalid_request")
    this.retryAfter = retryAfter;
  }
}

function headers(extra) {
  const h = new Headers(extra);
  const k = apiKey.get();
  if (k) h.set('Authorization', `Bearer ${k}`);
  return h;
}

async function toError(res) {
  let type = 'http_' + res.status, message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      type = body.error.type || type;
      message = body.error.message || message;
    }
  } catch { /* not JSON: keep the status line */ }
  const ra = parseInt(res.headers.get('Retry-After'), 10);
  return new ApiError(res.status, type, message, Number.isFinite(ra) ? ra : null);
}

// fetch with the key; resolves to the Response when ok, else throws ApiError.
export async function request(path, { method = 'GET', json, accept, signal } = {}) {
  const init = { method, signal, headers: headers(accept ? { Accept: accept } : undefined) };
  if (json !== undefined) {
    init.headers.set('Content-Type', 'application/json');
    init.body = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', 'The server cannot be reached.', null);
  }
  if (!res.ok) throw await toError(res);
  return res;
}

export const getJSON = async (path, opts) => (await request(path, opts)).json();

// The job's server-sent events. EventSource cannot send headers, so with an
// API key (which the server only takes from headers) the job is polled
// instead. on(type, data) gets "queued", "running", "step" and finally
// "done", "failed" or "cancelled" with the job's status document. Returns
// a function that stops watching.
export function watchJob(id, on) {
  return apiKey.get() ? pollJob(id, on) : streamJob(id, on);
}

const FINAL = ['done', 'failed', 'cancelled'];

function streamJob(id, on) {
  const es = new EventSource(`/jobs/${encodeURIComponent(id)}/events`);
  let ended = false, stopPoll = null;
  for (const type of ['queued', 'running', 'step', ...FINAL]) {
    es.addEventListener(type, (ev) => {
      if (ended) return;
      const data = JSON.parse(ev.data);
      if (FINAL.includes(type)) {
        ended = true;
        es.close(); // else EventSource reconnects once the stream ends
      }
      on(type, data);
    });
  }
  // A dropped stream: carry on by polling rather than replaying events.
  es.onerror = () => {
    if (ended || stopPoll) return;
    es.close();
    stopPoll = pollJob(id, on);
  };
  return () => {
    ended = true;
    es.close();
    if (stopPoll) stopPoll();
  };
}

function pollJob(id, on, everyMs = 300) {
  let stopped = false, timer = null, last = '';
  const tick = async () => {
    try {
      const st = await getJSON(`/jobs/${encodeURIComponent(id)}`);
      if (stopped) return;
      if (FINAL.includes(st.status)) {
        stopped = true;
        on(st.status, st);
        return;
      }
      const sig = `${st.status}/${st.step}/${st.queue_position}`;
      if (sig !== last) {
        last = sig;
        if (st.status === 'queued') on('queued', st);
        else on('step', st);
      }
    } catch (e) {
      if (stopped) return;
      if (e.status === 0 || e.status >= 500) { /* transient: try again */ } else {
        stopped = true;
        on('failed', { status: 'failed', error: e.message, apiError: e });
        return;
      }
    }
    timer = setTimeout(tick, everyMs);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
