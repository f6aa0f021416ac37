// Type declarations for incoming.js, the browser library of Incoming!!.
// Load the library with a <script> tag (it defines the global `incoming`) or
// require() it where a CommonJS loader is present.

declare namespace incoming {
    /** Values of `Uploader.error_code`. 1-10 come from the server's MsgError. */
    interface ErrorCodes {
        /** No error has occurred. */
        readonly NONE: -1;
        /** An error without a code, e.g. any error from a 0.1 server. */
        readonly GENERIC: 0;
        /** The server and the library did not understand each other. */
        readonly PROTOCOL: 1;
        /** The server does not know the upload ticket (never issued, or long gone). */
        readonly UNKNOWN_UPLOAD: 2;
        /** Another connection uploads this file; the library retries by itself. */
        readonly UPLOAD_BUSY: 3;
        /** The file is not the one this upload started with: size, name, date or bytes differ. */
        readonly FILE_CHANGED: 4;
        /** The file is larger than the server accepts. */
        readonly FILE_TOO_LARGE: 5;
        /** The upload was cancelled by the backend, a timeout or the server. */
        readonly CANCELLED: 6;
        /** The server could not hand the file over to the web app's backend. */
        readonly HANDOVER_FAILED: 7;
        /** The server could not store the file. */
        readonly SERVER_ERROR: 8;
        /** A cancel came too late: the file is being handed over. */
        readonly TOO_LATE: 9;
        /** The server has no room for the rest of the file now; the library retries by itself. */
        readonly NO_SPACE: 10;
        /** The browser could not read the file (detected by the library). */
        readonly FILE_READ_ERROR: 11;
        /** The server's shared store (Redis) does not answer now; the library retries by itself. */
        readonly STORE_UNAVAILABLE: 12;
    }

    /** The numeric error codes, by name. */
    const ERROR: ErrorCodes;

    /** Version of the library. */
    const version: string;

    /**
     * Sets the host (and port) of the Incoming!! server, e.g.
     * "uploads.example.com" or "localhost:4000". Call it once, before creating
     * any Uploader, if the server is not the page's own host
     * (`window.location.host`, the default). `wss:` is used on https pages.
     */
    function set_server_hostname(hostname: string): void;

    /** A note of an unfinished upload, kept by `remember`. */
    interface UnfinishedUpload {
        /** The upload ticket. */
        readonly ticket: string;
        /** The file's size in bytes. */
        readonly size: number;
        /** The file's `lastModified` (ms), if it had one. */
        readonly modified?: number;
        /** When the upload last made progress (ms since the epoch). */
        readonly time: number;
        /** When the server gives the ticket up (its idle timeout after `time`). */
        readonly expires: number;
        /** The file's name, if `remember` was asked to keep it. */
        readonly name?: string;
    }

    /**
     * Keeps a note of the uploader's upload in localStorage until it ends,
     * so that after a page reload `find` tells which ticket a re-picked file
     * belongs to. Resolves to true if the note is stored (false: no usable
     * localStorage; the upload goes on regardless).
     */
    function remember(uploader: Uploader, options?: { name?: boolean }): Promise<boolean>;

    /** The notes of unfinished uploads that have not expired, newest first. */
    function unfinished(): UnfinishedUpload[];

    /** The note of an unfinished upload of this very file (size, date, first bytes), or null. */
    function find(file: Blob): Promise<UnfinishedUpload | null>;

    /** Removes the note of a ticket. */
    function forget(ticket: string): void;

    type UploaderCallback = (uploader: Uploader) => void;

    /** Uploads one file with one upload ticket. Works with or without `new`. */
    class Uploader {
        /**
         * @param upload_id an upload ticket id that your backend got from
         *   the server's new_upload
         * @param file the File (or Blob with a name) to upload
         */
        constructor(upload_id: string, file: File);

        /** The ticket id this uploader uses. */
        readonly upload_id: string;

        // ---- properties (read-only) ----

        /** Name of the file, without any path information. */
        readonly filename: string;
        /** Length of the file, in bytes. */
        readonly bytes_total: number;
        /** Bytes sent to the server (on a reconnect: from where the server resumes). */
        readonly bytes_tx: number;
        /** Bytes the server has confirmed to have stored. */
        readonly bytes_acked: number;
        /** bytes_tx - bytes_acked: sent but not yet confirmed. */
        readonly bytes_ahead: number;
        /**
         * bytes_acked / bytes_total, between 0 and 1 (1 for an empty file).
         * 1 means the file has arrived, not that the backend has it: see
         * `finished`.
         */
        readonly frac_complete: number;
        /** Chunks sent on the current connection; 0 again after a reconnect. */
        readonly chunks_tx_now: number;
        /** Chunks confirmed on the current connection; 0 again after a reconnect. */
        readonly chunks_acked_now: number;
        /** Chunks sent but not yet confirmed. */
        readonly chunks_ahead: number;
        /** What the uploader is doing, for people (e.g. "connection lost; retrying in 0.4 s"). */
        readonly state_msg: string;
        /** Why the upload was cancelled, once `cancelled` is true. */
        readonly cancel_msg: string;
        /** One of `incoming.ERROR`, once an error occurred; -1 (NONE) before. */
        readonly error_code: number;
        /** Text of the error, once an error occurred. */
        readonly error_msg: string;

        // ---- flags (read-only) ----

        /** Connected to the server (the server has confirmed the upload request). */
        readonly connected: boolean;
        /** The backend has the file: the upload is over and succeeded. */
        readonly finished: boolean;
        /** Paused by `pause()`. */
        readonly paused: boolean;
        /** `pause("pause")` would take effect now (not during the handover). */
        readonly can_pause: boolean;
        /** A cancel was sent and its confirmation is awaited. */
        readonly cancelling: boolean;
        /** The upload was cancelled, by the user, the backend or the server. */
        readonly cancelled: boolean;
        /** `cancel()` would take effect now (connected, not paused, not handing over). */
        readonly can_cancel: boolean;

        // ---- callbacks ----

        /** Called whenever any property or flag changes. */
        onprogress: UploaderCallback | null;
        /** Called (after onprogress) when `finished` becomes true. */
        onfinished: UploaderCallback | null;
        /** Called (after onprogress) when `cancelled` becomes true. */
        oncancelled: UploaderCallback | null;
        /** Called (after onprogress) when an error ends the upload; see error_code. */
        onerror: UploaderCallback | null;

        // ---- functions ----

        /** Starts the upload. Reconnects by itself until it finishes, is cancelled or fails. */
        start(): void;
        /** Pauses, unpauses or toggles; unpausing resumes from the bytes the server has. */
        pause(what: "pause" | "unpause" | "toggle"): void;
        /** Cancels the upload (when `can_cancel`); `reason` reaches the backend. */
        cancel(reason: string): void;
    }
}

export = incoming;
export as namespace incoming;
