"""The HTML body a client may render: sanitized with nh3 (the Ammonia sanitizer).

An allowlist, not a blocklist: only the tags and attributes mail layout
needs survive; scripts and styles are dropped with their content; every other
unknown tag (svg, math, iframe, form, meta, base, object, ...) is unwrapped to
its text. URLs keep only http, https, mailto and cid (inline parts) schemes,
and relative URLs are dropped, since they would resolve against the webmail's
own origin. Inline `style` keeps only declarations of plain layout properties
with plain values: no url(), expression(), escapes or comments, no
positioning that could lay a fake dialog over the client.

Remote images (http/https `img src`) are blocked by default, as they tell the
sender when and where the mail was read; `allow_remote_images` keeps them.
The sender's HTML, untouched, is only in the RAW format.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import nh3

TAGS = (nh3.ALLOWED_TAGS | {"font"}) - {"area", "map"}
ATTRIBUTES = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
ATTRIBUTES["*"] = {"style", "align", "valign", "bgcolor", "width", "height", "dir", "lang",
                   "title"}
ATTRIBUTES["font"] = {"color", "face", "size"}
ATTRIBUTES["td"] |= {"nowrap"}
ATTRIBUTES["table"] |= {"border", "cellpadding", "cellspacing"}
URL_SCHEMES = {"http", "https", "mailto", "cid"}
DROPPED_WITH_CONTENT = {"script", "style", "title"}

STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "text-align", "text-decoration", "text-indent",
    "text-transform", "line-height", "letter-spacing", "word-spacing", "white-space",
    "vertical-align", "direction", "width", "height", "max-width", "min-width",
    "max-height", "min-height", "margin", "margin-top", "margin-right", "margin-bottom",
    "margin-left", "padding", "padding-top", "padding-right", "padding-bottom",
    "padding-left", "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-collapse", "border-spacing",
    "border-radius", "list-style-type", "table-layout", "display",
}
# Words, numbers, units, colours, quoted font names; and colour functions with
# numeric arguments only. Anything else (url(, expression(, \\ escapes, /* */
# comments, <) makes the declaration go.
_PLAIN_VALUE = re.compile(r"[\w\s#%.,+\-'\"!]*")
_COLOUR_FUNCTION = re.compile(r"\b(?:rgba?|hsla?)\([\d\s.,%]*\)")
_SAFE_DISPLAY = {"block", "inline", "inline-block", "none", "table", "table-cell",
                 "table-row", "list-item"}
_REMOTE = re.compile(r"\s*(?:https?:|//)", re.IGNORECASE)


@dataclass
class SafeHtml:
    html: str
    remote_content_blocked: bool   # a remote image was removed; the client may offer to load them


def sanitize(html: str, allow_remote_images: bool = False) -> SafeHtml:
    blocked = False

    def keep(tag: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if attribute == "style":
            return clean_style(value) or None
        if tag == "img" and attribute == "src" and _REMOTE.match(value):
            if not allow_remote_images:
                blocked = True
                return None
        return value

    cleaned = nh3.clean(html, tags=TAGS, clean_content_tags=DROPPED_WITH_CONTENT,
                        attributes=ATTRIBUTES, attribute_filter=keep,
                        url_schemes=URL_SCHEMES, url_relative="deny",
                        link_rel="noopener noreferrer nofollow")
    return SafeHtml(cleaned, blocked)


def clean_style(style: str) -> str:
    """The declarations of an inline style that are plain layout."""
    kept = []
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not colon or name not in STYLE_PROPERTIES or not value:
            continue
        if not _PLAIN_VALUE.fullmatch(_COLOUR_FUNCTION.sub("", value)):
            continue
        if name == "display" and value.lower() not in _SAFE_DISPLAY:
            continue
        kept.append(f"{name}: {value}")
    return "; ".join(kept)
