/**
 * Toolbus notifier client for browsers (a plain ES module, no build step).
 *
 *   const client = new ToolbusClient({ token });           // or { getToken: async () => token }
 *   client.addEventListener('event', (e) => show(e.detail)); // one per stored event, in revision order
 *   client.start();
 *
 * It exchanges the token for a one-time ticket (POST /tickets) so the token never appears in a
 * URL, opens /ws?ticket=…, subscribes after the last revision it has seen, and on any drop
 * reconnects with exponential backoff and resumes from that revision: the server replays what
 * was missed, so the listener sees every event once, in order. If tickets are unavailable (503),
 * it sends the token in the first message instead.
 *
 * Events (CustomEvent, payload in `detail`):
 *   'event'       a stored event notification { kind:'event', name, userId, revision, event }
 *   'progress'    progress of a running execution (not stored, not replayed)
 *   'ready'       the replay is done; live events follow ({ userId, revision })
 *   'state'       'connecting' | 'open' | 'live' | 'reconnecting' | 'stopped'
 *   'servererror' an error notification from the server ({ code, message })
 *   'close'       the socket closed ({ code, reason })
 *   'failed'      the client gave up: the token was refused, or access is forbidden ({ code, message })
 */

/** Close codes of the notifier (contracts/notification.ts). */
export const CLOSE_CODES = Object.freeze({
  unauthenticated: 4401,
  forbidden: 4403,
  badMessage: 4400,
  slowConsumer: 4408,
  rateLimited: 4429,
  goingAway: 1001,
  tooBig: 1009,
});

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class ToolbusClient extends EventTarget {
  #baseUrl;
  #getToken;
  #userId;
  #lastRevision;
  #backoff;
  #ws = null;
  #timer = null;
  #stopped = true;
  #attempt = 0;
  #state = 'idle';

  /**
   * @param {object} options
   * @param {string} [options.token] the user token (JWT)
   * @param {() => string | Promise<string>} [options.getToken] called before each connection instead
   * @param {string} [options.baseUrl] the notifier's HTTP origin (default: this page's)
   * @param {string} [options.userId] a user to watch (admins only; default: the token's user)
   * @param {number} [options.afterRevision] resume after this revision (default -1: from the start)
   * @param {{ initialMs?: number, maxMs?: number }} [options.backoff]
   */
  constructor(options = {}) {
    super();
    if (!options.token && !options.getToken) throw new TypeError('ToolbusClient needs token or getToken');
    this.#getToken = options.getToken ?? (() => options.token);
    this.#baseUrl = new URL(options.baseUrl ?? globalThis.location.origin);
    this.#userId = options.userId;
    this.#lastRevision = options.afterRevision ?? -1;
    this.#backoff = { initialMs: 500, maxMs: 15_000, ...options.backoff };
  }

  /** The revision of the last event delivered: the resume point. */
  get lastRevision() {
    return this.#lastRevision;
  }

  get state() {
    return this.#state;
  }

  start() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attempt = 0;
    void this.#connect();
  }

  stop() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = null;
    ws?.close(1000, 'client stopped');
    this.#setState('stopped');
  }

  async #connect() {
    this.#setState(this.#attempt === 0 ? 'connecting' : 'reconnecting');
    let token;
    let ticket;
    try {
      token = await this.#getToken();
      ticket = await this.#fetchTicket(token);
    } catch (e) {
      if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
        return this.#fail(e.status === 401 ? CLOSE_CODES.unauthenticated : CLOSE_CODES.forbidden, e.message);
      }
      return this.#retry();
    }
    if (this.#stopped) return;

    const url = new URL('/ws', this.#baseUrl);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (ticket) url.searchParams.set('ticket', ticket);
    const ws = new WebSocket(url);
    this.#ws = ws;
    ws.onopen = () => {
      if (!ticket) ws.send(JSON.stringify({ type: 'auth', token }));
      const subscribe = { type: 'subscribe', afterRevision: this.#lastRevision };
      if (this.#userId) subscribe.userId = this.#userId;
      if (this.#userId === '*') delete subscribe.afterRevision;
      ws.send(JSON.stringify(subscribe));
      this.#setState('open');
    };
    ws.onmessage = (message) => this.#onMessage(message.data);
    ws.onclose = (e) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#emit('close', { code: e.code, reason: e.reason });
      if (this.#stopped) return;
      if (e.code === CLOSE_CODES.forbidden || e.code === CLOSE_CODES.badMessage) {
        return this.#fail(e.code, e.reason || 'refused by the notifier');
      }
      // 4401 too: the next ticket request tells whether the token itself is still good.
      this.#retry();
    };
  }

  /** A ticket, or null when the notifier has none to give (503): then the token goes in the first message. */
  async #fetchTicket(token) {
    const res = await fetch(new URL('/tickets', this.#baseUrl), {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
      cache: 'no-store',
    });
    if (res.status === 201) return (await res.json()).ticket;
    if (res.status === 503) return null;
    let message = `ticket refused (HTTP ${res.status})`;
    try {
      const { error } = await res.json();
      if (error?.message) message = `${error.code}: ${error.message}`;
    } catch {
      // not JSON
    }
    throw new HttpError(res.status, message);
  }

  #onMessage(data) {
    let n;
    try {
      n = JSON.parse(data);
    } catch {
      return;
    }
    switch (n.kind) {
      case 'event':
        if (this.#userId !== '*') {
          if (n.revision <= this.#lastRevision) return; // already delivered
          this.#lastRevision = n.revision;
        }
        this.#emit('event', n);
        return;
      case 'ready':
        // The server is the authority on where the stream ends (see RESUME_AHEAD).
        if (this.#userId !== '*' && typeof n.revision === 'number' && n.revision < this.#lastRevision) {
          this.#lastRevision = n.revision;
        }
        this.#attempt = 0;
        this.#setState('live');
        this.#emit('ready', n);
        return;
      case 'progress':
        this.#emit('progress', n);
        return;
      case 'error':
        this.#emit('servererror', n);
        return;
      default:
    }
  }

  #retry() {
    if (this.#stopped) return;
    const { initialMs, maxMs } = this.#backoff;
    const ceiling = Math.min(maxMs, initialMs * 2 ** this.#attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.#attempt += 1;
    this.#setState('reconnecting');
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#connect(), delay);
  }

  #fail(code, message) {
    this.stop();
    this.#emit('failed', { code, message });
  }

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit('state', state);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
