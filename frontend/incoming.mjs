/*
 * incoming.mjs - incoming.js as an ES module, for pages and bundlers that
 * import rather than load a <script>:
 *
 *     import incoming, { Uploader } from "https://INCOMING_HOST/incoming/0.1/frontend/incoming.mjs";
 *
 * No build step and no second copy: it runs the classic script (which sets
 * the global `incoming`, as a <script> tag would) and exports what it made.
 */
import "./incoming.js";

const incoming = globalThis.incoming;

export default incoming;
export const { Uploader, ERROR, set_server_hostname, version, remember, unfinished, find, forget } =
    incoming;
