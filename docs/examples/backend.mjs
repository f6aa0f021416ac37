// An example web app backend for Incoming!! in Node.js (18.3 or newer: it
// uses the built-in fetch and util.parseArgs). No dependencies.
//
// It does the four things every backend does (docs/backend-integration.md
// walks through them), like docs/examples/backend.py:
//
// 1. gets an upload ticket from Incoming!! (new_upload) for each file;
// 2. serves a page that loads incoming.js from the Incoming!! server and
//    uploads each file with its ticket;
// 3. takes the handover POST at its signalFinishURL: checks the secret,
//    moves the file into its own folder and answers "done", or (with
//    --answer wait) answers "wait", verifies the sha256 in the background
//    and then calls finish_upload;
// 4. cancels an upload on request (cancel_upload).
//
// What it remembers lives in a Map: a real backend keeps it in its
// database, so that a handover that comes twice (after a restart of
// Incoming!!) is recognised even across its own restarts.
//
// Run it next to a server started with `twistd -n incoming --port 4000`:
//
//     node docs/examples/backend.mjs --incoming http://127.0.0.1:4000 \
//         --listen 127.0.0.1:8000 --files ./received
//
// and open http://127.0.0.1:8000/ in a browser.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, rename, unlink } from "node:fs/promises";
import { createServer } from "node:http";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

// ---- 1. the Incoming!! backend API -----------------------------------------

export class IncomingError extends Error {
    constructor(status, message) {
        super(`HTTP ${status}: ${message}`);
        this.status = status;
        this.text = message;
    }
}

export class IncomingClient {
    // baseUrl: how this backend reaches Incoming!! (e.g. http://127.0.0.1:4000);
    // token: the server's --backend-token, if it has one.
    constructor(baseUrl, token = null, timeoutMs = 10000) {
        this.baseUrl = baseUrl.replace(/\/+$/, "");
        this.token = token;
        this.timeoutMs = timeoutMs;
    }

    async post(fn, params) {
        const headers = { "Content-Type": "application/x-www-form-urlencoded" };
        if (this.token) headers.Authorization = `Bearer ${this.token}`;
        const response = await fetch(`${this.baseUrl}/incoming/0.1/backend/${fn}`, {
            method: "POST",
            headers,
            body: new URLSearchParams(params).toString(),
            signal: AbortSignal.timeout(this.timeoutMs),
        });
        const text = (await response.text()).trim();
        if (response.status !== 200) throw new IncomingError(response.status, text);
        return text;
    }

    // A new ticket id; IncomingError 503 when the server is full.
    newUpload(signalFinishURL, backendSecret, removeFileWhenFinished = false) {
        return this.post("new_upload", {
            signalFinishURL,
            backendSecret,
            removeFileWhenFinished: removeFileWhenFinished ? "true" : "false",
        });
    }

    // IncomingError 412 when the file is already being handed over.
    cancelUpload(id, backendSecret) {
        return this.post("cancel_upload", { id, backendSecret });
    }

    // After answering "wait": tell Incoming!! that we are done.
    finishUpload(id, backendSecret) {
        return this.post("finish_upload", { id, backendSecret });
    }
}

// ---- the app: tickets it issued, files it received ---------------------------

function sha256Of(path) {
    return new Promise((done, fail) => {
        const hash = createHash("sha256");
        createReadStream(path)
            .on("data", (block) => hash.update(block))
            .on("end", () => done(hash.digest("hex")))
            .on("error", fail);
    });
}

function sameSecret(given, expected) {
    const a = Buffer.from(given ?? "", "utf8");
    const b = Buffer.from(expected, "utf8");
    return a.length === b.length && timingSafeEqual(a, b);
}

async function moveFile(from, to) {
    try {
        await rename(from, to); // same file system: instant
    } catch (error) {
        if (error.code !== "EXDEV") throw error;
        await copyFile(from, to);
        await unlink(from);
    }
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

export class ExampleBackend {
    // answer: "done" (take the file now) or "wait" (take it in the
    // background, then call finish_upload).
    constructor({ incoming, incomingPublicUrl, handoverUrl, filesDir, answer = "done" }) {
        this.incoming = incoming;
        this.incomingPublicUrl = incomingPublicUrl.replace(/\/+$/, "");
        this.handoverUrl = handoverUrl;
        this.filesDir = resolve(filesDir);
        this.answer = answer;
        // ticket id -> {secret, status, name, path, sha256, reason}
        // status: open, receiving (wait answered), received, cancelled, failed
        this.uploads = new Map();
    }

    // 1. a ticket per file, with a secret of its own
    async newTicket() {
        const secret = randomBytes(18).toString("base64url");
        const ticket = await this.incoming.newUpload(this.handoverUrl, secret, false);
        this.uploads.set(ticket, {
            secret, status: "open", name: null, path: null, sha256: null, reason: null,
        });
        return ticket;
    }

    // 2. the page
    page() {
        const host = new URL(this.incomingPublicUrl).host;
        return PAGE.replace("{INCOMING_URL}", this.incomingPublicUrl)
            .replace("{INCOMING_HOST}", JSON.stringify(host));
    }

    // 3. the handover: Incoming!! POSTs here (signalFinishURL).
    // Returns [HTTP status, body].
    async handleHandover(form) {
        const ticket = form.get("id") ?? "";
        const record = this.uploads.get(ticket);
        if (!record || !sameSecret(form.get("backendSecret"), record.secret)) {
            return [403, "unknown upload or wrong secret\n"]; // Incoming!! cancels it
        }
        if (form.get("cancelled") === "yes") {
            // Incoming!!'s verdict is final: the browser was told the upload
            // failed (even if we took the file but answered too late).
            const path = record.path;
            Object.assign(record, {
                status: "cancelled", path: null, reason: form.get("cancelReason") ?? "",
                name: form.get("filenameFromBrowser") || record.name,
            });
            if (path) await unlink(path).catch(() => {});
            return [200, "ok\n"]; // the answer to a cancellation is ignored
        }
        if (record.status === "received") return [200, "done"]; // the same handover again
        if (record.status === "receiving") return [200, "wait"];
        record.status = "receiving";
        record.name = form.get("filenameFromBrowser") ?? "";
        record.sha256 = form.get("sha256"); // null with --digest none
        try {
            // Our own name for the file: never the browser's file name.
            record.path = join(this.filesDir, ticket);
            await moveFile(form.get("filename"), record.path);
        } catch (error) {
            Object.assign(record, { status: "failed", reason: String(error) });
            return [500, "cannot take the file\n"]; // Incoming!! cancels the upload
        }
        if (this.answer === "done") {
            record.status = "received";
            return [200, "done"];
        }
        this.verifyThenFinish(ticket).catch((error) => console.error(error));
        return [200, "wait"];
    }

    // After answering wait: the slow part, then finish_upload.
    async verifyThenFinish(ticket) {
        const record = this.uploads.get(ticket);
        if (record.sha256 && (await sha256Of(record.path)) !== record.sha256) {
            Object.assign(record, { status: "failed", reason: "sha256 mismatch" });
            return; // no finish_upload: Incoming!! cancels it after its confirm timeout
        }
        record.status = "received";
        await finishUploadRetrying(this.incoming, ticket, record.secret);
    }

    // 4. cancel
    async cancel(ticket) {
        const record = this.uploads.get(ticket);
        if (!record) throw new Error("no such upload");
        await this.incoming.cancelUpload(ticket, record.secret);
    }

    listing() {
        const result = {};
        for (const [ticket, { secret, ...rest }] of this.uploads) result[ticket] = rest;
        return result;
    }
}

// finish_upload, retried while it cannot have arrived yet: a 412 right after
// answering wait means Incoming!! has not read the answer yet; a network
// error means it is restarting (it keeps waiting across a restart).
export async function finishUploadRetrying(incoming, ticket, secret, patienceMs = 60000) {
    const deadline = Date.now() + patienceMs;
    for (;;) {
        try {
            await incoming.finishUpload(ticket, secret);
            return;
        } catch (error) {
            const retry = error instanceof IncomingError ? error.status === 412 : true;
            if (!retry || Date.now() > deadline) {
                console.warn(`finish_upload ${ticket}: ${error.message}`);
                return;
            }
        }
        await sleep(200);
    }
}

// ---- the page ------------------------------------------------------------------

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>Upload</title>
<script src="{INCOMING_URL}/incoming/0.1/frontend/incoming.js"></script>
<input type="file" id="files" multiple>
<ul id="list"></ul>
<script>
incoming.set_server_hostname({INCOMING_HOST});

async function newTicket() {
    const response = await fetch("/ticket", {method: "POST"});
    if (!response.ok) throw new Error(await response.text());
    return (await response.json()).ticket;
}

document.getElementById("files").onchange = async function (event) {
    for (const file of event.target.files) {
        const line = document.createElement("li");
        document.getElementById("list").appendChild(line);
        const uploader = new incoming.Uploader(await newTicket(), file);
        uploader.onprogress = function (u) {
            line.textContent = u.filename + ": " + Math.round(100 * u.frac_complete) +
                "% (" + u.state_msg + ")";
        };
        uploader.onfinished = function (u) { line.textContent = u.filename + ": received"; };
        uploader.oncancelled = function (u) {
            line.textContent = u.filename + ": cancelled (" + u.cancel_msg + ")";
        };
        uploader.onerror = function (u) {
            line.textContent = u.filename + ": error " + u.error_code + " (" + u.error_msg + ")";
        };
        uploader.start();
    }
};
</script>
`;

// ---- the web app -------------------------------------------------------------------

async function formValues(request) {
    const chunks = [];
    for await (const chunk of request) chunks.push(chunk);
    const form = new URLSearchParams(new URL(request.url, "http://x").search);
    for (const [key, value] of new URLSearchParams(Buffer.concat(chunks).toString("utf8"))) {
        form.set(key, value);
    }
    return form;
}

export function makeServer(backend) {
    return createServer(async (request, response) => {
        const path = new URL(request.url, "http://x").pathname;
        let status = 200;
        let body;
        let type = "text/plain; charset=utf-8";
        try {
            if (request.method === "GET" && path === "/") {
                [body, type] = [backend.page(), "text/html; charset=utf-8"];
            } else if (request.method === "POST" && path === "/ticket") {
                body = JSON.stringify({ ticket: await backend.newTicket() });
                type = "application/json";
            } else if (request.method === "POST" && path === "/incoming/handover") {
                [status, body] = await backend.handleHandover(await formValues(request));
            } else if (request.method === "POST" && path === "/cancel") {
                await backend.cancel((await formValues(request)).get("id"));
                body = "ok";
            } else if (request.method === "GET" && path === "/files") {
                [body, type] = [JSON.stringify(backend.listing()), "application/json"];
            } else {
                [status, body] = [404, "not found"];
            }
        } catch (error) {
            // 503: Incoming!! is full; 412 from cancel: too late, being handed over
            status = error instanceof IncomingError ? (error.status === 503 ? 503 : 409) : 500;
            body = error.message;
        }
        response.writeHead(status, { "Content-Type": type });
        response.end(body);
    });
}

async function main() {
    const { values } = parseArgs({
        options: {
            incoming: { type: "string", default: "http://127.0.0.1:4000" },
            "incoming-public": { type: "string" },
            token: { type: "string", default: process.env.INCOMING_BACKEND_TOKEN },
            listen: { type: "string", default: "127.0.0.1:8000" },
            files: { type: "string", default: "received" },
            answer: { type: "string", default: "done" },
        },
    });
    const [host, port] = [values.listen.replace(/:\d+$/, ""), Number(values.listen.split(":").pop())];
    const backend = new ExampleBackend({
        incoming: new IncomingClient(values.incoming, values.token),
        incomingPublicUrl: values["incoming-public"] ?? values.incoming,
        handoverUrl: `http://${values.listen}/incoming/handover`,
        filesDir: values.files,
        answer: values.answer,
    });
    await mkdir(backend.filesDir, { recursive: true });
    makeServer(backend).listen(port, host, () => {
        console.log(`example backend on http://${values.listen}/ (files go to ${backend.filesDir})`);
    });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
    await main();
}
