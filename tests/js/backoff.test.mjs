// Reconnects (docs/javascript-api.md, "Reconnects"): a lost connection is
// retried after 0.25-0.5 s, then 0.5-1 s, 1-2 s, ... up to 15-30 s (random
// jitter), and the next retry is fast again once a chunk is confirmed or
// after pause("unpause").

import { test } from "node:test";
import assert from "node:assert/strict";

import { load, makeFile, watch, flush, started } from "./harness.mjs";

// The documented ceilings of the delays, in seconds: each delay lies in
// [ceiling / 2, ceiling], where in that range Math.random() decides.
const CEILINGS_S = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30];

/** Lose the current connection and return the delay (ms) until the library
 * opens the next one, checking that it opens none before. */
function loseAndMeasure(page, random) {
    const before = page.sockets.length;
    if (random !== undefined) {
        page.random.values.push(random);
    }
    page.ws().drop(1006);
    assert.equal(page.sockets.length, before, "reconnected at once, without a delay");
    const pending = page.clock.pending();
    assert.equal(pending.length, 1, "exactly one retry timer");
    page.clock.advance(pending[0] - 1);
    assert.equal(page.sockets.length, before, "reconnected before its own delay");
    page.clock.advance(1);
    assert.equal(page.sockets.length, before + 1, "no reconnect when the delay was over");
    return pending[0];
}

function expectedDelayMs(ceilingS, random) {
    return ceilingS * 1000 * (0.5 + random / 2);
}

/** lo <= ms <= hi, give or take the rounding of the fake clock's sums. */
function between(ms, lo, hi) {
    return ms >= lo - 1e-6 && ms <= hi + 1e-6;
}

test("the first retry after a lost connection comes after 0.25-0.5 s, jittered by Math.random", async () => {
    const delays = [];
    for (const r of [0, 0.5, 0.999999]) {
        const { page, up, events } = await started(10 * 1024);
        assert.equal(up.connected, true);
        const callsBefore = page.random.calls;
        const delay = loseAndMeasure(page, r);
        assert.ok(page.random.calls > callsBefore, "the delay does not use Math.random");
        assert.ok(Math.abs(delay - expectedDelayMs(0.5, r)) < 1e-6, `random ${r}: ${delay} ms`);
        assert.ok(between(delay, 250, 500), `${delay} ms`);
        delays.push(delay);
        assert.equal(events.count("onerror"), 0);
        assert.equal(up.error_code, page.incoming.ERROR.NONE);
    }
    assert.equal(new Set(delays).size, 3, "the delay is not jittered");
});

test("while waiting to reconnect: not connected, bytes in flight dropped, state_msg tells the delay", async () => {
    const { page, up, ws, events } = await started(10 * 1024);
    ws.ack(2);
    assert.equal(up.bytes_tx, 6 * 1024);
    page.random.values.push(0.6);  // 0.5 s * 0.8 = 0.4 s
    const progress = events.count("onprogress");
    ws.drop(1006);
    assert.equal(up.connected, false);
    assert.equal(up.bytes_tx, up.bytes_acked);
    assert.equal(up.bytes_acked, 2 * 1024);
    assert.equal(up.bytes_ahead, 0);
    assert.equal(up.state_msg, "connection lost; retrying in 0.4 s");
    assert.equal(up.can_cancel, true, "a cancel now is delivered on reconnecting");
    assert.equal(up.can_pause, true);
    assert.ok(events.count("onprogress") > progress, "no onprogress for the lost connection");
    assert.deepEqual(events.endings(), []);
    assert.deepEqual(page.clock.pending(), [400]);
});

test("retries without progress double with jitter up to a ceiling of 30 s and stay there", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(4096));
    const events = watch(up);
    up.start();
    const randoms = [0, 0.999999, 0.25, 0.5, 0.75, 0, 0.999999, 0, 0.999999, 0.5, 0.1, 0.9];
    CEILINGS_S.forEach((ceiling, attempt) => {
        // The server is unreachable: the socket closes without opening.
        const delay = loseAndMeasure(page, randoms[attempt]);
        const expected = expectedDelayMs(ceiling, randoms[attempt]);
        assert.ok(Math.abs(delay - expected) < 1e-6,
                  `attempt ${attempt}: ${delay} ms, expected ${expected} ms`);
        assert.ok(between(delay, ceiling * 500, ceiling * 1000), `${delay} ms`);
        assert.ok(between(delay, 0, 30000));
    });
    assert.equal(page.sockets.length, CEILINGS_S.length + 1);
    assert.deepEqual(events.endings(), [], "the uploader gave up by itself");
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
});

test("a confirmed chunk makes the next retry fast again", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(64 * 1024));
    up.start();
    for (let i = 0; i < 5; i++) {
        loseAndMeasure(page, 0.999999);  // 0.5, 1, 2, 4, 8 s
    }
    // The sixth connection works and one chunk is confirmed.
    const ws = page.ws();
    ws.open();
    ws.conf({ FilePos: 0, ChunkSizeKB: 1, SendAhead: 4 });
    await flush();
    ws.ack(1);
    assert.equal(up.bytes_acked, 1024);
    const delay = loseAndMeasure(page, 0.999999);
    assert.ok(between(delay, 250, 500), `${delay} ms after progress`);
    // And it grows again from there.
    const next = loseAndMeasure(page, 0.999999);
    assert.ok(between(next, 500, 1000), `${next} ms`);
});

test("a connection that is accepted but confirms no chunk does not make the retry fast", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(64 * 1024));
    up.start();
    for (let i = 0; i < 4; i++) {
        loseAndMeasure(page, 0);  // 0.25, 0.5, 1, 2 s
    }
    const ws = page.ws();
    ws.open();
    ws.conf({ FilePos: 0, ChunkSizeKB: 1, SendAhead: 4 });
    await flush();
    assert.equal(up.connected, true);
    const delay = loseAndMeasure(page, 0);
    assert.ok(Math.abs(delay - expectedDelayMs(CEILINGS_S[4], 0)) < 1e-6, `${delay} ms`);  // 4 s, not 0.25 s
});

test("pause stops the retries; unpause connects at once and the next retry is fast", async () => {
    const page = load();
    const up = new page.incoming.Uploader("t", makeFile(64 * 1024));
    up.start();
    for (let i = 0; i < 6; i++) {
        loseAndMeasure(page, 0.5);
    }
    page.ws().drop(1006);  // a retry timer is set now
    assert.equal(page.clock.pending().length, 1);
    assert.equal(up.can_pause, true);
    up.pause("pause");
    assert.equal(up.paused, true);
    assert.deepEqual(page.clock.pending(), [], "a retry timer survives pause()");
    const count = page.sockets.length;
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, count, "reconnected while paused");
    up.pause("unpause");
    assert.equal(up.paused, false);
    assert.equal(page.sockets.length, count + 1, "unpause did not connect at once");
    assert.equal(up.state_msg, "connecting");
    const delay = loseAndMeasure(page, 0.999999);
    assert.ok(between(delay, 250, 500), `${delay} ms after unpause`);
});

test("an online event retries at once instead of waiting for the backoff", async () => {
    const { page, up, ws } = await started(10 * 1024);
    ws.ack(2);
    for (let i = 0; i < 4; i++) {  // a few failed reconnects: the backoff has grown
        page.ws().drop(1006);
        page.clock.runNext();
    }
    page.ws().drop(1006);
    assert.ok(page.clock.pending()[0] >= 2000, page.clock.pending());
    const before = page.sockets.length;
    page.fire("online");
    assert.equal(page.sockets.length, before + 1, "no reconnect at the online event");
    assert.deepEqual(page.clock.pending(), [], "the backoff timer is still set");
    page.ws().open();
    page.ws().conf({ FilePos: 2 * 1024 });
    await flush();
    assert.equal(up.connected, true);
    page.fire("online");  // connected: nothing to do
    assert.equal(page.sockets.length, before + 1);
});

test("an ended uploader stops listening for online events", async () => {
    const { page, up, ws } = await started(1024);
    assert.equal(page.listeners("online").length, 1);
    await flush();
    ws.ack(1);
    ws.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
    assert.equal(page.listeners("online").length, 0);
});

test("a cancel while waiting to reconnect reconnects at once to deliver it", async () => {
    const { page, up, ws } = await started(10 * 1024);
    ws.ack(2);
    ws.drop(1006);
    assert.equal(up.can_cancel, true);
    const before = page.sockets.length;
    up.cancel("no longer needed");
    assert.equal(up.cancelling, true);
    assert.equal(page.sockets.length, before + 1);
    assert.deepEqual(page.clock.pending(), []);
    page.ws().open();
    page.ws().conf({ FilePos: 2 * 1024 });
    await flush();
    assert.deepEqual(page.ws().messages().map((m) => m.MsgType), ["MsgUploadReq", "MsgAck", "MsgCancel"]);
    page.ws().deliver("MsgCancelAck", { Ack: true });
    assert.equal(up.cancelled, true);
});
