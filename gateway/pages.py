"""The gateway's few HTML pages; every dynamic value is escaped; no instance id appears on any of them."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import urlencode

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


def launch_href(app: AppSpec, link: str = "") -> str:
    """`/launch/<app>`, keeping the lecture link a click came with (pages that retry or start again)."""
    return f"/launch/{app.name}" + (f"?{urlencode({'l': link})}" if link else "")


def catalogue_page(apps: list[AppSpec]) -> str:
    items = "".join(
        f"<a class=\"app\" href=\"/launch/{escape(app.name)}\"><h2>{escape(app.title or app.name)}</h2>"
        f"<p>{escape(app.description)}</p></a>"
        for app in apps
    )
    return _page("Notebooks", f"<h1>Notebooks</h1>{items or '<p>No apps yet.</p>'}")


def waiting_page(app: AppSpec, retry_after: int, paused: bool = False, link: str = "") -> str:
    title = app.title or app.name
    if paused:
        text = (f"<p>{escape(title)} is paused for the moment. This page will try again by itself "
                f"in {retry_after} seconds.</p>")
    else:
        text = (f"<p>All {escape(title)} sessions are busy; a fresh one is being prepared. "
                f"This page will try again by itself in {retry_after} seconds.</p>")
    href = escape(launch_href(app, link))
    head = f"<meta http-equiv=\"refresh\" content=\"{retry_after};url={href}\">"
    return _page(f"Starting {title}", f"<h1>Just a moment…</h1>{text}"
                 f"<p><a href=\"{href}\">Try now</a></p>", head)


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


def description_page(app: AppSpec, link: str = "") -> str:
    """What link previews and crawlers see at /launch/<app>: the app's description, no session."""
    title = escape(app.title or app.name)
    description = escape(app.description)
    head = (f"<meta property=\"og:title\" content=\"{title}\">"
            f"<meta property=\"og:description\" content=\"{description}\">"
            "<meta name=\"robots\" content=\"noindex, nofollow\">")
    return _page(app.title or app.name, f"<h1>{title}</h1><p>{description}</p>"
                 f"<p><a href=\"{escape(launch_href(app, link))}\" rel=\"nofollow\">Start a session</a></p>", head)


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "started a moment ago"
    minutes = max(0, int(now - at) // 60)
    clock = time.strftime("%H:%M", time.gmtime(at))
    return f"started {clock} UTC ({minutes} min ago)" if minutes else f"started {clock} UTC (just now)"


def limit_page_unlinked(app: AppSpec, limit: int, started: list[float | None], token: str, now: float,
                        link: str = "") -> str:
    """The limit page: the sessions are named, never linked (a script on the shared origin could read a
    link; with instance_domain a planted cookie could), and a form (token bound to the browser's cookie) ends them all."""
    title = escape(app.title or app.name)
    items = "".join(f"<li>{title} session {n}, {escape(_ago(at, now))}</li>" for n, at in enumerate(started, 1))
    form = (f"<form method=\"post\" action=\"{escape(launch_href(app, link))}\">"
            f"<input type=\"hidden\" name=\"token\" value=\"{escape(token)}\">"
            f"<button type=\"submit\">End these sessions and start a new one</button></form>") if token else ""
    return _page(f"{app.title or app.name}: sessions open",
                 f"<h1>You already have {limit} {title} session{'s' if limit != 1 else ''} open</h1>"
                 f"<ul>{items}</ul><p>Go back to the tab of one of them, or end them (their unsaved work is "
                 f"lost):</p>{form}"
                 "<p>A session also ends by itself a couple of minutes after its tab is closed.</p>")


def open_in_tab_page(app: AppSpec, link: str = "") -> str:
    """What a frame or a prefetch gets at /launch/<app>: no session, a link that opens one in a tab."""
    title = escape(app.title or app.name)
    return _page(app.title or app.name, f"<h1>{title}</h1><p>{escape(app.description)}</p>"
                 f"<p><a href=\"{escape(launch_href(app, link))}\" target=\"_blank\" rel=\"noopener\">"
                 "Open a session in a new tab</a></p>")


LINK_REFUSALS = {  # why a lecture link claims nothing: (HTTP status, heading, text)
    "missing": (403, "This app needs your lecture's link",
                "Open it with the link your teacher shared for this lecture."),
    "tampered": (403, "This link is not valid",
                 "It was changed or cut short. Copy the whole link your teacher shared again."),
    "retired": (403, "This link is no longer valid", "Ask your teacher for the current link."),
    "link_revoked": (403, "This link was withdrawn", "Ask your teacher for the current link."),
    "expired": (410, "This link has expired", "It was valid for one lecture only. Ask your teacher for a new one."),
    "link_expired": (410, "This link has expired",
                     "It was valid for one lecture only. Ask your teacher for a new one."),
    "link_spent": (410, "This link has been used up",
                   "Every session it allowed has been started. Ask your teacher for a new one."),
}


def link_refused_page(app: AppSpec, why: str) -> str:
    """A launch that a lecture link does not allow: what happened and what to do, no session."""
    _, heading, text = LINK_REFUSALS[why]
    return _page(f"{app.title or app.name}: {heading}", f"<h1>{escape(heading)}</h1><p>{escape(text)}</p>")


_WAIT_SCRIPT = (
    # the held connection keeps the place; on "turn" (or when the ticket is gone) the page navigates to its own
    # URL, which answers 303 to the session: no script ever reads where the session is
    "<script>(function(){var es=new EventSource(location.pathname+'/wait'),errors=0;"
    "es.addEventListener('position',function(e){errors=0;"
    "document.getElementById('place').textContent=JSON.parse(e.data).text;});"
    "function go(){es.close();location.replace(location.pathname);}"
    "es.addEventListener('turn',go);es.addEventListener('gone',go);"
    "es.onerror=function(){if(++errors>3){go();}};})();</script>"
)


def queue_page(app: AppSpec, place: str, refresh: int) -> str:
    """A waiting student's place in line. With script a held connection keeps it (also in a background tab);
    without, the page refreshes itself within the queue window."""
    title = escape(app.title or app.name)
    head = f"<noscript><meta http-equiv=\"refresh\" content=\"{refresh}\"></noscript>"
    return _page(f"Waiting for {app.title or app.name}",
                 f"<h1>All {title} sessions are taken: you are in line</h1>"
                 f"<p id=\"place\">{escape(place)}</p>"
                 "<p>Keep this page open: it takes you to your session when your turn comes. "
                 "If you close it, your place goes to the next student.</p>" + _WAIT_SCRIPT, head)


def full_page(app: AppSpec, retry_after: int) -> str:
    """The app's queue is full: nobody more can wait in line now."""
    title = escape(app.title or app.name)
    return _page(f"{app.title or app.name} is full",
                 f"<h1>This class is full</h1><p>All {title} sessions are taken and the line of students waiting "
                 f"for one is as long as it may be. Try again in {retry_after} seconds, or ask your teacher.</p>"
                 f"<p><a href=\"{escape(launch_href(app))}\">Try again</a></p>")


def ticket_gone_page(app: AppSpec) -> str:
    """A waiting page whose place is no longer held (it lapsed, was served, or belongs to another browser)."""
    return _page("Place not held", "<h1>This place in line is not held any more</h1>"
                 "<p>It lapsed when its page was closed, or it was opened in another browser.</p>"
                 f"<p><a href=\"{escape(launch_href(app))}\">Get in line again</a></p>")
