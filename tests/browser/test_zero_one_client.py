"""A page with a client that reacts to server messages exactly as the
unmodified 0.1 library does (shared/spec/wire-protocol.md, "How the 0.1
library reacts"; written from that description, not our incoming.js): a
backend cancel while it sends reaches it as a cancellation within 1 s."""

import time

# The 0.1 library's reactions, as the spec describes them: on MsgCancel from
# the server while sending it calls cancel(<Reason>), which (socket open)
# sets cancelling, sends MsgCancel {Reason} and waits for MsgCancelAck; only
# then cancelled, cancel_msg set, close, onprogress and oncancelled.  A
# closed socket before that is "lost connection" and a retry after 60 s.
ZERO_ONE_CLIENT = """
([host, ticket, size]) => new Promise((resolve) => {
    const c = window.zeroOne = {cancelled: false, cancelling: false, lost: false,
                                cancel_msg: null, error_code: null, events: [], t0: null};
    const ws = new WebSocket(`ws://${host}/incoming/0.1/frontend/upload_ws`);
    ws.binaryType = "arraybuffer";
    const data = new Uint8Array(size);
    let sent = 0, acked = 0, chunk = 0, ahead = 0, inFlight = 0;
    const send = (type, body) => ws.send(JSON.stringify({MsgType: type, MsgData: body}));
    const pump = () => {
        while (!c.cancelling && !c.cancelled && inFlight < ahead && sent < size) {
            const n = Math.min(chunk, size - sent);
            ws.send(data.subarray(sent, sent + n));
            sent += n; inFlight += 1;
        }
    };
    const cancel = (reason) => {
        if (c.cancelled || c.cancelling) return;
        c.cancelling = true; c.events.push("MsgCancel sent");
        send("MsgCancel", {Reason: reason});
    };
    ws.onopen = () => send("MsgUploadReq", {Id: ticket, LengthBytes: size, Name: "old.bin"});
    ws.onmessage = (e) => {
        const m = JSON.parse(e.data), body = m.MsgData || {};
        c.events.push(m.MsgType);
        if (m.MsgType === "MsgUploadConf") {
            chunk = body.ChunkSizeKB * 1024; ahead = body.SendAhead; sent = acked = body.FilePos;
            send("MsgAck", {Ack: true}); pump(); resolve("started");
        } else if (m.MsgType === "MsgChunkAck") {
            acked += body.ChunkSize; inFlight -= 1; pump();
        } else if (m.MsgType === "MsgCancel") {
            c.t0 = c.t0 || performance.now();
            cancel(body.Reason);              // and nothing else: error_code stays unset
        } else if (m.MsgType === "MsgCancelAck") {
            c.cancelled = true; c.cancelling = false; c.cancel_msg = "cancelled";
            c.cancelled_after_ms = performance.now() - c.t0;
            ws.close();
        } else if (m.MsgType === "MsgError") {
            c.error_code = body.ErrorCode; ws.close();
        }
    };
    ws.onclose = () => { if (!c.cancelled && c.error_code === null) c.lost = true; };
})
"""


def test_a_backend_cancel_reaches_a_0_1_page_as_a_cancellation_at_once(
        open_page, server, backend):
    ticket = server.new_upload(backend)
    page = open_page()
    size = 64 * 1024 * 1024  # long enough to still be sending when the cancel comes
    assert page.evaluate(ZERO_ONE_CLIENT, [server.host, ticket, size]) == "started"
    page.sleep(0.3)
    started = time.monotonic()
    assert server.backend_call("cancel_upload", id=ticket) == (200, "ok")
    page.page.wait_for_function("() => window.zeroOne.cancelled || window.zeroOne.lost",
                                polling=20, timeout=5000)
    state = page.evaluate("() => window.zeroOne")
    assert state["cancelled"] and not state["lost"], state
    assert state["error_code"] is None  # as 0.1: a cancel, not an error
    assert time.monotonic() - started < 1.0
    events = state["events"]
    assert events.index("MsgCancel") < events.index("MsgCancel sent") < events.index(
        "MsgCancelAck"), events
    (call,) = [c for c in backend.calls_for(ticket) if c.get("cancelled") == "yes"]
    assert call["cancelReason"] == "cancelled by the backend"
