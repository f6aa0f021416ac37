"""incoming.d.ts matches incoming.js: every declared member exists on a real
Uploader (and on `incoming`) in Chromium, and nothing public is undeclared."""

import re
from pathlib import Path

DTS = Path(__file__).resolve().parents[2] / "frontend" / "incoming.d.ts"


def declared():
    text = DTS.read_text()
    uploader = text[text.index("class Uploader"):]
    members = set(re.findall(r"^\s+(?:readonly\s+)?(\w+)\s*[:(]", uploader, re.M))
    members.discard("constructor")
    codes = dict(re.findall(r"readonly (\w+): (-?\d+);", text[:text.index("class Uploader")]))
    namespace = set(re.findall(r"^    (?:function|const|class) (\w+)", text, re.M))
    return members, codes, namespace


def test_every_declared_member_exists_on_an_uploader(open_page):
    members, codes, namespace = declared()
    assert {"start", "pause", "cancel", "onprogress", "bytes_acked", "can_cancel"} <= members
    page = open_page()
    found = page.evaluate("""() => {
        const u = new incoming.Uploader("00000000-0000-4000-8000-000000000000",
                                        new File(["abc"], "a.txt"));
        const own = Object.keys(u).filter(k => !k.startsWith("_"));
        const proto = Object.getOwnPropertyNames(incoming.Uploader.prototype)
            .filter(k => !k.startsWith("_") && k !== "constructor");
        return {members: own.concat(proto),
                kinds: Object.fromEntries(own.concat(proto).map(k => [k, typeof u[k]])),
                codes: incoming.ERROR,
                namespace: Object.keys(incoming)};
    }""")
    assert set(found["members"]) == members  # nothing missing, nothing undeclared
    for name in ("start", "pause", "cancel"):
        assert found["kinds"][name] == "function"
    for name in ("onprogress", "onfinished", "oncancelled", "onerror"):
        assert found["kinds"][name] == "object"  # null until the page sets it
    assert {k: str(v) for k, v in found["codes"].items()} == codes
    assert set(found["namespace"]) == namespace
