/*
 * incoming.js - the browser half of Incoming!!
 *
 * Load it with <script src="https://INCOMING_HOST/incoming/0.1/frontend/incoming.js">
 * and upload a File with a ticket from your backend:
 *
 *     var up = new incoming.Uploader(ticket, file);
 *     up.onprogress = function (u) { bar.value = u.frac_complete; };
 *     up.onfinished = function (u) { ... };
 *     up.start();
 *
 * Plain JavaScript, no dependencies, no build step. Speaks the 0.1 wire
 * protocol (see incoming/wire.py on the server), so it works against a 0.1
 * server too. Unlike 0.1 it reconnects by itself after a lost connection
 * (first retry within 0.25-0.5 s, then exponential backoff with jitter up to 30 s,
 * fast again after progress) and reports numeric error codes. With a server
 * that answers the "byte-window" feature it sizes the bytes in flight to the
 * link (from the round-trip times of its acks) instead of a fixed number of
 * chunks, so long links fill up; with the "takeover" feature a reconnect
 * replaces its own dead connection within about a second; with the
 * "fingerprint" feature it proves, by the SHA-256 of a sample of the bytes
 * the server holds, that it resumes with the same file; with "batched-acks"
 * the server may acknowledge several chunks with one message.
 */
(function (root, factory) {
    "use strict";
    var lib = factory(root);
    root.incoming = lib;
    if (typeof module === "object" && module && module.exports) {
        module.exports = lib;
    }
}(typeof self !== "undefined" ? self : typeof globalThis !== "undefined" ? globalThis : this, function (root) {
    "use strict";

    var WS_PATH = "/incoming/0.1/frontend/upload_ws";

    /* Values of Uploader.error_code. 1-10 are sent by the server in
     * MsgError.ErrorCode; a 0.1 server sends 0 (GENERIC). */
    var ERROR = {
        NONE: -1,            // no error
        GENERIC: 0,          // an error without a code (e.g. from a 0.1 server)
        PROTOCOL: 1,         // the server did not understand us, or we it
        UNKNOWN_UPLOAD: 2,   // no such upload ticket (never issued, or long gone)
        UPLOAD_BUSY: 3,      // another connection uploads this file (retried)
        FILE_CHANGED: 4,     // the file is not the one this upload started with: size, name, date or bytes differ
        FILE_TOO_LARGE: 5,   // the file is larger than the server accepts
        CANCELLED: 6,        // the upload was cancelled (backend, timeout, ...)
        HANDOVER_FAILED: 7,  // the server could not hand the file to the backend
        SERVER_ERROR: 8,     // the server could not store the file
        TOO_LATE: 9,         // cancel refused: the file is being handed over
        NO_SPACE: 10,        // the server has no room for the file now (retried)
        FILE_READ_ERROR: 11, // the browser could not read the file (ours, not the server's)
        STORE_UNAVAILABLE: 12 // the server's shared store does not answer now (retried)
    };

    // Errors that are retried: the server closes after them and the
    // reconnect (with backoff) tries again; every other code ends the upload.
    var TRANSIENT = {};
    TRANSIENT[ERROR.UPLOAD_BUSY] = true;  // usually our own dead connection
    TRANSIENT[ERROR.TOO_LATE] = true;     // the handover goes on; wait for it
    TRANSIENT[ERROR.NO_SPACE] = true;     // the server's disk is full; it keeps what it has
    TRANSIENT[ERROR.STORE_UNAVAILABLE] = true;  // its Redis is away; it keeps what it has

    // Announced in MsgUploadReq; 0.1 servers ignore them (see incoming/wire.py).
    var FEATURES = ["byte-window", "takeover", "fingerprint", "idle-timeout", "batched-acks"];
    var READ_BLOCK = 8 * 1024 * 1024;  // bytes per read of the file (whole chunks)
    var GROW_QUEUE_MS = 30;  // byte window: grows while round trips are within this of the quickest
    var SHRINK_QUEUE_MS = 60;  // and shrinks when they are more than this longer (_sizeWindow)
    var MAX_SAMPLE = 64 * 1024;  // most bytes a MsgUploadConf Sample may ask for
    var FIRST_RETRY_S = 0.5;  // first retry after 0.25-0.5 s (jittered)
    var MAX_RETRY_S = 30;

    var serverHostname = null;

    function set_server_hostname(hostname) {
        serverHostname = hostname;
    }

    function socketUrl() {
        var loc = root.location || {};
        var host = serverHostname || loc.host;
        var scheme = loc.protocol === "https:" ? "wss://" : "ws://";
        return scheme + host + WS_PATH;
    }

    function Uploader(upload_id, file) {
        if (!(this instanceof Uploader)) {
            return new Uploader(upload_id, file);
        }
        this.upload_id = upload_id;
        this._file = file;

        // Properties (read-only for users), as documented in api.md.
        this.filename = file.name;
        this.bytes_total = file.size;
        this.bytes_tx = 0;
        this.bytes_acked = 0;
        this.bytes_ahead = 0;
        this.frac_complete = file.size === 0 ? 1 : 0;
        this.chunks_tx_now = 0;
        this.chunks_acked_now = 0;
        this.chunks_ahead = 0;
        this.state_msg = "not started";
        this.cancel_msg = "";
        this.error_code = ERROR.NONE;
        this.error_msg = "";

        // Flags.
        this.connected = false;
        this.finished = false;
        this.paused = false;
        this.can_pause = false;
        this.cancelling = false;
        this.cancelled = false;
        this.can_cancel = false;

        // Callbacks.
        this.onprogress = null;
        this.onfinished = null;
        this.oncancelled = null;
        this.onerror = null;

        // Internal state.
        this._started = false;
        this._ended = false;        // finished, cancelled or failed for good
        this._ws = null;
        this._chunkSize = 0;
        this._sendAhead = 0;
        this._windowMax = 0;        // WindowBytes from the server; 0: count chunks (0.1)
        this._window = 0;           // bytes allowed in flight now (byte-window mode)
        this._sent = [];            // [end offset, send time] of chunks in flight
        this._minRtt = Infinity;    // ms
        this._reading = false;
        this._blocks = [];          // {start, buffer} read from the file, in order
        this._retries = 0;          // consecutive failed connections
        this._retryTimer = null;
        this._cancelReason = null;  // a cancel waiting for a connection
        this._onOnline = null;      // the page's "online" listener while started
        this._remembered = false;   // incoming.remember() keeps a note of it
        this._idleTimeoutS = DEFAULT_IDLE_TIMEOUT_S;  // the server's, once it says
    }

    Uploader.prototype.start = function () {
        if (this._started) {
            return;
        }
        this._started = true;
        this._listenOnline();
        this._connect();
    };

    // The browser says the network is back: a reconnect that waits for its
    // backoff goes at once.
    Uploader.prototype._listenOnline = function () {
        var self = this;
        if (typeof root.addEventListener !== "function") {
            return;
        }
        this._onOnline = function () {
            if (self._retryTimer !== null && !self._ended && !self.paused) {
                self._stopRetrying();
                self._retries = 0;
                self._connect();
            }
        };
        root.addEventListener("online", this._onOnline);
    };

    Uploader.prototype.pause = function (what) {
        var pause = what === "pause" || (what === "toggle" && !this.paused);
        var unpause = what === "unpause" || (what === "toggle" && this.paused);
        if (pause && this.can_pause) {
            this.paused = true;
            this._stopRetrying();
            var ws = this._ws;
            this._ws = null;
            if (ws && ws.readyState === 1) {
                this._send(ws, "MsgPause", {Pause: true});
                ws.close(1000, "paused");
            } else if (ws) {
                ws.close();
            }
            this._disconnected("paused");
        } else if (unpause && this.paused && !this._ended) {
            this.paused = false;
            this._retries = 0;
            this._connect();
        }
    };

    Uploader.prototype.cancel = function (reason) {
        if (!this.can_cancel) {
            return;
        }
        this._cancelReason = String(reason === undefined ? "" : reason);
        this.cancelling = true;
        this._update("cancelling");
        if (this.connected && this._ws && this._ws.readyState === 1) {
            this._send(this._ws, "MsgCancel", {Reason: this._cancelReason});
        } else if (this._retryTimer !== null) {
            this._stopRetrying();  // waiting to reconnect: go now, to deliver it
            this._connect();
        }
        // Otherwise it is sent as soon as the (re)connection is confirmed.
    };

    // ---- connection ------------------------------------------------------

    Uploader.prototype._connect = function () {
        var self = this;
        var ws;
        this._retryTimer = null;
        try {
            ws = new root.WebSocket(socketUrl());
        } catch (e) {
            this._fail(ERROR.GENERIC, "cannot open a WebSocket: " + e.message);
            return;
        }
        ws.binaryType = "arraybuffer";
        this._ws = ws;
        this._update("connecting");
        ws.onopen = function () {
            if (ws !== self._ws) {
                return;
            }
            var request = {
                Id: self.upload_id,
                LengthBytes: self.bytes_total,
                Name: self.filename,
                Features: FEATURES
            };
            // With the name and size, what a "fingerprint" server checks
            // before it lets this file resume its bytes (whole milliseconds).
            var modified = self._file.lastModified;
            if (typeof modified === "number" && isFinite(modified)) {
                request.LastModified = Math.floor(modified);
            }
            self._send(ws, "MsgUploadReq", request);
        };
        ws.onmessage = function (event) {
            if (ws === self._ws) {
                self._onMessage(ws, event.data);
            }
        };
        ws.onclose = function () {
            if (ws === self._ws) {
                self._ws = null;
                self._connectionLost();
            }
        };
    };

    Uploader.prototype._send = function (ws, type, data) {
        ws.send(JSON.stringify({MsgType: type, MsgData: data}));
    };

    Uploader.prototype._connectionLost = function () {
        if (this._ended || this.paused) {
            return;
        }
        // Exponential backoff with jitter: 0.25-0.5 s, 0.5-1 s, ... up to 30 s.
        var ceiling = Math.min(MAX_RETRY_S, FIRST_RETRY_S * Math.pow(2, this._retries));
        var delay = ceiling * (0.5 + Math.random() / 2);
        this._retries += 1;
        var self = this;
        this._retryTimer = setTimeout(function () { self._connect(); }, delay * 1000);
        this._disconnected("connection lost; retrying in " + delay.toFixed(1) + " s");
    };

    Uploader.prototype._disconnected = function (message) {
        this._touchNote();  // the server's idle timeout counts from the last progress
        this.connected = false;
        this.bytes_tx = this.bytes_acked;  // what is in flight may be lost
        this._update(message);
    };

    Uploader.prototype._stopRetrying = function () {
        if (this._retryTimer !== null) {
            clearTimeout(this._retryTimer);
            this._retryTimer = null;
        }
    };

    Uploader.prototype._close = function () {
        this._stopRetrying();
        var ws = this._ws;
        this._ws = null;
        if (ws) {
            ws.close();
        }
        this.connected = false;
    };

    // ---- messages from the server ----------------------------------------

    Uploader.prototype._onMessage = function (ws, data) {
        if (typeof data !== "string") {
            return;  // the server never sends binary frames
        }
        var msg;
        try {
            msg = JSON.parse(data);
        } catch (e) {
            this._protocolError(ws, "malformed message from the server");
            return;
        }
        var body = msg.MsgData || {};
        switch (msg.MsgType) {
        case "MsgUploadConf":
            this._onUploadConf(ws, body);
            break;
        case "MsgChunkAck":
            this._onChunkAck(ws, body);
            break;
        case "MsgAllDone":
            this._forgetNote();
            this._close();
            this._end();
            this.finished = true;
            this._update("finished");
            this._call("onfinished");
            break;
        case "MsgCancelAck":
            this._becomeCancelled(this._cancelReason || "cancelled");
            break;
        case "MsgCancel":
            this._becomeCancelled(String(body.Reason || "cancelled by the server"));
            break;
        case "MsgError":
            this._onServerError(Number(body.ErrorCode) || ERROR.GENERIC, String(body.Msg || ""));
            break;
        default:
            break;  // newer servers may send more; ignore what we do not know
        }
    };

    Uploader.prototype._onUploadConf = function (ws, body) {
        var self = this;
        var pos = Number(body.FilePos);
        var sample = body.Sample;
        if (!(pos >= 0 && pos <= this.bytes_total) || !(body.ChunkSizeKB > 0) || !(body.SendAhead > 0)) {
            this._protocolError(ws, "invalid MsgUploadConf");
            return;
        }
        if (sample === undefined || sample === null) {
            this._accepted(ws, body, pos, {Ack: true});
            return;
        }
        if (!validSample(sample, pos)) {
            this._protocolError(ws, "invalid Sample in MsgUploadConf");
            return;
        }
        // The server holds bytes of this upload ("fingerprint" feature) and
        // asks for the SHA-256 of some of them, to tell whether this is still
        // the same file. Nothing goes on this connection before the answer,
        // and nothing at all if the connection is lost, paused, ended or
        // replaced by the time it is ready.
        readSlice(this._file.slice(sample.Offset, sample.Offset + sample.Length), function (error, buffer) {
            if (ws !== self._ws) {
                return;
            }
            if (error) {
                self._readError(ws, error);
                return;
            }
            self._digestHex(buffer, function (digest) {
                if (ws === self._ws) {
                    self._accepted(ws, body, pos, {Ack: true, Sample: digest});
                }
            });
        });
    };

    // The server accepted the upload on `ws`: answer MsgAck (`ack`), then send
    // a cancel that is waiting, or the file from `pos` on.
    Uploader.prototype._accepted = function (ws, body, pos, ack) {
        this._chunkSize = body.ChunkSizeKB * 1024;
        this._sendAhead = body.SendAhead;
        this._windowMax = body.WindowBytes > 0 ? Math.max(body.WindowBytes, this._chunkSize) : 0;
        this._window = Math.min(this._windowMax, this._sendAhead * this._chunkSize);
        if (body.IdleTimeoutS > 0) {
            this._idleTimeoutS = body.IdleTimeoutS;
        }
        this._touchNote();
        this._sent = [];
        this._minRtt = Infinity;  // maybe another path now: measure afresh
        this._blocks = [];  // the server may resume anywhere: read afresh
        this.connected = true;
        this.bytes_acked = pos;
        this.bytes_tx = pos;
        this.chunks_tx_now = 0;
        this.chunks_acked_now = 0;
        this._send(ws, "MsgAck", ack);
        if (this._cancelReason !== null && pos < this.bytes_total) {
            this._send(ws, "MsgCancel", {Reason: this._cancelReason});
            this._update("cancelling");
            return;
        }
        this._update(pos >= this.bytes_total ? "handing over" :
                     pos > 0 ? "uploading (resumed at byte " + pos + ")" : "uploading");
        this._pump(ws);
    };

    Uploader.prototype._onChunkAck = function (ws, body) {
        var size = Number(body.ChunkSize) || 0;
        var acked = Math.min(this.bytes_total, this.bytes_acked + size);
        // With "batched-acks" one ack may cover several chunks, the oldest.
        this.chunks_acked_now += this._sizeWindow(size, acked);
        this.bytes_acked = acked;
        this._retries = 0;  // progress: the next retry is fast again
        this._update(this.bytes_acked >= this.bytes_total ? "handing over" : "uploading");
        this._pump(ws);
    };

    Uploader.prototype._onServerError = function (code, text) {
        if (TRANSIENT[code]) {
            // The connection is closed by the server; onclose retries.
            if (code === ERROR.TOO_LATE) {  // the cancel was refused: no longer waiting
                this._cancelReason = null;
                this.cancelling = false;
            }
            this._update(text);
            return;
        }
        if (code === ERROR.CANCELLED) {
            this.error_code = code;
            this.error_msg = text;
            this._becomeCancelled(text);
            return;
        }
        this._fail(code, text);
    };

    // A MsgUploadConf Sample: {Offset, Length}, integers, of bytes the server
    // holds (below FilePos).
    function validSample(sample, pos) {
        return typeof sample === "object" && isInteger(sample.Offset) && isInteger(sample.Length) &&
            sample.Offset >= 0 && sample.Length > 0 && sample.Length <= MAX_SAMPLE &&
            sample.Offset + sample.Length <= pos;
    }

    function isInteger(value) {
        return typeof value === "number" && isFinite(value) && Math.floor(value) === value;
    }

    Uploader.prototype._protocolError = function (ws, text) {
        this._send(ws, "MsgError", {ErrorCode: ERROR.PROTOCOL, Msg: text});
        this._fail(ERROR.PROTOCOL, text);
    };

    // Byte-window mode: grow the window by each ack (doubling per round
    // trip) while round trips stay within GROW_QUEUE_MS of the quickest seen,
    // i.e. while the link is not yet full; shrink it when they exceed it by
    // more than SHRINK_QUEUE_MS (a queue is building). Both are added delays, not
    // multiples of the quickest: a browser's own pauses between an ack and
    // its next sends (the page's JavaScript, garbage collection, the network
    // thread) are tens of milliseconds on any link, so a window must cover
    // them. Measured in headless Chromium (256 MiB, medians of 10 rounds,
    // three runs each way): on loopback, where the quickest is 4-6 ms, the
    // earlier thresholds (1.5x + 5 ms to grow, 2x + 20 ms to shrink) held the
    // window near 4 MiB and incoming.js at 0.85-0.90 of a bare WebSocket
    // sink; these give 0.93-0.98 (and 0.81-1.10, median 0.92, over 20 later
    // runs of the same code). Doubling both (60 and 120 ms) held twice the
    // bytes in flight (15-21 MiB against 8-10) and was no faster (0.94 and
    // 1.05 against 1.01 and 0.98): the window is not what limits there.
    // Through a 50 ms, 20 MB/s link both run at
    // 19 MB/s, with median round trips of 128-131 ms (these) against
    // 144-155 ms (the earlier ones).
    // The socket's bufferedAmount is left out on purpose: growing while it
    // runs dry was measured (Chromium, one run each way, same page) no
    // faster on loopback (28.2 against 27.8 MB/s) and it bloated a 50 ms,
    // 20 MB/s link (round trips 175 -> 497 ms, 17.0 -> 15.4 MB/s): there the
    // operating system takes the bytes, so the buffer is nearly always dry.
    // Returns how many chunks the ack covers; the round trip is the newest
    // one's (a batched ack goes out as that chunk is stored).
    Uploader.prototype._sizeWindow = function (ackedBytes, ackedTo) {
        var sent = this._sent.shift();
        var covered = 1;
        while (this._sent.length && this._sent[0][0] <= ackedTo) {
            sent = this._sent.shift();
            covered += 1;
        }
        if (!this._windowMax || !sent) {
            return covered;
        }
        var rtt = now() - sent[1];
        this._minRtt = Math.min(this._minRtt, rtt);
        var inFlight = this.bytes_tx - this.bytes_acked;
        if (rtt <= this._minRtt + GROW_QUEUE_MS) {
            if (inFlight + ackedBytes >= this._window - this._chunkSize) {
                this._window = Math.min(this._windowMax, this._window + ackedBytes);
            }
        } else if (rtt > this._minRtt + SHRINK_QUEUE_MS) {
            this._window = Math.max(this._sendAhead * this._chunkSize,
                                    Math.floor(this._window * 0.9));
        }
        return covered;
    };

    function now() {
        return root.performance && root.performance.now ? root.performance.now() : Date.now();
    }

    // ---- sending the file --------------------------------------------------

    // Send chunks while the window allows. The file is read in large blocks
    // (each read of a File costs a round trip inside the browser, so chunk-
    // sized reads would cap the speed), at most two blocks in memory, the next
    // one read while the current one is being sent; chunks are views into a
    // block, never copies.
    Uploader.prototype._pump = function (ws) {
        while (ws === this._ws && this._cancelReason === null && !this._ended) {
            var start = this.bytes_tx;
            var end = Math.min(this.bytes_total, start + this._chunkSize);
            var full = this._windowMax ?
                start - this.bytes_acked > 0 && end - this.bytes_acked > this._window :
                this.chunks_tx_now - this.chunks_acked_now >= this._sendAhead;
            if (full || start >= this.bytes_total) {
                return;
            }
            var chunk = this._chunkAt(start, end);
            if (chunk === null) {
                this._readBlock(ws, start);
                return;
            }
            ws.send(chunk);
            this._sent.push([end, now()]);
            this.bytes_tx = end;
            this.chunks_tx_now += 1;
            this._update(this.state_msg);
            var last = this._blocks[this._blocks.length - 1];
            this._readBlock(ws, last.start + last.buffer.byteLength);  // read ahead
        }
    };

    // A view of [start, end) in a block already read, or null.
    Uploader.prototype._chunkAt = function (start, end) {
        while (this._blocks.length && this._blocks[0].start + this._blocks[0].buffer.byteLength <= start) {
            this._blocks.shift();  // sent completely
        }
        var block = this._blocks[0];
        if (block && block.start <= start && end <= block.start + block.buffer.byteLength) {
            return new Uint8Array(block.buffer, start - block.start, end - start);
        }
        return null;
    };

    // Read a block of whole chunks from `from`, unless a read is running,
    // two blocks are held already, or the file ends before it.
    Uploader.prototype._readBlock = function (ws, from) {
        var self = this;
        if (this._reading || this._blocks.length >= 2 || from >= this.bytes_total) {
            return;
        }
        var size = Math.max(1, Math.floor(READ_BLOCK / this._chunkSize)) * this._chunkSize;
        this._reading = true;
        readSlice(this._file.slice(from, Math.min(this.bytes_total, from + size)), function (error, buffer) {
            self._reading = false;
            if (ws !== self._ws || self._ended) {
                if (self._ws && self.connected && !self._ended) {
                    self._pump(self._ws);  // this read was for an older connection
                }
                return;
            }
            if (error) {
                self._readError(ws, error);
                return;
            }
            self._blocks.push({start: from, buffer: buffer});
            self._pump(ws);
        });
    };

    Uploader.prototype._readError = function (ws, error) {
        this._send(ws, "MsgError", {ErrorCode: ERROR.FILE_READ_ERROR, Msg: error});
        this._fail(ERROR.FILE_READ_ERROR, "cannot read the file: " + error);
    };

    function readSlice(blob, done) {
        if (blob.arrayBuffer) {
            blob.arrayBuffer().then(
                function (buffer) { done(null, buffer); },
                function (e) { done(String(e && e.message || e)); }
            );
            return;
        }
        var reader = new root.FileReader();
        reader.onload = function () { done(null, reader.result); };
        reader.onerror = function () { done(String(reader.error && reader.error.message)); };
        reader.readAsArrayBuffer(blob);
    }

    // ---- SHA-256 -------------------------------------------------------------

    // The lowercase hex SHA-256 of an ArrayBuffer, to done(hex): by
    // crypto.subtle where the page has it, by sha256() below where it has not
    // (crypto.subtle exists only in secure contexts: https: and localhost) or
    // where it fails. A method rather than a function so that the tests can
    // reach it.
    Uploader.prototype._digestHex = function (buffer, done) {
        var subtle = root.crypto && root.crypto.subtle;
        var ours = function () { done(hex(sha256(new Uint8Array(buffer)))); };
        if (!subtle) {
            ours();
            return;
        }
        subtle.digest("SHA-256", buffer).then(function (digest) { done(hex(new Uint8Array(digest))); }, ours);
    };

    var SHA256_K = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
    ];

    function ror(x, n) {
        return (x >>> n) | (x << (32 - n));
    }

    // SHA-256 (FIPS 180-4) of a Uint8Array below 512 MiB: the digest, 32 bytes.
    function sha256(bytes) {
        var H = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
        var w = [];
        // The message, 0x80, zeros, and its length in bits (64 bits, big-endian;
        // the high 32 are 0 below 512 MiB), to a multiple of 64 bytes.
        var padded = new Uint8Array((bytes.length + 72) & ~63);
        var view = new DataView(padded.buffer);
        padded.set(bytes);
        padded[bytes.length] = 0x80;
        view.setUint32(padded.length - 4, bytes.length * 8);
        for (var block = 0; block < padded.length; block += 64) {
            var a = H[0], b = H[1], c = H[2], d = H[3], e = H[4], f = H[5], g = H[6], h = H[7];
            for (var i = 0; i < 64; i++) {
                if (i < 16) {
                    w[i] = view.getInt32(block + 4 * i);
                } else {
                    var x = w[i - 15], y = w[i - 2];
                    w[i] = (w[i - 16] + (ror(x, 7) ^ ror(x, 18) ^ (x >>> 3)) +
                            w[i - 7] + (ror(y, 17) ^ ror(y, 19) ^ (y >>> 10))) | 0;
                }
                var t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
                var t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
                h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
            }
            [a, b, c, d, e, f, g, h].forEach(function (value, j) { H[j] = (H[j] + value) | 0; });
        }
        H.forEach(function (word, j) { view.setInt32(4 * j, word); });  // over the padded message
        return padded.subarray(0, 32);
    }

    function hex(bytes) {
        var out = "";
        for (var i = 0; i < bytes.length; i++) {
            out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
        }
        return out;
    }

    // ---- notes of unfinished uploads (resume after a page reload) ---------------

    // A small record per unfinished upload in localStorage, kept by
    // incoming.remember(uploader): the ticket, the file's size and
    // lastModified, a digest of its first bytes, when it last made progress
    // and when the server will give the ticket up (its idle timeout); its
    // name only if asked. After a reload incoming.find(file) says which
    // ticket a re-picked file belongs to. Notes end with their upload, expire
    // with the server's idle timeout, stay under NOTES_BUDGET bytes (the
    // oldest go first), and a full or missing localStorage never disturbs an
    // upload: it only means no note.
    var NOTES_KEY = "incoming.unfinished";
    var NOTES_BUDGET = 16 * 1024;  // bytes of JSON at most
    var HEAD_BYTES = 64 * 1024;  // of the file, digested to recognise it
    var DEFAULT_IDLE_TIMEOUT_S = 12 * 3600;  // the 0.1 default, until the server says
    // Errors after which the ticket is still good (for the right file, or later).
    var KEEPS_TICKET = {};
    KEEPS_TICKET[ERROR.FILE_CHANGED] = true;
    KEEPS_TICKET[ERROR.FILE_READ_ERROR] = true;

    function notesStorage() {
        try {
            return root.localStorage || null;  // a getter that throws where storage is off
        } catch (e) {
            return null;
        }
    }

    // The notes that have not expired, newest first.
    function readNotes() {
        var storage = notesStorage();
        var notes;
        try {
            notes = storage ? JSON.parse(storage.getItem(NOTES_KEY) || "[]") : [];
        } catch (e) {
            notes = [];
        }
        if (!Array.isArray(notes)) {
            return [];
        }
        var t = Date.now();
        return notes.filter(function (n) {
            return n && typeof n.ticket === "string" && typeof n.size === "number" &&
                typeof n.expires === "number" && n.expires > t;
        }).sort(function (a, b) { return b.time - a.time; });
    }

    // Store `notes` (newest first), dropping the oldest beyond the budget;
    // a storage that refuses even one note is left as it is.
    function writeNotes(notes) {
        var storage = notesStorage();
        if (!storage) {
            return false;
        }
        var kept = notes.slice();
        for (;;) {
            var text = JSON.stringify(kept);
            if (text.length <= NOTES_BUDGET || kept.length <= 1) {
                try {
                    if (kept.length) {
                        storage.setItem(NOTES_KEY, text);
                    } else {
                        storage.removeItem(NOTES_KEY);
                    }
                    return true;
                } catch (e) {  // QuotaExceededError: try with fewer
                    if (kept.length <= 1) {
                        return false;
                    }
                }
            }
            kept.pop();
        }
    }

    function changeNotes(ticket, change) {
        var all = readNotes();
        var notes = all.filter(function (n) { return n.ticket !== ticket; });
        var note = change(all.filter(function (n) { return n.ticket === ticket; })[0] || null);
        if (note) {
            notes.unshift(note);
        }
        return writeNotes(notes);
    }

    // The hex SHA-256 (first 32 digits) of the file's first bytes, to done(hex or null).
    function headDigest(file, done) {
        readSlice(file.slice(0, Math.min(file.size, HEAD_BYTES)), function (error, buffer) {
            if (error) {
                done(null);
                return;
            }
            Uploader.prototype._digestHex(buffer, function (digest) { done(digest.slice(0, 32)); });
        });
    }

    function promise(executor) {
        return typeof root.Promise === "function" ? new root.Promise(executor) : null;
    }

    // Keep a note of `uploader` (started or not) until it ends; with
    // {name: true} the file's name too. Fires with true if the note is stored.
    function remember(uploader, options) {
        var file = uploader._file;
        var withName = !!(options && options.name);
        uploader._remembered = true;
        return promise(function (resolve) {
            headDigest(file, function (head) {
                if (!uploader._remembered || head === null) {
                    resolve(false);  // ended meanwhile, or unreadable
                    return;
                }
                resolve(changeNotes(uploader.upload_id, function () {
                    var note = {ticket: uploader.upload_id, size: file.size, head: head,
                                time: Date.now(), expires: Date.now() + uploader._idleTimeoutS * 1000};
                    if (typeof file.lastModified === "number") {
                        note.modified = Math.floor(file.lastModified);
                    }
                    if (withName) {
                        note.name = String(file.name);
                    }
                    return note;
                }));
            });
        });
    }

    // The notes of unfinished uploads that have not expired, newest first:
    // {ticket, size, modified, time, expires, name (if kept)}.
    function unfinished() {
        return readNotes().map(shownNote);
    }

    // A note as the app sees it (without the digest of the file's head).
    function shownNote(n) {
        var copy = {ticket: n.ticket, size: n.size, modified: n.modified,
                    time: n.time, expires: n.expires};
        if (typeof n.name === "string") {
            copy.name = n.name;
        }
        return copy;
    }

    // Fires with the note ({ticket, ...}) of an unfinished upload of this
    // very file (same size, date and first bytes), or null.
    function find(file) {
        return promise(function (resolve) {
            var candidates = readNotes().filter(function (n) {
                return n.size === file.size &&
                    (n.modified === undefined || n.modified === Math.floor(file.lastModified));
            });
            if (!candidates.length) {
                resolve(null);
                return;
            }
            headDigest(file, function (head) {
                var match = candidates.filter(function (n) { return n.head === head; })[0];
                resolve(match ? shownNote(match) : null);
            });
        });
    }

    // Remove the note of a ticket (the app gave it up).
    function forget(ticket) {
        changeNotes(ticket, function () { return null; });
    }

    Uploader.prototype._touchNote = function () {
        var self = this;
        if (!this._remembered) {
            return;
        }
        changeNotes(this.upload_id, function (old) {
            if (!old) {
                return null;  // not stored yet (its digest is being made), or dropped
            }
            old.time = Date.now();
            old.expires = old.time + self._idleTimeoutS * 1000;
            return old;
        });
    };

    Uploader.prototype._forgetNote = function () {
        if (this._remembered) {
            this._remembered = false;
            forget(this.upload_id);
        }
    };

    // ---- endings -------------------------------------------------------------

    Uploader.prototype._end = function () {
        this._ended = true;
        this.cancelling = false;
        this._close();
        this._blocks = [];  // no file data is kept alive by an ended uploader
        this._sent = [];
        if (this._onOnline && typeof root.removeEventListener === "function") {
            root.removeEventListener("online", this._onOnline);
        }
        this._onOnline = null;
    };

    Uploader.prototype._becomeCancelled = function (reason) {
        this._forgetNote();
        this._end();
        this.cancelled = true;
        this.cancel_msg = reason;
        this._update("cancelled");
        this._call("oncancelled");
    };

    Uploader.prototype._fail = function (code, text) {
        if (!KEEPS_TICKET[code]) {
            this._forgetNote();  // the ticket is of no use any more
        }
        this._end();
        this.error_code = code;
        this.error_msg = text;
        this._update("error: " + text);
        this._call("onerror");
    };

    // ---- observable state ------------------------------------------------------

    // Recompute derived properties and flags, then tell onprogress.
    Uploader.prototype._update = function (stateMsg) {
        var handingOver = this.bytes_acked >= this.bytes_total;  // every byte is on the server
        var active = this._started && !this._ended && !this.cancelling;
        this.state_msg = stateMsg;
        this.bytes_ahead = this.bytes_tx - this.bytes_acked;
        this.chunks_ahead = this.chunks_tx_now - this.chunks_acked_now;
        this.frac_complete = this.bytes_total === 0 ? 1 : this.bytes_acked / this.bytes_total;
        // Pausing stops sending: not once every byte is sent (the server may
        // be handing the file over already).
        this.can_pause = active && !this.paused && this.bytes_tx < this.bytes_total;
        // A cancel while waiting to reconnect is delivered on reconnecting;
        // api.md: not while paused, not while handing over.
        this.can_cancel = active && !this.paused && !handingOver;
        this._call("onprogress");
    };

    Uploader.prototype._call = function (name) {
        var callback = this[name];
        if (typeof callback === "function") {
            try {
                callback(this);
            } catch (e) {
                // A failing callback must not break the upload.
                if (root.console) {
                    root.console.error("incoming.js: error in " + name, e);
                }
            }
        }
    };

    return {
        set_server_hostname: set_server_hostname,
        Uploader: Uploader,
        ERROR: ERROR,
        remember: remember,
        unfinished: unfinished,
        find: find,
        forget: forget,
        version: "0.2"
    };
}));
