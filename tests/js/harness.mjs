// Test harness for frontend/incoming.js under Node's own test runner
// (node:test, Node 18 or newer, no npm packages).
//
// load() runs incoming.js in a fresh vm context per test, as a browser would
// with a <script> tag, with fakes for what the library uses of the browser:
//
//   WebSocket  FakeWebSocket: records the frames the library sends (JSON text
//              messages parsed, binary chunks copied) and lets the test play
//              the server (open, deliver a message, close with a code).
//   File       makeFile(): a Blob-like object with name, size, lastModified,
//              slice() and arrayBuffer() (or FileReader, the library's
//              fallback), whose bytes are a known pattern, so chunks can be
//              checked.
//   crypto     Node's WebCrypto (crypto.subtle.digest), or what the test
//              gives (none: a plain-http page), with the digests recorded.
//   timers     FakeClock: setTimeout/clearTimeout, performance.now and
//              Date.now move only when the test says so.
//   random     Math.random returns what the test sets (for the jitter).

import { webcrypto } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import vm from "node:vm";

// INCOMING_JS=path runs the tests against another copy (e.g. a deliberately
// broken one, to see that the tests catch it).
const LIBRARY = process.env.INCOMING_JS
    || fileURLToPath(new URL("../../frontend/incoming.js", import.meta.url));
export const LIBRARY_PATH = LIBRARY;
const SCRIPT = new vm.Script(readFileSync(LIBRARY, "utf8"), { filename: LIBRARY });

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Let pending promise callbacks (file reads) run. */
export function flush() {
    return new Promise((resolve) => setImmediate(resolve));
}

// ---- time --------------------------------------------------------------------

export class FakeClock {
    constructor() {
        this.now = 1000;  // ms; performance.now() and Date.now() (+ an epoch)
        this._timers = new Map();
        this._nextId = 1;
        this.setTimeout = (fn, ms) => {
            const id = this._nextId++;
            this._timers.set(id, { due: this.now + Math.max(0, Number(ms) || 0), fn });
            return id;
        };
        this.clearTimeout = (id) => { this._timers.delete(id); };
    }

    /** Delays (ms from now) of the timers that are set. */
    pending() {
        return [...this._timers.values()].map((t) => t.due - this.now).sort((a, b) => a - b);
    }

    /** Move time on by ms, running the timers that fall due on the way. */
    advance(ms) {
        const target = this.now + ms;
        for (;;) {
            const next = this._earliest();
            if (!next || next[1].due > target) {
                break;
            }
            this._timers.delete(next[0]);
            this.now = next[1].due;
            next[1].fn();
        }
        this.now = target;
    }

    /** Jump to the earliest timer and run it; returns how far time moved (ms). */
    runNext() {
        const next = this._earliest();
        if (!next) {
            throw new Error("no timer is set");
        }
        const delay = next[1].due - this.now;
        this.advance(delay);
        return delay;
    }

    _earliest() {
        let best = null;
        for (const entry of this._timers) {
            if (!best || entry[1].due < best[1].due) {
                best = entry;
            }
        }
        return best;
    }
}

// ---- the file ------------------------------------------------------------------

/** The byte at offset i of every fake file. */
export function byteAt(i) {
    return (i * 7 + (i >>> 8) * 13) & 0xff;
}

export function expectedBytes(start, end) {
    const out = Buffer.alloc(end - start);
    for (let i = start; i < end; i++) {
        out[i - start] = byteAt(i);
    }
    return out;
}

/**
 * A File-like object of `size` bytes. Options:
 *   api: "arrayBuffer" (Blob.arrayBuffer, the default) or "FileReader"
 *        (slices without arrayBuffer, read by the FakeFileReader)
 *   failAt: reading a slice that contains this offset fails
 *   lastModified: ms since the epoch (null: no such property, as a Blob)
 *   byte: i => the byte at offset i, for a file of other bytes than byteAt's
 * `file.reads` records [start, end) of every read.
 */
export const LAST_MODIFIED = 1714000000123;

export function makeFile(size, { name = "test.bin", api = "arrayBuffer", failAt = null,
                                 lastModified = LAST_MODIFIED, byte = null } = {}) {
    const reads = [];
    function blob(start, end) {
        const b = {
            size: end - start,
            _range: [start, end],
            _read() {
                reads.push([start, end]);
                if (failAt !== null && start <= failAt && failAt < end) {
                    throw new Error("NotReadableError: the file changed");
                }
                const bytes = byte === null ? expectedBytes(start, end)
                    : Buffer.from(Array.from({ length: end - start }, (_, k) => byte(start + k)));
                return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
            },
            slice(from = 0, to = end - start) {
                const s = Math.min(end, start + Math.max(0, from));
                const e = Math.min(end, start + Math.max(0, to));
                return blob(s, Math.max(s, e));
            },
        };
        if (api === "arrayBuffer") {
            b.arrayBuffer = () => {
                try {
                    return Promise.resolve(b._read());
                } catch (e) {
                    return Promise.reject(e);
                }
            };
        }
        return b;
    }
    const file = blob(0, size);
    file.name = name;
    if (lastModified !== null) {
        file.lastModified = lastModified;
    }
    file.reads = reads;
    return file;
}

class FakeFileReader {
    constructor() {
        this.result = null;
        this.error = null;
        this.onload = null;
        this.onerror = null;
    }

    readAsArrayBuffer(blob) {
        Promise.resolve().then(() => {
            try {
                this.result = blob._read();
            } catch (e) {
                this.error = e;
                if (this.onerror) this.onerror({ target: this });
                return;
            }
            if (this.onload) this.onload({ target: this });
        });
    }
}

// ---- localStorage -----------------------------------------------------------------

/** The page's localStorage; `quota` characters at most (keys and values),
 * beyond which setItem throws as a full browser storage does. */
export class FakeStorage {
    constructor(quota = 5 * 1024 * 1024) {
        this.quota = quota;
        this.items = new Map();
        this.writes = 0;
    }

    getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }

    setItem(key, value) {
        const text = String(value);
        let used = key.length + text.length;
        for (const [k, v] of this.items) {
            if (k !== key) used += k.length + v.length;
        }
        if (used > this.quota) {
            const error = new Error("QuotaExceededError: the quota has been exceeded");
            error.name = "QuotaExceededError";
            throw error;
        }
        this.items.set(key, text);
        this.writes += 1;
    }

    removeItem(key) { this.items.delete(key); }
}

// ---- the WebSocket ---------------------------------------------------------------

export class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor(url, registry, clock = null) {
        this.url = url;
        this._clock = clock;
        this.readyState = 0;
        this.binaryType = "blob";
        this.onopen = null;
        this.onmessage = null;
        this.onclose = null;
        this.onerror = null;
        this.frames = [];          // {text: parsed JSON} or {binary: Buffer, at: ms}, in order
        this.clientClose = null;   // {code, reason} once the library closed it
        this.ackedChunks = 0;      // chunks this fake server has acked
        registry.push(this);
    }

    // What the library calls.

    send(data) {
        if (this.readyState !== 1) {
            throw new Error(`send() on a WebSocket in state ${this.readyState}`);
        }
        if (typeof data === "string") {
            this.frames.push({ text: JSON.parse(data) });
        } else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)
                   || Object.prototype.toString.call(data) === "[object ArrayBuffer]") {
            const bytes = ArrayBuffer.isView(data)
                ? Buffer.from(data.buffer, data.byteOffset, data.byteLength)
                : Buffer.from(data);
            this.frames.push({ binary: Buffer.from(bytes), at: this._clock ? this._clock.now : 0 });
        } else {
            throw new Error(`unexpected frame ${Object.prototype.toString.call(data)}`);
        }
    }

    close(code, reason) {
        if (this.readyState >= 2) {
            return;
        }
        this.clientClose = { code, reason };
        this.readyState = 2;
        // A browser reports the close later, asynchronously.
        Promise.resolve().then(() => this._closed(code === undefined ? 1005 : code, reason || "", true));
    }

    // What the test (the server) does.

    open() {
        if (this.readyState !== 0) throw new Error("not connecting");
        this.readyState = 1;
        if (this.onopen) this.onopen({ type: "open" });
    }

    /** Deliver a server message {MsgType: type, MsgData: data}. */
    deliver(type, data = {}) {
        this.deliverRaw(JSON.stringify({ MsgType: type, MsgData: data }));
    }

    deliverRaw(text) {
        if (this.readyState !== 1) throw new Error("not open");
        if (this.onmessage) this.onmessage({ type: "message", data: text });
    }

    /** MsgUploadConf with the 0.1 defaults unless given. */
    conf({ FilePos = 0, ChunkSizeKB = 1, SendAhead = 4, WindowBytes, Sample, IdleTimeoutS } = {}) {
        const data = { ChunkSizeKB, FilePos, SendAhead };
        if (WindowBytes !== undefined) data.WindowBytes = WindowBytes;
        if (Sample !== undefined) data.Sample = Sample;
        if (IdleTimeoutS !== undefined) data.IdleTimeoutS = IdleTimeoutS;
        this.deliver("MsgUploadConf", data);
    }

    /** Ack the next `n` chunks not yet acked (in order, with their sizes). */
    ack(n = 1) {
        const chunks = this.chunks();
        for (let i = 0; i < n; i++) {
            const chunk = chunks[this.ackedChunks];
            if (!chunk) throw new Error("no chunk left to ack");
            this.ackedChunks += 1;
            this.deliver("MsgChunkAck", { ChunkSize: chunk.length });
        }
    }

    /** One MsgChunkAck for the next `n` chunks ("batched-acks"): its
     * ChunkSize is their sizes added up. */
    ackBatch(n) {
        const chunks = this.chunks().slice(this.ackedChunks, this.ackedChunks + n);
        if (chunks.length < n) throw new Error("not that many chunks to ack");
        this.ackedChunks += n;
        this.deliver("MsgChunkAck", { ChunkSize: chunks.reduce((sum, c) => sum + c.length, 0) });
    }

    /** Ack every chunk sent so far. */
    ackAll() {
        this.ack(this.chunks().length - this.ackedChunks);
    }

    /** The connection ends from the server's side (or is lost: 1006). */
    drop(code = 1006, reason = "") {
        if (this.readyState === 3) return;
        this._closed(code, reason, code !== 1006);
    }

    _closed(code, reason, wasClean) {
        if (this.readyState === 3) return;
        this.readyState = 3;
        if (this.onclose) this.onclose({ type: "close", code, reason, wasClean });
    }

    // Looking at what was sent.

    messages(type) {
        const all = this.frames.filter((f) => f.text).map((f) => f.text);
        return type ? all.filter((m) => m.MsgType === type) : all;
    }

    chunks() {
        return this.frames.filter((f) => f.binary).map((f) => f.binary);
    }

    /** Clock times (ms) at which the chunks were sent. */
    chunkTimes() {
        return this.frames.filter((f) => f.binary).map((f) => f.at);
    }

    bytesSent() {
        return this.chunks().reduce((n, c) => n + c.length, 0);
    }

    unacked() {
        return this.chunks().length - this.ackedChunks;
    }

    /** Bytes sent on this socket and not acked by the test yet. */
    bytesInFlight() {
        return this.chunks().slice(this.ackedChunks).reduce((n, c) => n + c.length, 0);
    }
}

// ---- the library in a fresh "page" -------------------------------------------------

/**
 * A fresh page with incoming.js loaded. Returns
 *   incoming  the library's global
 *   sockets   every FakeWebSocket the library created, in order
 *   clock     the FakeClock
 *   random    {values: [...] (used first, in order), fallback: 0.5, calls}
 *   errors    what the library logged with console.error
 *   digests   the promises crypto.subtle.digest returned, in order
 *   ws()      the newest socket
 *   fire(t)   the browser fires event t (e.g. "online") at the page; listeners(t)
 *   settle()  lets the file reads and digests under way finish
 * `crypto` is the page's crypto: Node's WebCrypto unless given; {} is what a
 * plain-http page has (no crypto.subtle), null none at all. `localStorage`:
 * a FakeStorage by default, null none, "throws" one whose access throws.
 */
export function load({ location = { protocol: "http:", host: "page.example:8080" },
                       FileReader = FakeFileReader, WebSocketClass = null, crypto = webcrypto,
                       localStorage = new FakeStorage() } = {}) {
    const digests = [];
    const pageCrypto = crypto && {
        subtle: crypto.subtle && {
            digest(algorithm, data) {
                const digest = crypto.subtle.digest(algorithm, data);
                digests.push(digest);
                return digest;
            },
        },
    };
    const sockets = [];
    const clock = new FakeClock();
    const random = { values: [], fallback: 0.5, calls: 0 };
    const errors = [];
    const Socket = WebSocketClass || class extends FakeWebSocket {
        constructor(url) { super(url, sockets, clock); }
    };
    const listeners = [];  // [type, handler] added with the page's addEventListener
    const sandbox = {
        addEventListener(type, handler) { listeners.push([type, handler]); },
        removeEventListener(type, handler) {
            const at = listeners.findIndex(([t, h]) => t === type && h === handler);
            if (at >= 0) listeners.splice(at, 1);
        },
        WebSocket: Socket,
        FileReader,
        location,
        setTimeout: clock.setTimeout,
        clearTimeout: clock.clearTimeout,
        performance: { now: () => clock.now },
        crypto: pageCrypto || undefined,
        localStorage: localStorage === "throws" ? undefined : localStorage || undefined,
        console: { error: (...args) => errors.push(args), log() {}, warn() {} },
    };
    if (localStorage === "throws") {  // storage switched off: reading the property throws
        Object.defineProperty(sandbox, "localStorage", {
            get() { throw new Error("SecurityError: access is denied for this document"); },
        });
    }
    const context = vm.createContext(sandbox);
    vm.runInContext("var self = this;", context);
    // Date.now and Math.random of the page, under the test's control.
    vm.runInContext("(function (now, rnd) { Date.now = now; Math.random = rnd; })", context)(
        () => 1.7e12 + clock.now,
        () => {
            random.calls += 1;
            return random.values.length ? random.values.shift() : random.fallback;
        },
    );
    SCRIPT.runInContext(context);
    return {
        incoming: context.incoming,
        sockets,
        clock,
        random,
        errors,
        digests,
        context,
        localStorage,
        ws() { return sockets[sockets.length - 1]; },
        /** The page's listeners of an event type (e.g. "online"). */
        listeners(type) { return listeners.filter(([t]) => t === type).map(([, h]) => h); },
        /** The browser fires an event at the page (window). */
        fire(type) { for (const handler of this.listeners(type)) handler({ type }); },
        async settle() {
            await flush();
            let seen = 0;
            while (seen < digests.length) {
                const pending = digests.slice(seen);
                seen = digests.length;
                await Promise.allSettled(pending);
                await flush();
            }
        },
    };
}

/** Records the callbacks an uploader makes, with the flags at that moment. */
export function watch(uploader) {
    const events = [];
    const snapshot = (name) => ({
        name,
        state_msg: uploader.state_msg,
        connected: uploader.connected,
        finished: uploader.finished,
        paused: uploader.paused,
        can_pause: uploader.can_pause,
        cancelling: uploader.cancelling,
        cancelled: uploader.cancelled,
        can_cancel: uploader.can_cancel,
        bytes_tx: uploader.bytes_tx,
        bytes_acked: uploader.bytes_acked,
        frac_complete: uploader.frac_complete,
        error_code: uploader.error_code,
    });
    for (const name of ["onprogress", "onfinished", "oncancelled", "onerror"]) {
        uploader[name] = (u) => {
            if (u !== uploader) throw new Error(`${name} called with something else`);
            events.push(snapshot(name));
        };
    }
    events.endings = () => events.filter((e) => e.name !== "onprogress").map((e) => e.name);
    events.count = (name) => events.filter((e) => e.name === name).length;
    return events;
}

/**
 * A started uploader of a file of `size` bytes whose first connection is open
 * and has just got MsgUploadConf `conf` (chunks of 1 KiB, 4 ahead unless
 * given); what it does about it (file reads, the digest of a Sample) has not
 * run yet. Returns {page, up, ws, file, events}.
 */
export function confirming(size, conf = {}, { fileOptions = {}, loadOptions = {} } = {}) {
    const page = load(loadOptions);
    const file = makeFile(size, fileOptions);
    const up = new page.incoming.Uploader("ticket-1", file);
    const events = watch(up);
    up.start();
    const ws = page.ws();
    ws.open();
    ws.conf(conf);
    return { page, up, ws, file, events };
}

/** The same, after the first read (and the digest of a Sample). */
export async function started(size, conf = {}, options = {}) {
    const result = confirming(size, conf, options);
    await result.page.settle();
    return result;
}

/**
 * Play a server that acks every chunk as it arrives, until the library
 * sends nothing more. Returns the bytes the server got on this socket.
 */
export async function ackUntilIdle(ws) {
    for (let i = 0; i < 100000; i++) {
        await flush();
        if (ws.unacked() === 0 || ws.readyState !== 1) {
            break;
        }
        ws.ack(1);
    }
    return Buffer.concat(ws.chunks());
}
