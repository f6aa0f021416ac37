/*
 * Incoming!! demo page: one incoming.Uploader per picked file, tickets from
 * the play backend (POST api/ticket), and the list of what the backend
 * received (GET api/files, polled). Plain JavaScript, no build step.
 *
 * The page is served by the Incoming!! server itself, so incoming.js finds
 * the server at window.location.host; a page on another host would call
 * incoming.set_server_hostname("incoming.example.com") first.
 */
(function () {
    "use strict";

    var POLL_MS = 1500;
    var SPEED_WINDOW_MS = 5000;  // speed is averaged over the last 5 s

    var $ = function (id) { return document.getElementById(id); };

    function el(tag, className, text) {
        var node = document.createElement(tag);
        if (className) { node.className = className; }
        if (text !== undefined) { node.textContent = text; }
        return node;
    }

    function formatBytes(n) {
        if (n === null || n === undefined) { return "?"; }
        var units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        var i = 0;
        while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
        return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
    }

    function formatDuration(seconds) {
        if (!isFinite(seconds)) { return "\u2013"; }
        seconds = Math.round(seconds);
        var h = Math.floor(seconds / 3600);
        var m = Math.floor((seconds % 3600) / 60);
        var s = seconds % 60;
        if (h) { return h + " h " + m + " min"; }
        if (m) { return m + " min " + s + " s"; }
        return s + " s";
    }

    function errorName(code) {
        var names = (window.incoming && window.incoming.ERROR) || {};
        for (var name in names) {
            if (Object.prototype.hasOwnProperty.call(names, name) && names[name] === code) {
                return name;
            }
        }
        return "error";
    }

    // error_code's "no error" value differs between versions; error_msg does not.
    function hasError(up) {
        return Boolean(up.error_msg);
    }

    function fetchTicket() {
        return fetch("api/ticket", {method: "POST"}).then(function (response) {
            if (!response.ok) {
                return response.text().then(function (text) {
                    throw new Error("no ticket: HTTP " + response.status + " " + text);
                });
            }
            return response.json();
        }).then(function (body) { return body.id; });
    }

    // ---- one row per file -------------------------------------------------

    function UploadRow(file) {
        this.file = file;
        this.uploader = null;
        this.samples = [];  // [time ms, bytes_acked], for the speed
        this.drawPending = false;

        var li = this.node = el("li", "upload");
        var top = el("div", "top");
        top.appendChild(el("span", "name", file.name));
        top.appendChild(el("span", "size", formatBytes(file.size)));
        var actions = el("span", "actions");
        this.pauseButton = el("button", "", "Pause");
        this.cancelButton = el("button", "", "Cancel");
        this.pauseButton.disabled = this.cancelButton.disabled = true;
        actions.appendChild(this.pauseButton);
        actions.appendChild(this.cancelButton);
        top.appendChild(actions);
        li.appendChild(top);

        var bar = el("div", "bar");
        this.fill = el("div");
        bar.appendChild(this.fill);
        li.appendChild(bar);

        var stats = el("div", "stats");
        this.stateText = el("span", "state", "getting a ticket");
        this.percentText = el("span", "percent", "0 %");
        this.speedText = el("span", "speed", "");
        this.etaText = el("span", "eta", "");
        [this.stateText, this.percentText, this.speedText, this.etaText].forEach(function (n) {
            stats.appendChild(n);
        });
        li.appendChild(stats);
        this.message = el("div", "message");
        this.message.hidden = true;
        li.appendChild(this.message);

        var self = this;
        this.pauseButton.onclick = function () {
            if (self.uploader) { self.uploader.pause("toggle"); }
        };
        this.cancelButton.onclick = function () {
            if (self.uploader) { self.uploader.cancel("cancelled by the user on the demo page"); }
        };
    }

    // A file picked again after a reload goes on with its ticket (a note
    // incoming.remember kept); any other gets a new ticket.
    function ticketFor(file) {
        return window.incoming.find(file).then(function (note) {
            return note ? note.ticket : fetchTicket();
        });
    }

    UploadRow.prototype.start = function () {
        var self = this;
        ticketFor(self.file).then(function (ticket) {
            var up = self.uploader = new window.incoming.Uploader(ticket, self.file);
            up.onprogress = function () { self.progress(); };
            up.onfinished = up.oncancelled = function () { pollFiles(); showUnfinished(); };
            up.onerror = function () { pollFiles(); showUnfinished(); };
            window.incoming.remember(up, {name: true});  // the demo shows names in its banner
            up.start();
            showUnfinished();
        }).catch(function (error) {
            self.stateText.textContent = "not started";
            self.showMessage("error", String(error.message || error));
            self.node.className = "upload failed";
        });
    };

    UploadRow.prototype.progress = function () {
        var now = Date.now();
        var up = this.uploader;
        this.samples.push([now, up.bytes_acked]);
        while (this.samples.length > 2 && now - this.samples[1][0] > SPEED_WINDOW_MS) {
            this.samples.shift();
        }
        // onprogress comes once per chunk: draw at most once per frame.
        if (!this.drawPending) {
            this.drawPending = true;
            var self = this;
            window.requestAnimationFrame(function () { self.drawPending = false; self.draw(); });
        }
    };

    UploadRow.prototype.speed = function () {
        var up = this.uploader;
        if (!up || !up.connected || up.paused || this.samples.length < 2) { return 0; }
        var first = this.samples[0];
        var elapsed = (Date.now() - first[0]) / 1000;
        return elapsed > 0 ? (up.bytes_acked - first[1]) / elapsed : 0;
    };

    UploadRow.prototype.draw = function () {
        var up = this.uploader;
        if (!up) { return; }
        var uploading = !up.finished && !up.cancelled && !hasError(up) &&
            up.bytes_acked < up.bytes_total;
        this.fill.style.width = (100 * up.frac_complete).toFixed(1) + "%";
        this.percentText.textContent = (100 * up.frac_complete).toFixed(1) + " %";
        this.stateText.textContent = up.state_msg;
        var speed = this.speed();
        this.speedText.textContent = uploading && speed > 0 ? formatBytes(speed) + "/s" : "";
        this.etaText.textContent = uploading && speed > 0 ?
            formatDuration((up.bytes_total - up.bytes_acked) / speed) + " left" : "";

        this.pauseButton.textContent = up.paused ? "Resume" : "Pause";
        this.pauseButton.disabled = !(up.can_pause || (up.paused && !up.cancelled));
        this.cancelButton.disabled = !up.can_cancel;

        var state = "upload";
        if (up.finished) {
            state += " finished";
        } else if (up.cancelled) {
            state += " cancelled";
        } else if (hasError(up)) {
            state += " failed";
        } else if (up.paused) {
            state += " paused";
        }
        this.node.className = state;
        if (up.cancelled) {
            var text = "Cancelled: " + (up.cancel_msg || "no reason given");
            if (hasError(up)) {
                text += " (" + errorName(up.error_code) + ", code " + up.error_code + ")";
            }
            this.showMessage("cancel", text);
        } else if (hasError(up)) {
            this.showMessage("error", "Error " + up.error_code + " (" +
                errorName(up.error_code) + "): " + up.error_msg);
        } else {
            this.message.hidden = true;
        }
    };

    UploadRow.prototype.showMessage = function (kind, text) {
        this.message.className = "message " + kind;
        this.message.textContent = text;
        this.message.hidden = false;
    };

    // Redraw now and then so that the speed falls to zero on a stall.
    var rows = [];
    setInterval(function () {
        rows.forEach(function (row) { row.draw(); });
    }, 1000);

    function addFiles(files) {
        if (!window.incoming) { return; }
        Array.prototype.forEach.call(files, function (file) {
            var row = new UploadRow(file);
            rows.push(row);
            $("uploads").insertBefore(row.node, $("uploads").firstChild);
            $("no-uploads").hidden = true;
            row.start();
        });
    }

    // ---- what the backend received ------------------------------------------

    var OUTCOMES = {
        "handover": "handing over",
        "done": "done",
        "wait": "wait \u2192 finish due",
        "wait+finish": "wait \u2192 finished",
        "cancelled": "cancelled"
    };

    function drawFiles(files) {
        var body = $("received");
        body.textContent = "";
        files.slice().reverse().forEach(function (f) {
            var tr = el("tr");
            tr.appendChild(el("td", "name", f.name || "(no name)"));
            tr.appendChild(el("td", "num", formatBytes(f.size)));
            var sha = el("td", "sha", f.sha256 || (f.outcome === "cancelled" ? "\u2013" : "computing\u2026"));
            if (f.sha256 && f.server_sha256) {
                // the server computed it as the chunks arrived; we from the file
                sha.appendChild(el("span", "tag " + (f.sha256 === f.server_sha256 ? "done" : "cancelled"),
                                   f.sha256 === f.server_sha256 ? "matches the server's" : "differs from the server's!"));
            }
            tr.appendChild(sha);
            var how = el("td", "how");
            how.appendChild(el("span", "tag " + f.outcome.replace("+", "-"), OUTCOMES[f.outcome] || f.outcome));
            if (f.reason) { how.appendChild(el("span", "reason", f.reason)); }
            tr.appendChild(how);
            body.appendChild(tr);
        });
        $("files-table").hidden = files.length === 0;
        $("no-files").hidden = files.length !== 0;
    }

    function pollFiles() {
        fetch("api/files", {cache: "no-store"}).then(function (response) {
            if (!response.ok) { throw new Error("HTTP " + response.status); }
            return response.json();
        }).then(function (body) {
            $("files-error").hidden = true;
            drawFiles(body.files);
        }).catch(function (error) {
            $("files-error").textContent = "Cannot list the received files: " + (error.message || error);
            $("files-error").hidden = false;
        });
    }

    // Uploads a reload interrupted: pick the same files again to go on.
    function showUnfinished() {
        var running = {};
        rows.forEach(function (row) {
            if (row.uploader) { running[row.uploader.upload_id] = true; }
        });
        var waiting = window.incoming.unfinished().filter(function (n) { return !running[n.ticket]; });
        var banner = $("resume-note");
        banner.hidden = waiting.length === 0;
        banner.textContent = waiting.length === 0 ? "" :
            "Unfinished before the page was reloaded: " +
            waiting.map(function (n) { return (n.name || "a file") + " (" + formatBytes(n.size) + ")"; })
                .join(", ") + ". Choose the same file again to go on from where it stopped.";
    }

    // ---- wiring ----------------------------------------------------------------

    if (!window.incoming) {
        $("load-error").hidden = false;
        $("files").disabled = true;
    }

    $("files").addEventListener("change", function (event) {
        addFiles(event.target.files);
        event.target.value = "";  // picking the same file again starts another upload
    });

    var zone = $("picker");
    ["dragenter", "dragover"].forEach(function (type) {
        zone.addEventListener(type, function (event) {
            event.preventDefault();
            zone.classList.add("over");
        });
    });
    ["dragleave", "drop"].forEach(function (type) {
        zone.addEventListener(type, function (event) {
            event.preventDefault();
            zone.classList.remove("over");
        });
    });
    zone.addEventListener("drop", function (event) {
        addFiles(event.dataTransfer.files);
    });

    pollFiles();
    setInterval(pollFiles, POLL_MS);
    if (window.incoming) {
        showUnfinished();
    }
}());
