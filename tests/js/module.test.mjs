// The packaging of incoming.js for front-end tooling: frontend/package.json
// (no dependencies, its entry points exist), the ES-module entry
// incoming.mjs (the same API as the classic script), require().

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const FRONTEND = fileURLToPath(new URL("../../frontend/", import.meta.url));
const pkg = JSON.parse(readFileSync(FRONTEND + "package.json", "utf8"));

test("package.json names the entry points, which exist, and has no dependencies", () => {
    assert.equal(pkg.main, "incoming.js");
    assert.equal(pkg.module, "incoming.mjs");
    assert.equal(pkg.types, "incoming.d.ts");
    assert.deepEqual(pkg.exports["."], {
        types: "./incoming.d.ts", import: "./incoming.mjs", require: "./incoming.js",
        default: "./incoming.js",
    });
    for (const file of pkg.files) {
        assert.ok(existsSync(FRONTEND + file), file);
    }
    for (const key of ["dependencies", "peerDependencies", "optionalDependencies"]) {
        assert.equal(pkg[key], undefined, key);
    }
    assert.equal(pkg.type, undefined, "incoming.js is a classic script, not an ES module");
});

test("package.json's version is the library's", () => {
    const lib = createRequire(import.meta.url)(FRONTEND + "incoming.js");
    assert.ok(pkg.version.startsWith(lib.version + "."), `${pkg.version} vs ${lib.version}`);
});

test("import of incoming.mjs gives the API of the classic script, default and by name", async () => {
    const mod = await import(FRONTEND + "incoming.mjs");
    const lib = mod.default;
    assert.equal(typeof lib.Uploader, "function");
    assert.equal(mod.Uploader, lib.Uploader);
    assert.equal(mod.ERROR, lib.ERROR);
    assert.equal(mod.ERROR.STORE_UNAVAILABLE, 12);
    assert.equal(mod.set_server_hostname, lib.set_server_hostname);
    assert.equal(mod.version, lib.version);
    assert.deepEqual(Object.keys(mod).sort(), [
        "ERROR", "Uploader", "default", "find", "forget", "remember", "set_server_hostname",
        "unfinished", "version"]);
    assert.equal(mod.remember, lib.remember);
    const up = new mod.Uploader("t", { name: "a", size: 3, slice() {}, lastModified: 1 });
    assert.equal(up.bytes_total, 3);
    assert.equal(up.state_msg, "not started");
});
