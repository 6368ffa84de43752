// zs.js: the zserver WebSocket client (an ES module, no build step).
// Served by the zs-web gateway at /zs.js. Protocol: docs/PROTOCOL.md Part 8.
//
//   import { ZsClient, ZsError, df } from "/zs.js";
//   const zs = await ZsClient.connect(`ws://${location.host}/ws`);
//   await zs.call("echo", "hello");                       // -> "hello"
//   await zs.callStream("sum", [df.u32(1), df.u32(2)]);   // -> typed values
//   zs.send("log", "fire and forget");
//   const off = zs.on("push", (msg) => console.log(msg.text ?? msg.data));
//
// Calls made while the socket is down wait for the reconnect (up to their
// timeout); calls pending when it drops fail with type "connection_lost".

/** An error answer: `code` (number), `type` (stable name), `message`. */
export class ZsError extends Error {
  constructor(code, type, message) {
    super(`${type} (${code}): ${message}`);
    this.name = "ZsError";
    this.code = code;
    this.type = type;
    this.detail = message;
  }
}

/** Typed DataFrame value constructors (the typed JSON form of zs-wire). */
export const df = {
  str: (v) => ({ t: "str", v: String(v) }),
  bool: (v) => ({ t: "bool", v: !!v }),
  i32: (v) => ({ t: "i32", v }),
  u32: (v) => ({ t: "u32", v }),
  i64: (v) => ({ t: "i64", v }),
  u64: (v) => ({ t: "u64", v }),
  f64: (v) => ({ t: "f64", v }),
  bytes: (hex) => ({ t: "bytes", v: hex }),
  json: (v) => ({ t: "json", v }),
};

const MAX_ID = Number.MAX_SAFE_INTEGER;

export class ZsClient {
  /**
   * @param {string} url  ws:// or wss:// URL of the gateway's /ws
   * @param {object} [opts]
   *   timeout: call timeout in ms (default 30000)
   *   backoff: { initial: 100, max: 5000, factor: 2 } (ms; jitter +-20%)
   *   WebSocket: constructor to use (default globalThis.WebSocket)
   */
  constructor(url, opts = {}) {
    this.url = url;
    this.timeout = opts.timeout ?? 30000;
    this.backoff = Object.assign({ initial: 100, max: 5000, factor: 2 }, opts.backoff);
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.handlers = new Map(); // push name -> Set<fn>
    this.stateHandlers = new Set();
    this.attempt = 0;
    this.closed = false;
    this.reconnects = 0;
    this.ws = null;
    this._waiters = [];
    this._open();
  }

  /** Connects and resolves once the socket is open. */
  static connect(url, opts) {
    const c = new ZsClient(url, opts);
    return c.ready().then(() => c);
  }

  /** Whether the socket is open now. */
  get connected() {
    return !!this.ws && this.ws.readyState === 1;
  }

  /** Resolves when the socket is open (at once if it is). */
  ready(timeout = this.timeout) {
    if (this.connected) return Promise.resolve();
    if (this.closed) return Promise.reject(new ZsError(502, "connection_lost", "client closed"));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      w.timer = setTimeout(() => {
        this._waiters = this._waiters.filter((x) => x !== w);
        reject(new ZsError(408, "timeout", "not connected in time"));
      }, timeout);
      this._waiters.push(w);
    });
  }

  _open() {
    if (this.closed) return;
    const ws = new this.WS(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      const ws = this._waiters;
      this._waiters = [];
      for (const w of ws) {
        clearTimeout(w.timer);
        w.resolve();
      }
      this._state("open");
    };
    ws.onmessage = (ev) => this._message(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const err = new ZsError(502, "connection_lost", `socket closed (${ev.code} ${ev.reason || ""})`.trim());
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      this.pending.clear();
      this._state("close", ev);
      if (!this.closed) {
        const b = this.backoff;
        const base = Math.min(b.max, b.initial * Math.pow(b.factor, this.attempt++));
        const delay = base * (0.8 + 0.4 * Math.random());
        setTimeout(() => {
          this.reconnects++;
          this._open();
        }, delay);
      }
    };
    ws.onerror = () => {}; // onclose follows
  }

  _state(what, ev) {
    for (const f of this.stateHandlers) f(what, ev);
  }

  _message(data) {
    if (typeof data !== "string") return this._binary(data);
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return;
    }
    if (m.push !== undefined) {
      const hs = this.handlers.get(m.push.toLowerCase());
      if (hs) for (const f of hs) f(m);
      return;
    }
    if (m.signal !== undefined) {
      // A named signal ({signal, code}), e.g. "user.kicked".
      const hs = this.handlers.get(m.signal.toLowerCase());
      if (hs) for (const f of hs) f(m);
      return;
    }
    if (m.id === undefined) {
      // An error not tied to a request (e.g. a direct command that failed).
      const hs = this.handlers.get("error");
      if (hs && m.error) for (const f of hs) f(new ZsError(m.error.code, m.error.type, m.error.message));
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.error) p.reject(new ZsError(m.error.code, m.error.type, m.error.message));
    else p.resolve(m.text !== undefined ? m.text : m.data);
  }

  _binary(buf) {
    // op u8 | id u64 LE | name_len u8 | name | DataFrame bytes
    const b = new Uint8Array(buf);
    if (b.length < 10) return;
    const dv = new DataView(buf);
    const id = Number(dv.getBigUint64(1, true));
    const n = b[9];
    const name = new TextDecoder().decode(b.subarray(10, 10 + n));
    const body = b.subarray(10 + n);
    if (b[0] === 0x81) {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.resolve(body);
    } else if (b[0] === 0x82) {
      const hs = this.handlers.get(name.toLowerCase());
      if (hs) for (const f of hs) f({ push: name, binary: body });
    }
  }

  async _request(msg, opts) {
    const timeout = opts?.timeout ?? this.timeout;
    const deadline = Date.now() + timeout;
    await this.ready(timeout);
    const id = this.nextId;
    this.nextId = this.nextId >= MAX_ID ? 1 : this.nextId + 1;
    msg.id = id;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ZsError(408, "timeout", "call timed out"));
      }, Math.max(0, deadline - Date.now()));
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify(msg));
    });
  }

  /** Console call: text in, text out. Rejects with a ZsError. */
  call(cmd, text = "", opts) {
    return this._request({ call: cmd, text: String(text) }, opts);
  }

  /** Stream call: typed values in (see `df`), typed values out. */
  callStream(cmd, data = [], opts) {
    return this._request({ stream: cmd, data }, opts);
  }

  /** Direct command (no answer): text, or an array of typed values. */
  send(cmd, payload = "") {
    if (!this.connected) throw new ZsError(502, "connection_lost", "not connected");
    const m = Array.isArray(payload) ? { send: cmd, data: payload } : { send: cmd, text: String(payload) };
    this.ws.send(JSON.stringify(m));
  }

  /**
   * on(pushName, fn): server pushes named `pushName` ({push, text} or {push, data})
   * and signals named so ({signal, code}, e.g. "user.kicked");
   * on("error", fn): errors not tied to a call; on("state", fn): "open"/"close".
   * Returns a function that unsubscribes.
   */
  on(name, fn) {
    if (name === "state") {
      this.stateHandlers.add(fn);
      return () => this.stateHandlers.delete(fn);
    }
    const key = name.toLowerCase();
    if (!this.handlers.has(key)) this.handlers.set(key, new Set());
    this.handlers.get(key).add(fn);
    return () => this.handlers.get(key)?.delete(fn);
  }

  /** Closes for good (no reconnect). */
  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000, "bye");
  }
}
