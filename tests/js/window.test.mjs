// How much the library keeps in flight (docs/javascript-api.md, "The byte
// window"): against a 0.1 server (no WindowBytes) at most SendAhead chunks;
// with WindowBytes a window of bytes that starts at SendAhead chunks, grows
// by each confirmed chunk while round trips stay within 30 ms of the
// shortest one seen, shrinks by a tenth when they are more than 60 ms above
// it, and stays between SendAhead chunks and WindowBytes.

import { test } from "node:test";
import assert from "node:assert/strict";

import { started, flush, ackUntilIdle, expectedBytes, KiB, MiB } from "./harness.mjs";

/**
 * Play a link with a round-trip time: the server acks each chunk
 * latency(index) ms after it was sent (in order; an ack that is overdue
 * comes at once). Acks `count` chunks (or until nothing is in flight) and
 * returns the bytes in flight after each ack, once the library has sent what
 * it wanted to send.
 */
async function serveLink(page, ws, latency, count) {
    const inFlight = [];
    for (let i = 0; i < count && ws.unacked() > 0; i++) {
        const index = ws.ackedChunks;
        const due = ws.chunkTimes()[index] + latency(index);
        if (due > page.clock.now) {
            page.clock.advance(due - page.clock.now);
        }
        ws.ack(1);
        await flush();
        inFlight.push(ws.bytesInFlight());
    }
    return inFlight;
}

/** Ack everything in flight after `rtt` ms, `rounds` times; the bytes in
 * flight after each round. */
async function rounds(page, ws, rtt, count) {
    const after = [];
    for (let r = 0; r < count; r++) {
        page.clock.advance(rtt);
        ws.ack(ws.unacked());
        await flush();
        after.push(ws.bytesInFlight());
    }
    return after;
}

/** The connection drops; the retry resumes at what was acked, 1 KiB chunks,
 * SendAhead 4, WindowBytes 64 KiB. */
async function reconnect(page, ws) {
    const acked = ws.bytesSent() - ws.bytesInFlight();
    ws.drop(1006);
    page.clock.runNext();
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: acked, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB });
    await flush();
    return { ws2, acked };
}

test("the upload request announces the byte-window, takeover, fingerprint, idle-timeout and batched-acks features", async () => {
    const { ws } = await started(KiB);
    assert.deepEqual(ws.messages("MsgUploadReq")[0].MsgData.Features, ["byte-window", "takeover", "fingerprint", "idle-timeout", "batched-acks"]);
});

test("0.1 server (no WindowBytes): never more than SendAhead chunks unacknowledged", async () => {
    const size = 200 * KiB;
    const { page, up, ws } = await started(size, { FilePos: 0, ChunkSizeKB: 1, SendAhead: 3 });
    assert.equal(ws.unacked(), 3);
    assert.equal(up.chunks_ahead, 3);
    // Quick, steady round trips would grow a byte window; here nothing grows.
    const after = await rounds(page, ws, 10, 20);
    assert.deepEqual(after, Array(20).fill(3 * KiB));
    // Acks one at a time, some late: each lets exactly one chunk go.
    let most = 0;
    for (let i = 0; i < 60; i++) {
        page.clock.advance(i % 7 === 0 ? 300 : 2);
        ws.ack(1);
        await flush();
        most = Math.max(most, ws.unacked());
        assert.equal(up.chunks_ahead, ws.unacked());
        assert.equal(up.bytes_ahead, ws.bytesInFlight());
    }
    assert.equal(most, 3);
    const data = await ackUntilIdle(ws);
    assert.deepEqual(data, expectedBytes(0, size));  // every chunk this socket carried
    assert.equal(up.bytes_acked, size);
});

test("byte window: starts at SendAhead chunks, doubles per quick round trip, stops at WindowBytes", async () => {
    const { page, up, ws } = await started(MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    assert.equal(ws.bytesInFlight(), 4 * KiB);
    const after = await rounds(page, ws, 10, 7);
    assert.deepEqual(after.map((b) => b / KiB), [8, 16, 32, 64, 64, 64, 64]);
    assert.equal(up.bytes_ahead, 64 * KiB);
    assert.equal(up.chunks_ahead, 64);
});

test("byte window: the bytes in flight never exceed WindowBytes, chunks never exceed ChunkSizeKB", async () => {
    const window = 10000;  // not a multiple of the chunk size
    const { page, ws } = await started(400 * KiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 2, WindowBytes: window,
    });
    // Quick round trips fill it up to the last whole chunk below WindowBytes.
    assert.deepEqual(await rounds(page, ws, 10, 5), [4, 8, 9, 9, 9].map((k) => k * KiB));
    // Then mixed round trips, acked one by one: checked after every ack.
    const inFlight = await serveLink(page, ws, (i) => [10, 12, 9, 30, 11, 100][i % 6], 300);
    assert.equal(inFlight.length, 300);
    assert.ok(Math.max(...inFlight) <= window, `${Math.max(...inFlight)} bytes in flight`);
    assert.ok(ws.chunks().every((c) => c.length <= KiB));
});

test("byte window: round trips somewhat above the shortest neither grow nor shrink it", async () => {
    const { page, ws } = await started(MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    assert.deepEqual(await rounds(page, ws, 10, 2), [8 * KiB, 16 * KiB]);
    // 55 ms after a shortest of 10 ms: not near it any more, not markedly
    // longer yet (the code's thresholds: grow up to 10 + 30 = 40 ms,
    // shrink above 10 + 60 = 70 ms).
    assert.deepEqual(await rounds(page, ws, 55, 5), Array(5).fill(16 * KiB));
});

test("byte window: round trips up to 30 ms above the shortest still grow it (a browser's own pauses)", async () => {
    const { page, ws } = await started(MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    assert.deepEqual(await rounds(page, ws, 5, 2), [8 * KiB, 16 * KiB]);
    // On loopback the shortest is a few ms, and a page's garbage collection
    // or a busy network thread adds tens: the window keeps growing.
    assert.deepEqual(await rounds(page, ws, 35, 3), [32 * KiB, 64 * KiB, 64 * KiB]);
});

test("byte window: the thresholds' edges (grow at +30 ms, hold at +31 and +60, shrink at +61)", async () => {
    const { page, ws } = await started(MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    assert.deepEqual(await rounds(page, ws, 10, 1), [8 * KiB]);  // the shortest: 10 ms
    assert.deepEqual(await rounds(page, ws, 40, 1), [16 * KiB]);
    assert.deepEqual(await rounds(page, ws, 41, 1), [16 * KiB]);
    assert.deepEqual(await rounds(page, ws, 70, 1), [16 * KiB]);
    // Above: each of the 16 acks takes a tenth off (down to SendAhead chunks).
    const after = await rounds(page, ws, 71, 1);
    assert.ok(after[0] < 16 * KiB, `${after[0]} bytes in flight`);
});

/** What the documented sizing predicts for the bytes in flight after each of
 * `acks` slow acks (round trips far above the shortest): the window shrinks
 * by a tenth per ack down to SendAhead chunks, and the library sends while a
 * whole chunk more still fits. */
function predictShrinking(windowBytes, inFlight, chunk, sendAhead, acks) {
    let window = windowBytes;
    const expected = [];
    for (let i = 0; i < acks; i++) {
        window = Math.max(sendAhead * chunk, Math.floor(window * 0.9));
        inFlight -= chunk;  // acked
        inFlight = Math.max(inFlight, Math.floor(window / chunk) * chunk);  // refilled
        expected.push(inFlight);
    }
    return expected;
}

test("byte window: long round trips shrink it by a tenth per ack, never below SendAhead chunks", async () => {
    const { page, up, ws } = await started(4 * MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 2, WindowBytes: 8 * KiB,
    });
    assert.deepEqual(await rounds(page, ws, 10, 3), [4 * KiB, 8 * KiB, 8 * KiB]);
    // From now on a queue builds: every ack comes 100 ms after its chunk.
    const slowFrom = ws.ackedChunks;
    const inFlight = await serveLink(page, ws, (i) => (i >= slowFrom ? 100 : 10), 40);
    assert.deepEqual(inFlight.map((b) => b / KiB),
                     predictShrinking(8 * KiB, 8 * KiB, KiB, 2, 40).map((b) => b / KiB));
    assert.deepEqual(inFlight.slice(-10), Array(10).fill(2 * KiB));
    assert.equal(up.bytes_ahead, 2 * KiB);

    // Quick round trips again: it grows back to WindowBytes.
    const quickFrom = ws.chunks().length;
    const later = await serveLink(page, ws, (i) => (i >= quickFrom ? 10 : 100), 100);
    assert.equal(later.at(-1), 8 * KiB);
    assert.ok(Math.max(...later) <= 8 * KiB);
});

test("byte window: a large window drains by a chunk per slow ack and settles at SendAhead chunks", async () => {
    const { page, up, ws } = await started(4 * MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 16 * KiB,
    });
    assert.deepEqual(await rounds(page, ws, 10, 3), [8 * KiB, 16 * KiB, 16 * KiB]);
    const slowFrom = ws.ackedChunks;
    const inFlight = await serveLink(page, ws, (i) => (i >= slowFrom ? 100 : 10), 60);
    assert.deepEqual(inFlight, predictShrinking(16 * KiB, 16 * KiB, KiB, 4, 60));
    assert.deepEqual(inFlight.slice(0, 12).map((b) => b / KiB), [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4]);
    assert.deepEqual(inFlight.slice(-20), Array(20).fill(4 * KiB));
    assert.equal(up.bytes_ahead, 4 * KiB);
});

test("byte window: a reconnect starts again at SendAhead chunks", async () => {
    const { page, ws } = await started(MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    await rounds(page, ws, 10, 4);
    assert.equal(ws.bytesInFlight(), 64 * KiB);
    const { ws2, acked } = await reconnect(page, ws);
    assert.equal(ws2.bytesInFlight(), 4 * KiB);
    assert.deepEqual(ws2.chunks()[0], expectedBytes(acked, acked + KiB));
});

test("byte window: after a reconnect the shortest round trip is measured afresh (a new path)", async () => {
    const { page, ws } = await started(4 * MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    await rounds(page, ws, 2, 3);  // a 2 ms path
    const { ws2 } = await reconnect(page, ws);
    // The new path takes 100 ms; measured against the old 2 ms it would look
    // congested and pin the window to its floor.  It doubles instead.
    const after = await rounds(page, ws2, 100, 4);
    assert.deepEqual(after.map((b) => b / KiB), [8, 16, 32, 64]);
});

test("batched acks: one ack of several chunks frees them all, and the window grows by their sum", async () => {
    const { page, up, ws } = await started(MiB, {
        FilePos: 0, ChunkSizeKB: 1, SendAhead: 4, WindowBytes: 64 * KiB,
    });
    assert.equal(ws.unacked(), 4);
    page.clock.advance(10);
    ws.ackBatch(3);  // the oldest three in one message
    await flush();
    assert.equal(up.bytes_acked, 3 * KiB);
    // quick round trip: the window grew by the 3 KiB acked, to 7 chunks
    assert.equal(ws.bytesInFlight(), 7 * KiB);
    assert.equal(up.chunks_ahead, ws.unacked());
    assert.equal(up.bytes_ahead, ws.bytesInFlight());
    // batches of four as a server sends them: when the fourth chunk is in,
    // 10 ms after it was sent (a quick round trip): it grows to WindowBytes
    for (let i = 0; i < 60; i++) {
        const n = Math.min(4, ws.unacked());
        const due = ws.chunkTimes()[ws.ackedChunks + n - 1] + 10;
        page.clock.advance(Math.max(0, due - page.clock.now));
        ws.ackBatch(n);
        await flush();
        assert.equal(up.chunks_ahead, ws.unacked());
    }
    assert.equal(ws.bytesInFlight(), 64 * KiB);
    const data = await ackUntilIdle(ws);
    assert.deepEqual(data, expectedBytes(0, MiB));
    assert.equal(up.bytes_acked, MiB);
});

test("batched acks against a 0.1-style SendAhead: a batch of n lets n chunks go", async () => {
    const { up, ws } = await started(100 * KiB, { FilePos: 0, ChunkSizeKB: 1, SendAhead: 6 });
    assert.equal(ws.unacked(), 6);
    ws.ackBatch(4);
    await flush();
    assert.equal(ws.unacked(), 6);  // four more went
    assert.equal(up.chunks_ahead, 6);
    assert.equal(up.bytes_acked, 4 * KiB);
});
