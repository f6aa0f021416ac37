"""Real-browser: a page of another site cannot call the backend API through
its visitor's browser, neither with a form (no CORS preflight) nor with a
no-cors fetch. Chromium adds Origin and Sec-Fetch-Site; the server refuses.
"""

from __future__ import annotations

from fakes import stored_records

SUBMIT_FORM = """(action) => {
    const form = document.createElement("form");
    form.method = "POST";
    form.action = action;
    const field = document.createElement("input");
    field.name = "signalFinishURL";
    field.value = "http://127.0.0.1:9/hand_over";
    form.appendChild(field);
    document.body.appendChild(form);
    form.submit();
}"""

NO_CORS_FETCH = """(action) => fetch(action, {
    method: "POST", mode: "no-cors",
    body: new URLSearchParams({signalFinishURL: "http://127.0.0.1:9/hand_over"}),
}).then(response => response.type)"""


def records(server) -> set[str]:
    return set(stored_records(server.storage))


def test_a_page_of_another_origin_gets_no_ticket(server, backend, open_page, wait_until):
    page = open_page().page  # served by the test backend: another origin
    page_origin = backend.url("/").rstrip("/")
    new_upload = server.url("/incoming/0.1/backend/new_upload")
    before = records(server)

    # The silent attack: the page cannot read the answer, and nothing is made.
    assert page.evaluate(NO_CORS_FETCH, new_upload) == "opaque"
    refusal = f"refused a call from a web page (Origin '{page_origin}')"
    wait_until(lambda: refusal in server.log(), 10, "the refusal in the server's log")

    # A form the visitor submits shows the answer: why, and what would allow it.
    with page.expect_navigation():
        page.evaluate(SUBMIT_FORM, new_upload)
    assert page.inner_text("body").strip() == (
        f"backend API calls from a web page (Origin '{page_origin}') are refused; "
        "list the page's origin in --backend-origins (BackendOrigins) to allow them"
    )
    assert records(server) == before, "a ticket was issued for a web page"
