"""The curve's SVG made safe to inline in the report.

The SVG comes from the server, and inline SVG runs scripts, follows links and loads addresses
like the page around it. Matplotlib's own output is safe (its text is glyphs and escaped
comments), but the report does not trust what it was sent: the SVG is parsed as XML and written
again from an allowlist of drawing elements and attributes, with references local to the
picture (`#id`) only and every value escaped. What does not parse is left out.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import escape

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# What matplotlib's SVG backend writes, and a few shapes besides; nothing that scripts, links,
# animates (an <animate> can set an href) or embeds HTML (<foreignObject>).
ELEMENTS = {
    "svg", "g", "defs", "clipPath", "path", "use", "rect", "line", "polyline", "polygon",
    "circle", "ellipse", "style", "title", "desc",
}  # fmt: skip
ATTRIBUTES = {
    "width", "height", "viewBox", "version", "id", "class", "d", "style", "transform",
    "clip-path", "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "rx", "ry", "points",
    "fill", "stroke", "stroke-width", "opacity", "type",
}  # fmt: skip
TEXT_OF = {"style", "title", "desc"}  # the elements whose text is kept (escaped)
LINKS = {"href", f"{{{XLINK_NS}}}href"}  # kept when local (`#id`), written as xlink:href
# CSS that fetches (url() of anything but `#id`, @import) or, in old browsers, runs script.
FETCHING_CSS = re.compile(r"url\s*\(\s*['\"]?\s*(?!#)|@import|expression\s*\(|\\", re.I)
# Names and local references as matplotlib writes them (`errorbar-3`, `#DejaVuSans-64`): one
# with anything else in it is dropped, not escaped, so no markup reaches the page even inert.
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}\Z")
NAMED = {"id", "class"}
UNSHOWN = '<p class="muted">(the curve could not be shown)</p>'


def clean_svg(svg: bytes) -> str:
    """The SVG as inline HTML from the allowlist, or a line saying it could not be shown."""
    # No entity declarations: the parser would expand them (the billion-laughs trick).
    if b"<!ENTITY" in svg.upper():
        return UNSHOWN
    try:
        root = ET.fromstring(svg)
    except ET.ParseError:
        return UNSHOWN
    if root.tag != f"{{{SVG_NS}}}svg":
        return UNSHOWN
    out: list[str] = []
    _write(root, out, top=True)
    return "".join(out)


def _write(element: ET.Element, out: list[str], *, top: bool = False) -> None:
    namespace, _, name = element.tag.partition("}")
    if namespace != f"{{{SVG_NS}" or name not in ELEMENTS:
        return  # with its children: nothing inside an unknown element is drawn by us
    attrs = _attributes(element)
    if top:
        attrs = f' xmlns="{SVG_NS}" xmlns:xlink="{XLINK_NS}"' + attrs
    out.append(f"<{name}{attrs}>")
    if name in TEXT_OF and element.text and not FETCHING_CSS.search(element.text):
        out.append(escape(element.text))
    for child in element:
        _write(child, out)
        out.append("\n")
    out.append(f"</{name}>")


def _attributes(element: ET.Element) -> str:
    """The allowed attributes, each value escaped inside double quotes."""
    kept = []
    for key, value in element.attrib.items():
        if key in LINKS:
            if value.startswith("#") and NAME.match(value[1:]):
                kept.append(f' xlink:href="{escape(value)}"')
        elif key in NAMED:
            if NAME.match(value):
                kept.append(f' {key}="{value}"')
        elif key in ATTRIBUTES and not FETCHING_CSS.search(value):
            kept.append(f' {key}="{escape(value)}"')
    return "".join(kept)
