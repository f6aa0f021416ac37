// An upload as a page sees it: the properties, flags and callbacks of
// docs/javascript-api.md, and what goes on the wire
// (docs/wire-protocol.md), over normal, resumed, paused and cancelled
// uploads.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

import {
    load, makeFile, watch, flush, started, ackUntilIdle, expectedBytes, LIBRARY_PATH, LAST_MODIFIED, KiB, MiB,
} from "./harness.mjs";

const WS_PATH = "/incoming/0.1/frontend/upload_ws";

// ---- loading ---------------------------------------------------------------------

test("a <script> defines the global incoming; require() gets the same API from module.exports", () => {
    const page = load();
    const lib = page.incoming;
    assert.equal(typeof lib.Uploader, "function");
    assert.equal(typeof lib.set_server_hostname, "function");
    assert.equal(lib.version, "0.2");
    assert.equal(lib.ERROR.NONE, -1);
    assert.equal(lib.ERROR.UPLOAD_BUSY, 3);
    assert.equal(lib.ERROR.FILE_READ_ERROR, 11);

    const required = createRequire(import.meta.url)(LIBRARY_PATH);
    assert.deepEqual(Object.keys(required).sort(), Object.keys(lib).sort());
    assert.equal(required.version, "0.2");
    assert.deepEqual({ ...required.ERROR }, { ...lib.ERROR });
});

test("the WebSocket URL follows the page's host and scheme, or set_server_hostname", () => {
    let page = load({ location: { protocol: "http:", host: "app.example:8080" } });
    new page.incoming.Uploader("t", makeFile(10)).start();
    assert.equal(page.ws().url, "ws://app.example:8080" + WS_PATH);

    page = load({ location: { protocol: "https:", host: "app.example" } });
    page.incoming.set_server_hostname("uploads.example.com:4000");
    new page.incoming.Uploader("t", makeFile(10)).start();
    assert.equal(page.ws().url, "wss://uploads.example.com:4000" + WS_PATH);
});

// ---- a normal upload --------------------------------------------------------------

test("before start(): the documented initial values, and nothing is connected", () => {
    const page = load();
    const file = makeFile(5000, { name: "holiday.jpg" });
    const up = page.incoming.Uploader("ticket-7", file);  // `new` may be left out
    assert.ok(up instanceof page.incoming.Uploader);
    assert.equal(up.upload_id, "ticket-7");
    assert.equal(up.filename, "holiday.jpg");
    assert.equal(up.bytes_total, 5000);
    for (const name of ["bytes_tx", "bytes_acked", "bytes_ahead", "chunks_tx_now",
                        "chunks_acked_now", "chunks_ahead", "frac_complete"]) {
        assert.equal(up[name], 0, name);
    }
    for (const flag of ["connected", "finished", "paused", "can_pause", "cancelling",
                        "cancelled", "can_cancel"]) {
        assert.equal(up[flag], false, flag);
    }
    assert.equal(up.state_msg, "not started");
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    assert.equal(up.error_msg, "");
    assert.equal(up.cancel_msg, "");
    assert.equal(page.sockets.length, 0);
    up.cancel("too early");
    up.pause("pause");
    assert.equal(up.cancelling, false);
    assert.equal(up.paused, false);
    assert.equal(page.sockets.length, 0);
});

test("start() connects once and sends MsgUploadReq with the ticket, size, name, Features and LastModified", () => {
    const page = load();
    const up = new page.incoming.Uploader("ticket-1", makeFile(12345, { name: "a b.txt" }));
    const events = watch(up);
    up.start();
    up.start();  // again: nothing
    assert.equal(page.sockets.length, 1);
    assert.equal(up.state_msg, "connecting");
    assert.equal(up.connected, false);
    assert.equal(up.can_cancel, true, "a cancel now is sent once the server confirms");
    assert.equal(up.can_pause, true);
    assert.equal(events.count("onprogress"), 1);
    const ws = page.ws();
    assert.equal(ws.binaryType, "arraybuffer");
    assert.deepEqual(ws.frames, []);
    ws.open();
    assert.deepEqual(ws.messages(), [{
        MsgType: "MsgUploadReq",
        MsgData: {
            Id: "ticket-1", LengthBytes: 12345, Name: "a b.txt",
            Features: ["byte-window", "takeover", "fingerprint", "idle-timeout", "batched-acks"], LastModified: LAST_MODIFIED,
        },
    }]);
});

test("a whole upload: MsgAck, chunks of ChunkSizeKB, SendAhead in flight, handover, MsgAllDone", async () => {
    const size = 5 * KiB + 512;
    const { page, up, ws, events } = await started(size, { FilePos: 0, ChunkSizeKB: 1, SendAhead: 4 });
    // MsgAck answers MsgUploadConf, before any file data.
    assert.deepEqual(ws.frames[1], { text: { MsgType: "MsgAck", MsgData: { Ack: true } } });
    assert.equal(up.connected, true);
    assert.equal(up.state_msg, "uploading");
    assert.equal(up.can_pause, true);
    assert.equal(up.can_cancel, true);
    assert.equal(ws.chunks().length, 4);
    assert.equal(up.bytes_tx, 4 * KiB);
    assert.equal(up.bytes_ahead, 4 * KiB);
    assert.equal(up.chunks_tx_now, 4);
    assert.equal(up.chunks_ahead, 4);
    assert.equal(up.frac_complete, 0);

    ws.ack(1);
    assert.equal(up.bytes_acked, KiB);
    assert.equal(up.chunks_acked_now, 1);
    assert.equal(up.frac_complete, KiB / size);
    assert.equal(ws.chunks().length, 5, "an ack lets the next chunk go");

    const data = await ackUntilIdle(ws);
    assert.deepEqual(data, expectedBytes(0, size));
    assert.deepEqual(ws.chunks().map((c) => c.length), [1024, 1024, 1024, 1024, 1024, 512]);
    assert.equal(up.bytes_acked, size);
    assert.equal(up.bytes_tx, size);
    assert.equal(up.frac_complete, 1);
    assert.equal(up.chunks_ahead, 0);
    // Every byte confirmed: the handover runs; it cannot be paused or cancelled.
    assert.equal(up.state_msg, "handing over");
    assert.equal(up.connected, true);
    assert.equal(up.can_pause, false);
    assert.equal(up.can_cancel, false);
    assert.equal(up.finished, false);
    assert.deepEqual(events.endings(), []);

    // onprogress came at every chunk sent and at every chunk confirmed.
    for (let end = KiB; end <= size; end = Math.min(size, end + KiB)) {
        assert.ok(events.some((e) => e.name === "onprogress" && e.bytes_tx === end), `sent ${end}`);
        assert.ok(events.some((e) => e.name === "onprogress" && e.bytes_acked === end), `acked ${end}`);
        if (end === size) break;
    }

    ws.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.equal(up.connected, false);
    assert.equal(up.state_msg, "finished");
    assert.deepEqual(events.endings(), ["onfinished"]);
    const last = events.slice(-2);
    assert.deepEqual(last.map((e) => e.name), ["onprogress", "onfinished"]);
    assert.equal(last[0].finished, true);
    assert.notEqual(ws.clientClose, null, "the library did not close the socket");
    await flush();
    ws.drop(1000);
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1, "reconnected after the end");
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
});

test("resume: MsgUploadConf with FilePos > 0 sends only the bytes from FilePos on", async () => {
    const size = 10000;
    const { up, ws, events } = await started(size, { FilePos: 3000, ChunkSizeKB: 1, SendAhead: 4 });
    assert.equal(up.bytes_acked, 3000);
    assert.equal(up.frac_complete, 0.3);
    assert.equal(up.state_msg, "uploading (resumed at byte 3000)");
    assert.ok(events.some((e) => e.state_msg === "uploading (resumed at byte 3000)"));
    assert.deepEqual(ws.chunks()[0], expectedBytes(3000, 3000 + KiB));
    const data = await ackUntilIdle(ws);
    assert.equal(data.length, size - 3000, "bytes before FilePos were sent");
    assert.deepEqual(data, expectedBytes(3000, size));
    assert.equal(up.bytes_acked, size);
    assert.equal(up.frac_complete, 1);
});

test("a reconnect resumes at the server's FilePos and counts chunks afresh", async () => {
    const size = 8 * KiB;
    const { page, up, ws } = await started(size);
    ws.ack(2);  // 6 KiB sent, 2 KiB confirmed
    ws.drop(1006);
    assert.equal(up.bytes_tx, 2 * KiB);
    page.clock.runNext();
    const ws2 = page.ws();
    assert.notEqual(ws2, ws);
    assert.equal(up.state_msg, "connecting");
    ws2.open();
    assert.equal(ws2.messages()[0].MsgType, "MsgUploadReq");
    // The server had stored one chunk more than it confirmed.
    ws2.conf({ FilePos: 3 * KiB, ChunkSizeKB: 1, SendAhead: 4 });
    assert.equal(up.bytes_acked, 3 * KiB);
    assert.equal(up.state_msg, "uploading (resumed at byte 3072)");
    await flush();
    assert.equal(up.chunks_tx_now, 4);
    assert.equal(up.chunks_acked_now, 0);
    const data = await ackUntilIdle(ws2);
    assert.deepEqual(data, expectedBytes(3 * KiB, size));
    assert.equal(up.chunks_tx_now, 5);
    assert.equal(up.chunks_acked_now, 5);
});

test("a large file arrives intact across the library's read blocks, read once and in order", async () => {
    const size = 20 * MiB + 100;
    const { up, ws, file } = await started(size, { FilePos: 0, ChunkSizeKB: 512, SendAhead: 4 });
    const data = await ackUntilIdle(ws);
    assert.equal(up.bytes_acked, size);
    assert.ok(data.equals(expectedBytes(0, size)), "the server got other bytes");
    assert.ok(ws.chunks().every((c) => c.length <= 512 * KiB));
    // Read in blocks of at most 8 MiB, each byte once, in order.
    let pos = 0;
    for (const [start, end] of file.reads) {
        assert.equal(start, pos);
        assert.ok(end - start <= 8 * MiB, `a read of ${end - start} bytes`);
        pos = end;
    }
    assert.equal(pos, size);
    assert.ok(file.reads.length >= 3);
});

test("without Blob.arrayBuffer the file is read with FileReader", async () => {
    const size = 3000;
    const { up, ws } = await started(size, {}, { fileOptions: { api: "FileReader" } });
    const data = await ackUntilIdle(ws);
    assert.deepEqual(data, expectedBytes(0, size));
    assert.equal(up.frac_complete, 1);
});

test("an empty file: frac_complete 1, no chunk, straight to the handover", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(0));
    assert.equal(up.frac_complete, 1);
    const events = watch(up);
    up.start();
    const ws = page.ws();
    ws.open();
    assert.equal(ws.messages()[0].MsgData.LengthBytes, 0);
    ws.conf({ FilePos: 0 });
    await flush();
    assert.deepEqual(ws.chunks(), []);
    assert.equal(up.state_msg, "handing over");
    assert.equal(up.frac_complete, 1);
    assert.ok(events.every((e) => e.frac_complete === 1), "frac_complete of an empty file below 1");
    assert.equal(up.can_pause, false);
    assert.equal(up.can_cancel, false);
    ws.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.deepEqual(events.endings(), ["onfinished"]);
});

test("a callback that throws is logged and does not disturb the upload", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(3000));
    let finished = 0;
    up.onprogress = () => { throw new Error("page bug"); };
    up.onfinished = () => { finished += 1; };
    up.start();
    const ws = page.ws();
    ws.open();
    ws.conf({});
    await ackUntilIdle(ws);
    ws.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.equal(finished, 1);
    assert.ok(page.errors.length > 0);
    assert.match(String(page.errors[0][0]), /onprogress/);
});

// ---- pause -----------------------------------------------------------------------

test("pause: MsgPause, the socket closed, no reconnect; unpause connects at once and resumes", async () => {
    const size = 16 * KiB;
    const { page, up, ws, events } = await started(size);
    ws.ack(3);
    const sent = ws.chunks().length;
    up.pause("pause");
    assert.deepEqual(ws.messages().at(-1), { MsgType: "MsgPause", MsgData: { Pause: true } });
    assert.deepEqual(ws.clientClose, { code: 1000, reason: "paused" });
    assert.equal(up.paused, true);
    assert.equal(up.connected, false);
    assert.equal(up.can_pause, false);
    assert.equal(up.can_cancel, false);
    assert.equal(up.state_msg, "paused");
    assert.equal(up.bytes_tx, up.bytes_acked);
    assert.equal(up.bytes_acked, 3 * KiB);
    assert.equal(events.at(-1).paused, true);
    await flush();  // the close event
    assert.equal(ws.chunks().length, sent, "chunks sent after the pause");
    page.clock.advance(60 * 60 * 1000);
    assert.equal(page.sockets.length, 1, "reconnected while paused");
    assert.deepEqual(events.endings(), []);

    up.pause("toggle");  // unpause
    assert.equal(up.paused, false);
    assert.equal(page.sockets.length, 2);
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: 3 * KiB });
    const data = await ackUntilIdle(ws2);
    assert.deepEqual(data, expectedBytes(3 * KiB, size));
    assert.equal(up.frac_complete, 1);
});

test("pause does nothing unless can_pause: not while handing over, not when already paused", async () => {
    const { page, up, ws } = await started(2 * KiB);
    await ackUntilIdle(ws);
    assert.equal(up.can_pause, false);
    up.pause("pause");
    up.pause("toggle");
    assert.equal(up.paused, false);
    assert.equal(ws.messages("MsgPause").length, 0);
    assert.equal(ws.clientClose, null);
    assert.equal(ws.readyState, 1);

    const other = await started(8 * KiB);
    other.up.pause("pause");
    other.up.pause("pause");
    assert.equal(other.ws.messages("MsgPause").length, 1);
    other.up.pause("unpause");
    other.up.pause("unpause");
    assert.equal(other.page.sockets.length, 2, "a second unpause connected again");
    assert.equal(page.sockets.length, 1);
});

// ---- cancel ------------------------------------------------------------------------

test("cancel: MsgCancel with the reason, cancelling until MsgCancelAck, then cancelled and oncancelled", async () => {
    const { page, up, ws, events } = await started(16 * KiB);
    ws.ack(1);
    assert.equal(up.can_cancel, true);
    up.cancel("user clicked cancel");
    assert.deepEqual(ws.messages().at(-1), {
        MsgType: "MsgCancel", MsgData: { Reason: "user clicked cancel" },
    });
    assert.equal(up.cancelling, true);
    assert.equal(up.cancelled, false);
    assert.equal(up.can_cancel, false);
    assert.equal(up.can_pause, false);
    assert.equal(up.state_msg, "cancelling");
    assert.deepEqual(events.endings(), []);
    const sent = ws.chunks().length;
    ws.ack(2);  // acks still arrive; no more data goes out
    await flush();
    assert.equal(ws.chunks().length, sent, "chunks sent after cancel()");
    up.cancel("again");
    assert.equal(ws.messages("MsgCancel").length, 1);

    ws.deliver("MsgCancelAck", { Ack: true });
    assert.equal(up.cancelled, true);
    assert.equal(up.cancelling, false);
    assert.equal(up.cancel_msg, "user clicked cancel");
    assert.equal(up.state_msg, "cancelled");
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    assert.equal(up.can_cancel, false);
    assert.equal(up.can_pause, false);
    assert.deepEqual(events.endings(), ["oncancelled"]);
    assert.deepEqual(events.slice(-2).map((e) => e.name), ["onprogress", "oncancelled"]);
    assert.notEqual(ws.clientClose, null);
    ws.drop(1000);
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1);
});

test("a cancel while connecting is sent once the server confirms the upload, before any chunk", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(4 * KiB));
    up.start();
    up.cancel("while connecting");
    assert.equal(up.cancelling, true);
    assert.equal(up.can_cancel, false, "one cancel at a time");
    const ws = page.ws();
    ws.open();
    ws.conf({});
    await flush();
    assert.deepEqual(ws.messages().map((m) => m.MsgType), ["MsgUploadReq", "MsgAck", "MsgCancel"]);
    assert.deepEqual(ws.chunks(), []);
    ws.deliver("MsgCancelAck", { Ack: true });
    assert.equal(up.cancelled, true);
});

test("cancel does nothing unless can_cancel: not while handing over, not while paused", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(4 * KiB));
    up.start();
    const ws = page.ws();
    ws.open();
    ws.conf({});
    await ackUntilIdle(ws);
    assert.equal(up.can_cancel, false);
    up.cancel("while handing over");
    assert.equal(up.cancelling, false);
    assert.deepEqual(ws.messages("MsgCancel"), []);
    ws.drop(1006);  // and while reconnecting with every byte on the server
    assert.equal(up.can_cancel, false);
    const paused = new page.incoming.Uploader("p", makeFile(64 * KiB));
    paused.start();
    page.ws().open();
    page.ws().conf({});
    paused.pause("pause");
    assert.equal(paused.can_cancel, false);
    paused.cancel("while paused");
    assert.equal(paused.cancelling, false);
});

test("a cancel whose connection drops is sent again after the reconnect, and no data is sent", async () => {
    const { page, up, ws, events } = await started(16 * KiB);
    ws.ack(2);
    up.cancel("changed my mind");
    ws.drop(1006);
    assert.equal(up.cancelling, true);
    page.clock.runNext();
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: 2 * KiB });
    await flush();
    assert.deepEqual(ws2.messages().map((m) => m.MsgType), ["MsgUploadReq", "MsgAck", "MsgCancel"]);
    assert.equal(ws2.messages("MsgCancel")[0].MsgData.Reason, "changed my mind");
    assert.deepEqual(ws2.chunks(), []);
    ws2.deliver("MsgCancelAck", { Ack: true });
    assert.equal(up.cancelled, true);
    assert.equal(up.cancel_msg, "changed my mind");
    assert.deepEqual(events.endings(), ["oncancelled"]);
});

test("a MsgCancel from the server (the backend cancelled) ends the upload as cancelled", async () => {
    const { page, up, ws, events } = await started(16 * KiB);
    ws.deliver("MsgCancel", { Reason: "cancelled by the backend", ErrorCode: 6 });
    assert.equal(up.cancelled, true);
    assert.equal(up.cancelling, false);
    assert.equal(up.connected, false);
    assert.equal(up.cancel_msg, "cancelled by the backend");
    assert.deepEqual(events.endings(), ["oncancelled"]);
    ws.drop(1000);
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1);
});

// ---- errors from the server ----------------------------------------------------------

const PERMANENT = [
    ["GENERIC", 0], ["PROTOCOL", 1], ["UNKNOWN_UPLOAD", 2], ["FILE_CHANGED", 4],
    ["FILE_TOO_LARGE", 5], ["HANDOVER_FAILED", 7], ["SERVER_ERROR", 8],
];

async function assertEndsWithError(page, up, ws, events, code, text) {
    assert.equal(up.error_code, code);
    assert.equal(up.error_msg, text);
    assert.match(up.state_msg, /^error: /);
    assert.equal(up.connected, false);
    assert.equal(up.finished, false);
    assert.equal(up.cancelled, false);
    assert.equal(up.can_pause, false);
    assert.equal(up.can_cancel, false);
    assert.deepEqual(events.endings(), ["onerror"]);
    assert.deepEqual(events.slice(-2).map((e) => e.name), ["onprogress", "onerror"]);
    assert.equal(events.at(-2).error_code, code);
    await flush();
    ws.drop(1000);
    assert.deepEqual(page.clock.pending(), [], "a retry is scheduled after a permanent error");
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1, "retried after a permanent error");
    up.pause("pause");
    up.cancel("after the end");
    assert.equal(up.paused, false);
    assert.equal(up.cancelling, false);
}

test("a MsgError with a permanent code ends the upload: error_code, error_msg, onerror, no retry", async () => {
    for (const [name, code] of PERMANENT) {
        for (const when of ["on connecting", "while sending"]) {
            const page = load();
            const up = new page.incoming.Uploader("t", makeFile(16 * KiB));
            const events = watch(up);
            up.start();
            const ws = page.ws();
            ws.open();
            if (when === "while sending") {
                ws.conf({});
                await flush();
                ws.ack(1);
            }
            assert.equal(page.incoming.ERROR[name], code);
            ws.deliver("MsgError", { ErrorCode: code, Msg: `${name} happened` });
            await assertEndsWithError(page, up, ws, events, code, `${name} happened`);
        }
    }
});

test("a 0.1 server's MsgError without ErrorCode ends the upload as GENERIC", async () => {
    const { page, up, ws, events } = await started(16 * KiB);
    ws.deliver("MsgError", { Msg: "disk full" });
    await assertEndsWithError(page, up, ws, events, page.incoming.ERROR.GENERIC, "disk full");
});

test("MsgError CANCELLED (6) on connecting ends the upload as cancelled, with error_code 6", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(16 * KiB));
    const events = watch(up);
    up.start();
    const ws = page.ws();
    ws.open();
    ws.deliver("MsgError", { ErrorCode: 6, Msg: "upload was cancelled: upload idle for more than 43200 s" });
    assert.equal(up.cancelled, true);
    assert.equal(up.error_code, page.incoming.ERROR.CANCELLED);
    assert.equal(up.error_msg, "upload was cancelled: upload idle for more than 43200 s");
    assert.equal(up.cancel_msg, "upload was cancelled: upload idle for more than 43200 s");
    assert.deepEqual(events.endings(), ["oncancelled"]);
    ws.drop(1000);
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1);
});

test("UPLOAD_BUSY (3) is retried with backoff, without onerror, and the upload then goes on", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(4 * KiB));
    const events = watch(up);
    up.start();
    const delays = [];
    for (let i = 0; i < 3; i++) {
        const ws = page.ws();
        ws.open();
        ws.deliver("MsgError", { ErrorCode: 3, Msg: "upload is busy on another connection" });
        ws.drop(1000);  // the server closes after its MsgError
        assert.equal(up.error_code, page.incoming.ERROR.NONE);
        assert.deepEqual(events.endings(), []);
        const count = page.sockets.length;
        delays.push(page.clock.runNext());
        assert.equal(page.sockets.length, count + 1);
    }
    // 0.25-0.5 s, 0.5-1 s, 1-2 s (Math.random() is 0.5 here: 3/4 of each ceiling).
    assert.deepEqual(delays.map((d) => Math.round(d)), [375, 750, 1500]);
    const ws = page.ws();
    ws.open();
    ws.conf({});
    await ackUntilIdle(ws);
    ws.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.deepEqual(events.endings(), ["onfinished"]);
});

test("STORE_UNAVAILABLE (12) is retried like NO_SPACE and the upload resumes", async () => {
    const size = 4 * KiB;
    const { page, up, ws, events } = await started(size);
    ws.ack(1);
    ws.deliver("MsgError", { ErrorCode: 12, Msg: "Redis at redis://r:6379/0 is unavailable" });
    assert.equal(up.state_msg, "Redis at redis://r:6379/0 is unavailable");
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    ws.drop(1000);
    assert.deepEqual(events.endings(), []);
    page.clock.runNext();
    const next = page.ws();
    next.open();
    next.conf({ FilePos: 1 * KiB });
    assert.deepEqual(await ackUntilIdle(next), expectedBytes(1 * KiB, size));
    next.deliver("MsgAllDone", { Success: true });
    assert.deepEqual(events.endings(), ["onfinished"]);
    assert.equal(page.incoming.ERROR.STORE_UNAVAILABLE, 12);
});

test("NO_SPACE (10), mid-stream or on connecting, is retried with backoff and the upload resumes from FilePos", async () => {
    const size = 8 * KiB;
    const { page, up, ws, events } = await started(size);
    ws.ack(2);  // progress: the next retry is fast
    ws.deliver("MsgError", { ErrorCode: 10, Msg: "not enough free space on the server" });
    assert.equal(up.state_msg, "not enough free space on the server");
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    assert.equal(up.error_msg, "");
    ws.drop(1000);  // the server closes after its MsgError
    assert.equal(up.connected, false);
    assert.match(up.state_msg, /^connection lost; retrying in /);
    assert.deepEqual(events.endings(), []);
    const delays = [page.clock.runNext()];
    // Still full when the upload request arrives: the delay grows.
    let next = page.ws();
    next.open();
    next.deliver("MsgError", { ErrorCode: 10, Msg: "not enough free space on the server" });
    next.drop(1000);
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    delays.push(page.clock.runNext());
    assert.deepEqual(delays.map((d) => Math.round(d)), [375, 750]);
    assert.equal(page.sockets.length, 3);
    // Space again: the server kept what it had stored (one chunk more than it confirmed).
    next = page.ws();
    next.open();
    next.conf({ FilePos: 3 * KiB });
    assert.equal(up.bytes_acked, 3 * KiB);
    const data = await ackUntilIdle(next);
    assert.deepEqual(data, expectedBytes(3 * KiB, size));
    next.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    assert.deepEqual(events.endings(), ["onfinished"]);
});

test("TOO_LATE (9) after a cancel: reconnects and waits for the handover's end", async () => {
    const size = 4 * KiB;
    const { page, up, ws, events } = await started(size);
    up.cancel("too slow");
    // The four chunks in flight completed the file before the cancel arrived.
    const progress = events.count("onprogress");
    ws.deliver("MsgError", { ErrorCode: 9, Msg: "too late to cancel: the upload is being handed over" });
    assert.equal(up.cancelling, false, "the cancel was answered: no longer waiting");
    assert.equal(up.state_msg, "too late to cancel: the upload is being handed over");
    assert.equal(events.count("onprogress"), progress + 1, "no onprogress for the new state_msg");
    ws.drop(1000);
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    assert.deepEqual(events.endings(), []);
    page.clock.runNext();
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: size });
    await flush();
    assert.deepEqual(ws2.chunks(), []);
    assert.equal(up.frac_complete, 1);
    ws2.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.equal(up.cancelled, false);
    assert.equal(up.cancelling, false);
    assert.deepEqual(events.endings(), ["onfinished"]);
});

// ---- errors of the library's own ------------------------------------------------------

test("an invalid MsgUploadConf is a PROTOCOL error, told to the server", async () => {
    for (const bad of [
        '{"MsgType": "MsgUploadConf", "MsgData": {"FilePos": 0, "ChunkSizeKB": 0, "SendAhead": 4}}',
        '{"MsgType": "MsgUploadConf", "MsgData": {"FilePos": 99999, "ChunkSizeKB": 1, "SendAhead": 4}}',
        "this is not JSON",
    ]) {
        const page = load();
        const up = new page.incoming.Uploader("t", makeFile(4 * KiB));
        const events = watch(up);
        up.start();
        const ws = page.ws();
        ws.open();
        ws.deliverRaw(bad);
        const told = ws.messages("MsgError");
        assert.equal(told.length, 1, bad);
        assert.equal(told[0].MsgData.ErrorCode, 1);
        assert.equal(up.error_code, page.incoming.ERROR.PROTOCOL);
        assert.deepEqual(events.endings(), ["onerror"]);
        assert.deepEqual(ws.chunks(), []);
    }
});

test("a file that cannot be read is FILE_READ_ERROR (11), told to the server", async () => {
    const { page, up, ws, events } = await started(4 * KiB, {}, { fileOptions: { failAt: 0 } });
    const told = ws.messages("MsgError");
    assert.equal(told.length, 1);
    assert.equal(told[0].MsgData.ErrorCode, 11);
    assert.equal(up.error_code, page.incoming.ERROR.FILE_READ_ERROR);
    assert.match(up.error_msg, /NotReadableError/);
    assert.deepEqual(events.endings(), ["onerror"]);
    assert.deepEqual(ws.chunks(), []);
    ws.drop(1000);
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1);
});

test("can_pause is false once every byte is sent, before the last ack (the handover may have begun)", async () => {
    const size = 4 * KiB;
    const { page, up, ws } = await started(size);  // 1 KiB chunks, 4 ahead: all sent
    assert.equal(up.bytes_tx, size);
    assert.equal(up.bytes_acked, 0);
    assert.equal(up.can_pause, false);
    up.pause("pause");
    assert.equal(up.paused, false);
    ws.drop(1006);  // what was in flight may be lost: pausing is possible again
    assert.equal(up.can_pause, true);
    page.clock.runNext();
});

test("an ended uploader keeps no file data: its read blocks are dropped", async () => {
    for (const ending of ["MsgAllDone", "MsgCancel", "MsgError"]) {
        const page = load();
        const up = new page.incoming.Uploader("t", makeFile(4 * MiB));
        up.start();
        const ws = page.ws();
        ws.open();
        ws.conf({ FilePos: 0, ChunkSizeKB: 512, SendAhead: 4 });
        await flush();
        assert.ok(up._blocks.length > 0, "a block read");
        ws.deliver(ending, ending === "MsgError" ? { ErrorCode: 8, Msg: "x" } : { Reason: "r" });
        assert.ok(up.finished || up.cancelled || up.error_code === 8, ending);
        assert.equal(up._blocks.length, 0, `${ending}: the file's blocks are still held`);
        await flush();
        assert.equal(up._blocks.length, 0, `${ending}: a read under way kept its block`);
    }
});
