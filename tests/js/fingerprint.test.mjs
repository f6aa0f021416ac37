// The "fingerprint" extension (docs/javascript-api.md, "Resuming with the
// same file"): the upload request carries the file's lastModified; when the
// server holds bytes it may ask in MsgUploadConf for the SHA-256 of a Sample
// of them, which the library answers in MsgAck before any chunk, with
// crypto.subtle or, on pages without it, with a SHA-256 of its own.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, webcrypto } from "node:crypto";

import {
    load, makeFile, flush, confirming, started, ackUntilIdle, expectedBytes, LAST_MODIFIED, KiB,
} from "./harness.mjs";

function sha256(bytes) {
    return createHash("sha256").update(bytes).digest("hex");
}

function arrayBuffer(bytes) {
    return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

/** The MsgTypes sent on `ws`, binary frames as "chunk". */
function sent(ws) {
    return ws.frames.map((f) => (f.text ? f.text.MsgType : "chunk"));
}

/** A page crypto whose digests wait until the test releases them. */
function heldCrypto() {
    const held = [];
    const crypto = {
        subtle: {
            digest(algorithm, data) {
                return new Promise((resolve, reject) => {
                    held.push({ release: () => webcrypto.subtle.digest(algorithm, data).then(resolve, reject) });
                });
            },
        },
    };
    return { crypto, held };
}

const RESUME = { FilePos: 5000, Sample: { Offset: 1234, Length: 3000 } };

// ---- the upload request ----------------------------------------------------------

test("MsgUploadReq announces fingerprint and carries the file's lastModified as whole ms, or no LastModified", () => {
    for (const [lastModified, expected] of [
        [LAST_MODIFIED, LAST_MODIFIED],
        [0, 0],
        [1714000000123.75, 1714000000123],
        [null, undefined],  // a Blob: no lastModified
        [NaN, undefined],
        [Infinity, undefined],
        ["1714000000123", undefined],
    ]) {
        const page = load();
        new page.incoming.Uploader("t", makeFile(10, { lastModified })).start();
        page.ws().open();
        const request = page.ws().messages("MsgUploadReq")[0].MsgData;
        assert.ok(request.Features.includes("fingerprint"));
        assert.equal(request.LastModified, expected, String(lastModified));
        assert.equal("LastModified" in request, expected !== undefined, String(lastModified));
        assert.equal(request.Name, "test.bin");
        assert.equal(request.LengthBytes, 10);
    }
});

// ---- MsgUploadConf without a Sample -------------------------------------------------

test("without a Sample (or with a null one) MsgAck is exactly {Ack: true}, also when resuming", async () => {
    for (const conf of [{ FilePos: 0 }, { FilePos: 3000 }, { FilePos: 3000, Sample: null }]) {
        const { page, ws, file } = await started(10000, conf);
        assert.deepEqual(ws.frames[1], { text: { MsgType: "MsgAck", MsgData: { Ack: true } } });
        assert.deepEqual(ws.chunks()[0], expectedBytes(conf.FilePos, conf.FilePos + KiB));
        assert.equal(file.reads[0][0], conf.FilePos, "a sample was read");
        assert.deepEqual(page.digests, []);
    }
});

// ---- MsgUploadConf with a Sample ------------------------------------------------------

test("with a Sample, MsgAck carries the hex SHA-256 of bytes [Offset, Offset + Length), before any chunk", async () => {
    const size = 10 * KiB;
    const { up, ws, file } = await started(size, RESUME);
    assert.deepEqual(file.reads[0], [1234, 4234], "the sample read is not the sample");
    assert.deepEqual(ws.frames[1].text, {
        MsgType: "MsgAck",
        MsgData: { Ack: true, Sample: sha256(expectedBytes(1234, 4234)) },
    });
    assert.match(ws.frames[1].text.MsgData.Sample, /^[0-9a-f]{64}$/);
    assert.ok(ws.frames[0].text && !ws.frames[0].text.MsgData.Sample, "something went before MsgAck");
    // Then the file from FilePos on, as without a Sample.
    assert.equal(up.connected, true);
    assert.equal(up.state_msg, "uploading (resumed at byte 5000)");
    assert.deepEqual(ws.chunks()[0], expectedBytes(5000, 5000 + KiB));
    const data = await ackUntilIdle(ws);
    assert.deepEqual(data, expectedBytes(5000, size));
    assert.deepEqual(sent(ws).slice(0, 3), ["MsgUploadReq", "MsgAck", "chunk"]);
    ws.deliver("MsgAllDone", { Success: true });
    assert.equal(up.finished, true);
});

test("Samples at the limits: 64 KiB, the last byte before FilePos, FilePos at the end; read with FileReader too", async () => {
    for (const [size, conf, fileOptions] of [
        [100 * KiB, { FilePos: 64 * KiB, Sample: { Offset: 0, Length: 64 * KiB } }, {}],
        [10000, { FilePos: 5000, Sample: { Offset: 4999, Length: 1 } }, {}],
        [10000, { FilePos: 10000, Sample: { Offset: 0, Length: 10000 } }, {}],
        [10000, RESUME, { api: "FileReader" }],
    ]) {
        const { up, ws } = await started(size, conf, { fileOptions });
        const { Offset, Length } = conf.Sample;
        assert.equal(ws.messages("MsgAck")[0].MsgData.Sample, sha256(expectedBytes(Offset, Offset + Length)));
        assert.equal(up.error_code, -1);
    }
});

test("nothing is sent while the digest is computed, not even for a block read of the previous connection", async () => {
    const { crypto, held } = heldCrypto();
    const page = load({ crypto });
    const up = new page.incoming.Uploader("t", makeFile(8 * KiB));
    up.start();
    const ws = page.ws();
    ws.open();
    ws.conf({});  // the first block read starts...
    ws.drop(1006);  // ...and the connection is lost before it is done
    page.clock.runNext();
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: 2 * KiB, Sample: { Offset: 0, Length: 2 * KiB } });
    await flush();
    await flush();
    assert.equal(held.length, 1, "no digest was asked for");
    assert.deepEqual(sent(ws2), ["MsgUploadReq"]);
    assert.equal(up.connected, false);
    held[0].release();
    await page.settle();
    await flush();
    assert.deepEqual(sent(ws2).slice(0, 3), ["MsgUploadReq", "MsgAck", "chunk"]);
    assert.equal(ws2.messages("MsgAck")[0].MsgData.Sample, sha256(expectedBytes(0, 2 * KiB)));
    assert.deepEqual(await ackUntilIdle(ws2), expectedBytes(2 * KiB, 8 * KiB));
});

test("a connection that goes stale while the sample is read or digested gets nothing more", async () => {
    const staleWays = {
        "lost": (page, up, ws) => ws.drop(1006),
        "closed by the server": (page, up, ws) => ws.drop(1000),
        "paused": (page, up) => up.pause("pause"),
        "ended by the server": (page, up, ws) => ws.deliver("MsgError", { ErrorCode: 2, Msg: "unknown upload" }),
    };
    for (const [how, makeStale] of Object.entries(staleWays)) {
        for (const when of ["reading", "digesting"]) {
            const { crypto, held } = heldCrypto();
            const { page, up, ws } = confirming(10 * KiB, RESUME, { loadOptions: { crypto } });
            if (when === "digesting") {
                await flush();
                assert.equal(held.length, 1);
            }
            const before = sent(ws);
            makeStale(page, up, ws);
            const mine = sent(ws).slice(before.length);  // what the library itself sends for it
            await flush();
            held.forEach((h) => h.release());
            await page.settle();
            await flush();
            assert.deepEqual(sent(ws), before.concat(mine), `${how} while ${when}`);
            assert.ok(!sent(ws).includes("MsgAck") && !sent(ws).includes("chunk"), `${how} while ${when}`);
        }
    }
});

test("a sample read that fails after its connection was lost is no error: the reconnect asks again", async () => {
    const { page, up, ws, events } = confirming(10 * KiB, RESUME, { fileOptions: { failAt: 2000 } });
    ws.drop(1006);
    await page.settle();
    assert.deepEqual(sent(ws), ["MsgUploadReq"]);
    assert.deepEqual(page.digests, []);
    assert.equal(up.error_code, page.incoming.ERROR.NONE);
    assert.deepEqual(events.endings(), []);
    assert.equal(page.clock.pending().length, 1, "no reconnect");
});

test("the answer goes on the new connection after a reconnect, not on the one that asked first", async () => {
    const { crypto, held } = heldCrypto();
    const { page, up, ws } = confirming(10 * KiB, RESUME, { loadOptions: { crypto } });
    await flush();
    ws.drop(1006);
    page.clock.runNext();
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: 6000, Sample: { Offset: 100, Length: 50 } });
    await flush();
    held.forEach((h) => h.release());
    await page.settle();
    assert.deepEqual(sent(ws), ["MsgUploadReq"]);
    assert.deepEqual(ws2.messages("MsgAck").map((m) => m.MsgData.Sample), [sha256(expectedBytes(100, 150))]);
    assert.deepEqual(ws2.chunks()[0], expectedBytes(6000, 6000 + KiB));
    assert.equal(up.bytes_acked, 6000);
});

test("an invalid Sample is a PROTOCOL error, told to the server, with no MsgAck and no chunk", async () => {
    for (const [FilePos, Sample] of [
        [5000, { Offset: 1.5, Length: 10 }],
        [5000, { Offset: 0, Length: 10.5 }],
        [5000, { Offset: "0", Length: 10 }],
        [5000, { Offset: 0, Length: "10" }],
        [5000, { Offset: 0, Length: true }],
        [5000, { Offset: -1, Length: 10 }],
        [5000, { Offset: 0, Length: 0 }],
        [5000, { Offset: 0, Length: -5 }],
        [100 * KiB, { Offset: 0, Length: 64 * KiB + 1 }],
        [5000, { Offset: 4000, Length: 1001 }],  // past FilePos
        [0, { Offset: 0, Length: 1 }],
        [5000, { Length: 10 }],
        [5000, { Offset: 0 }],
        [5000, {}],
        [5000, []],
        [5000, "0-10"],
        [5000, 10],
        [5000, true],
    ]) {
        const what = JSON.stringify({ FilePos, Sample });
        const { page, up, ws, events } = confirming(100 * KiB, { FilePos, Sample });
        await page.settle();
        const told = ws.messages("MsgError");
        assert.equal(told.length, 1, what);
        assert.equal(told[0].MsgData.ErrorCode, 1, what);
        assert.equal(up.error_code, page.incoming.ERROR.PROTOCOL, what);
        assert.deepEqual(events.endings(), ["onerror"], what);
        assert.deepEqual(ws.messages("MsgAck"), [], what);
        assert.deepEqual(ws.chunks(), [], what);
        assert.deepEqual(page.digests, [], what);
    }
});

test("a sample that cannot be read is FILE_READ_ERROR (11), told to the server, with no MsgAck", async () => {
    const { page, up, ws, events } = confirming(10 * KiB, RESUME, { fileOptions: { failAt: 2000 } });
    await page.settle();
    assert.deepEqual(sent(ws), ["MsgUploadReq", "MsgError"]);
    assert.equal(ws.messages("MsgError")[0].MsgData.ErrorCode, 11);
    assert.equal(up.error_code, page.incoming.ERROR.FILE_READ_ERROR);
    assert.match(up.error_msg, /NotReadableError/);
    assert.deepEqual(events.endings(), ["onerror"]);
    ws.drop(1000);
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1);
});

test("FILE_CHANGED (4) after the sample ends the upload with error_code 4, without a retry", async () => {
    const { page, up, ws, events } = await started(10 * KiB, RESUME);
    assert.equal(ws.messages("MsgAck")[0].MsgData.Sample, sha256(expectedBytes(1234, 4234)));
    ws.deliver("MsgError", { ErrorCode: 4, Msg: "the file changed: its bytes differ" });
    assert.equal(up.error_code, page.incoming.ERROR.FILE_CHANGED);
    assert.equal(up.error_msg, "the file changed: its bytes differ");
    assert.match(up.state_msg, /^error: /);
    assert.deepEqual(events.endings(), ["onerror"]);
    await flush();
    ws.drop(1000);
    assert.deepEqual(page.clock.pending(), [], "a retry is scheduled after FILE_CHANGED");
    page.clock.advance(10 * 60 * 1000);
    assert.equal(page.sockets.length, 1);
});

test("a cancel waiting for the reconnect goes after the MsgAck with the Sample, and no chunk", async () => {
    const { page, up, ws, events } = await started(16 * KiB);
    ws.ack(2);
    up.cancel("changed my mind");
    ws.drop(1006);
    page.clock.runNext();
    const ws2 = page.ws();
    ws2.open();
    ws2.conf({ FilePos: 2 * KiB, Sample: { Offset: 1024, Length: 1024 } });
    await page.settle();
    assert.deepEqual(sent(ws2), ["MsgUploadReq", "MsgAck", "MsgCancel"]);
    assert.equal(ws2.messages("MsgAck")[0].MsgData.Sample, sha256(expectedBytes(1024, 2048)));
    assert.equal(ws2.messages("MsgCancel")[0].MsgData.Reason, "changed my mind");
    ws2.deliver("MsgCancelAck", { Ack: true });
    assert.equal(up.cancelled, true);
    assert.deepEqual(events.endings(), ["oncancelled"]);
});

// ---- the SHA-256 -------------------------------------------------------------------------

/** The library's digest of `bytes` on a page with `crypto` (see load()). */
async function digestOn(crypto, bytes) {
    const page = load({ crypto });
    const up = new page.incoming.Uploader("t", makeFile(0));
    return new Promise((resolve) => up._digestHex(arrayBuffer(bytes), resolve));
}

const VECTORS = [
    ["", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    ["abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"],
    ["abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"],
    ["a".repeat(1000000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"],
];

test("the library's own SHA-256 (no crypto.subtle) gives the FIPS 180-2 digests, as crypto.subtle does", async () => {
    for (const crypto of [{}, null, webcrypto]) {
        for (const [text, expected] of VECTORS) {
            assert.equal(await digestOn(crypto, Buffer.from(text, "latin1")), expected,
                         `${text.slice(0, 10)}... (${text.length} bytes), crypto ${crypto && Object.keys(crypto)}`);
        }
    }
});

test("the library's own SHA-256 equals node:crypto's on random buffers around the block boundaries", async () => {
    const lengths = [1, 2, 31, 32, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4095, 65535, 65536];
    for (let i = 0; i < 40; i++) {
        lengths.push(Math.floor(Math.random() * 70000));
    }
    for (const length of lengths) {
        const bytes = randomBytes(length);
        assert.equal(await digestOn({}, bytes), sha256(bytes), `${length} bytes`);
    }
});

test("without crypto.subtle, or when it fails, the upload answers the Sample with the same digest", async () => {
    const failing = { subtle: { digest: () => Promise.reject(new Error("NotSupportedError")) } };
    for (const crypto of [{}, null, failing]) {
        const { page, ws } = await started(10 * KiB, RESUME, { loadOptions: { crypto } });
        assert.equal(ws.messages("MsgAck")[0].MsgData.Sample, sha256(expectedBytes(1234, 4234)));
        assert.equal(ws.chunks().length, 4);
        if (crypto === failing) {
            assert.equal(page.digests.length, 1, "crypto.subtle was not tried");
        }
    }
});
