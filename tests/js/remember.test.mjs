// Notes of unfinished uploads, for a resume after a page reload
// (docs/javascript-api.md, "Resuming after a reload"): incoming.remember,
// unfinished, find and forget, over a fake localStorage.

import { test } from "node:test";
import assert from "node:assert/strict";

import { load, makeFile, started, ackUntilIdle, FakeStorage, LAST_MODIFIED, KiB } from "./harness.mjs";

const KEY = "incoming.unfinished";

async function remembered(size = 16 * KiB, conf = {}, options = {}) {
    const result = await started(size, conf, options);
    const stored = result.page.incoming.remember(result.up);
    await result.page.settle();
    assert.equal(await stored, true);
    return result;
}

function plain(value) {  // out of the page's realm, for deepEqual
    return JSON.parse(JSON.stringify(value));
}

test("remember keeps the ticket, size, date, time and expiry, and no file name unless asked", async () => {
    const { page, up } = await remembered(16 * KiB, { IdleTimeoutS: 3600 });
    const [note] = plain(page.incoming.unfinished());
    const now = 1.7e12 + page.clock.now;
    assert.deepEqual(note, { ticket: "ticket-1", size: 16 * KiB, modified: LAST_MODIFIED,
                             time: now, expires: now + 3600 * 1000 });
    const stored = JSON.parse(page.localStorage.getItem(KEY));
    assert.equal(stored.length, 1);
    assert.equal(stored[0].name, undefined, "the file name is kept without being asked");
    assert.match(stored[0].head, /^[0-9a-f]{32}$/);
    const named = new page.incoming.Uploader("t2", makeFile(KiB, { name: "holiday.mov" }));
    const kept = page.incoming.remember(named, { name: true });
    await page.settle();
    assert.equal(await kept, true);
    assert.equal(plain(page.incoming.unfinished()).find((n) => n.ticket === "t2").name, "holiday.mov");
    assert.equal(up.state_msg.startsWith("uploading"), true);
});

test("find recognises the same file by size, date and first bytes, and nothing else", async () => {
    const { page } = await remembered(16 * KiB);
    const same = page.incoming.find(makeFile(16 * KiB));
    await page.settle();
    assert.equal((await same).ticket, "ticket-1");
    for (const other of [
        makeFile(16 * KiB, { byte: (i) => (i * 3) & 0xff }),  // other bytes, same size and date
        makeFile(16 * KiB, { lastModified: LAST_MODIFIED + 1 }),
        makeFile(16 * KiB + 1),
    ]) {
        const found = page.incoming.find(other);
        await page.settle();
        assert.equal(await found, null);
    }
});

test("a note ends with its upload: finished, cancelled, or a ticket the server no longer knows", async () => {
    for (const ending of ["finished", "cancelled", "unknown"]) {
        const { page, up, ws } = await remembered(4 * KiB);
        assert.equal(page.incoming.unfinished().length, 1);
        if (ending === "finished") {
            await ackUntilIdle(ws);
            ws.deliver("MsgAllDone", { Success: true });
        } else if (ending === "cancelled") {
            ws.deliver("MsgCancel", { Reason: "backend" });
        } else {
            ws.deliver("MsgError", { ErrorCode: 2, Msg: "unknown upload" });
        }
        assert.equal(up.finished || up.cancelled || up.error_code === 2, true, ending);
        assert.deepEqual(plain(page.incoming.unfinished()), [], ending);
    }
});

test("a note outlives a refused file (FILE_CHANGED): the right file may still resume", async () => {
    const { page, ws } = await remembered(4 * KiB);
    ws.deliver("MsgError", { ErrorCode: 4, Msg: "not the file this upload started with" });
    assert.equal(page.incoming.unfinished().length, 1);
    page.incoming.forget("ticket-1");
    assert.deepEqual(plain(page.incoming.unfinished()), []);
});

test("a note expires with the server's idle timeout, counted from the last progress", async () => {
    const { page, ws } = await remembered(64 * KiB, { IdleTimeoutS: 60 });
    page.clock.advance(30 * 1000);
    ws.drop(1006);  // progress stops here: the server's 60 s start now
    page.clock.advance(59 * 1000);
    assert.equal(page.incoming.unfinished().length, 1);
    page.clock.advance(2 * 1000);
    assert.deepEqual(plain(page.incoming.unfinished()), []);
    const found = page.incoming.find(makeFile(64 * KiB));
    await page.settle();
    assert.equal(await found, null);
});

test("the notes stay under their size budget: the oldest go first", async () => {
    const page = load();
    for (let i = 0; i < 300; i++) {
        const up = new page.incoming.Uploader(`ticket-${String(i).padStart(3, "0")}`, makeFile(KiB + i));
        const kept = page.incoming.remember(up, { name: true });
        await page.settle();
        assert.equal(await kept, true);
        page.clock.advance(1000);
    }
    const text = page.localStorage.getItem(KEY);
    assert.ok(text.length <= 16 * KiB, text.length);
    const tickets = plain(page.incoming.unfinished()).map((n) => n.ticket);
    assert.ok(tickets.length > 50, tickets.length);
    assert.equal(tickets[0], "ticket-299", "the newest is kept");
    assert.ok(!tickets.includes("ticket-000"), "the oldest is dropped first");
});

test("a full or switched-off localStorage never disturbs an upload", async () => {
    for (const localStorage of [new FakeStorage(10), "throws", null]) {
        const { page, up, ws } = await started(4 * KiB, {}, { loadOptions: { localStorage } });
        const kept = page.incoming.remember(up);
        await page.settle();
        assert.equal(await kept, false);
        assert.deepEqual(plain(page.incoming.unfinished()), []);
        await ackUntilIdle(ws);
        ws.deliver("MsgAllDone", { Success: true });
        assert.equal(up.finished, true, String(localStorage));
        assert.deepEqual(page.errors, []);
    }
});

test("the upload request announces idle-timeout; a server that says none keeps the 12 h default", async () => {
    const { page, ws } = await remembered(4 * KiB);
    assert.ok(ws.messages("MsgUploadReq")[0].MsgData.Features.includes("idle-timeout"));
    const [note] = plain(page.incoming.unfinished());
    assert.equal(note.expires - note.time, 12 * 3600 * 1000);
});
