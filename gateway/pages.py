"""The gateway's few HTML pages; every dynamic value is escaped, no instance id ever appears."""

from __future__ import annotations

from html import escape

from swarmpool.bus.spec import AppSpec

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;"
    "color:#222;line-height:1.5}a.app{display:block;padding:.8rem 1rem;margin:.6rem 0;"
    "border:1px solid #ccc;border-radius:.5rem;text-decoration:none;color:inherit}"
    "a.app:hover{border-color:#36c}h2{margin:0;font-size:1.1rem}p{margin:.3rem 0}"
)


def _page(title: str, body: str, head: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title>{head}<style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def catalogue_page(apps: list[AppSpec]) -> str:
    items = "".join(
        f"<a class=\"app\" href=\"/launch/{escape(app.name)}\"><h2>{escape(app.title or app.name)}</h2>"
        f"<p>{escape(app.description)}</p></a>"
        for app in apps
    )
    return _page("Notebooks", f"<h1>Notebooks</h1>{items or '<p>No apps yet.</p>'}")


def waiting_page(app: AppSpec, retry_after: int, paused: bool = False) -> str:
    title = app.title or app.name
    if paused:
        text = (f"<p>{escape(title)} is paused for the moment. This page will try again by itself "
                f"in {retry_after} seconds.</p>")
    else:
        text = (f"<p>All {escape(title)} sessions are busy; a fresh one is being prepared. "
                f"This page will try again by itself in {retry_after} seconds.</p>")
    head = f"<meta http-equiv=\"refresh\" content=\"{retry_after};url=/launch/{escape(app.name)}\">"
    return _page(f"Starting {title}", f"<h1>Just a moment…</h1>{text}"
                 f"<p><a href=\"/launch/{escape(app.name)}\">Try now</a></p>", head)


def unknown_app_page() -> str:
    return _page("Not found", "<h1>No such app</h1><p><a href=\"/\">See the available apps</a></p>")


def session_ended_page(app: AppSpec | None) -> str:
    if app is not None:
        link = f"<a href=\"/launch/{escape(app.name)}\">Start a new {escape(app.title or app.name)} session</a>"
    else:
        link = "<a href=\"/\">Start a new session</a>"
    return _page("Session ended", f"<h1>This session has ended — start a new one</h1><p>{link}</p>")


def not_answering_page(app: AppSpec | None) -> str:
    again = f"<a href=\"/launch/{escape(app.name)}\">start a new session</a>" if app else "<a href=\"/\">start a new session</a>"
    return _page("Not answering", "<h1>The app is not answering</h1>"
                 f"<p>Reload in a moment, or {again}.</p>")
