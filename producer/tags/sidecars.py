"""XMP sidecars: read the keywords of a sidecar and change them in place, leaving every other byte as it was.

Why not an XMP library: python-xmp-toolkit (Exempi), pyexiv2 (exiv2) and exiftool all parse the packet into a
data model and serialise the whole of it again. Tried on a darktable sidecar, each rewrote properties it was not
asked to touch: Exempi turned darktable's attributes into elements, exiftool split the packet into one
rdf:Description per namespace in sorted order, and pyexiv2 turned dc:subject's rdf:Bag into an rdf:Seq (a change
of meaning: the XMP specification makes dc:subject a Bag). The three keyword fields are plain arrays of text, so
this module edits the bytes instead: expat (CPython's own XML parser, with namespaces) finds where each keyword
and array starts and ends, new items are spliced in beside the existing ones in their indentation, removed items
are cut out with their line, and nothing else changes. Before a result is used, it is parsed again and checked:
the keywords must be the ones intended and everything else (every other element, attribute, text, comment) the
same as before, or the edit fails with SidecarError and the caller leaves the file alone.
"""

from __future__ import annotations

import dataclasses
import re
import xml.parsers.expat
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMPMETA = "adobe:ns:meta/"


@dataclass(frozen=True)
class Field:
    """One keyword array of XMP: namespace, property name, the prefix imgq declares, the array type, and the
    separator of its hierarchical values (None: plain keywords)."""

    uri: str
    name: str
    prefix: str
    array: str
    separator: str | None

    @property
    def qname(self) -> str:
        return f"{self.prefix}:{self.name}"


SUBJECT = Field("http://purl.org/dc/elements/1.1/", "subject", "dc", "Bag", None)
HIERARCHICAL = Field("http://ns.adobe.com/lightroom/1.0/", "hierarchicalSubject", "lr", "Bag", "|")
TAGS_LIST = Field("http://www.digikam.org/ns/1.0/", "TagsList", "digiKam", "Seq", "/")
ADDED = Field("http://ns.imgq.invalid/xmp/1.0/", "addedSubjects", "imgq", "Bag", None)
# imgq's own record of the dc:subject keywords it added: re-tagging and --remove take away those, never a
# keyword the sidecar held before (a plain keyword carries no mark of who wrote it). The .invalid domain
# (RFC 2606) says the namespace is a name, not an address.
FIELDS = (SUBJECT, HIERARCHICAL, TAGS_LIST, ADDED)
_BY_NAME = {(f.uri, f.name): f for f in FIELDS}

NEW_SIDECAR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="imgq">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    '  <rdf:Description rdf:about=""\n'
    + "\n".join(f'    xmlns:{f.prefix}="{f.uri}"' for f in FIELDS) + ">\n"
    '  </rdf:Description>\n'
    ' </rdf:RDF>\n'
    '</x:xmpmeta>\n'
).encode()
# What a sidecar imgq creates looks like before its keywords are added (in the layout exiv2 gives darktable's).


class SidecarError(ValueError):
    """A sidecar that is not XMP imgq can edit safely (not well-formed, not UTF-8, a keyword field that is not an
    array); the file is to be left as it is."""


@dataclass
class _Item:
    text: str
    start: int
    end: int


@dataclass
class _Property:
    field: Field
    start: int
    end: int = 0
    array_end_tag: int | None = None  # where </rdf:Bag> starts; None for <rdf:Bag/>
    li_qname: str = "rdf:li"
    items: list[_Item] = dataclasses.field(default_factory=list)


@dataclass
class _Description:
    start: int
    about: str
    rdf_prefix: str
    scope: dict[str, str]
    end_tag: int | None = None  # None: <rdf:Description .../> (no room for child elements)


@dataclass
class Packet:
    """A parsed sidecar: where its keyword arrays are, and a view of everything else (to check edits by)."""

    data: bytes
    properties: dict[Field, _Property]
    descriptions: list[_Description]
    rdf_end_tag: int
    rdf_prefix: str
    others: list[tuple]

    def keywords(self, which: Field) -> list[str]:
        prop = self.properties.get(which)
        return [item.text for item in prop.items] if prop else []


def parse(data: bytes) -> Packet:
    """Parse a sidecar's bytes. Raises SidecarError when they are not UTF-8, well-formed XMP (an rdf:RDF with
    rdf:Description elements) whose keyword fields are arrays."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SidecarError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    reader = _Reader(data)
    try:
        reader.parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise SidecarError(f"not well-formed XML: {exc}") from None
    if reader.rdf_end_tag is None:
        raise SidecarError("no rdf:RDF element: not an XMP packet")
    return Packet(data, reader.properties, reader.descriptions, reader.rdf_end_tag, reader.rdf_prefix, reader.others)


class _Reader:
    """expat callbacks that note byte offsets. expat reports an element's end at the start of its end tag, or,
    for an empty element (<a/>), just after the tag; the two are told apart by what precedes the offset."""

    def __init__(self, data: bytes):
        self.data = data
        self.parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
        self.parser.namespace_prefixes = True
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.text
        self.parser.StartNamespaceDeclHandler = self.declare
        self.parser.CommentHandler = lambda text: self.others.append(("comment", text))
        self.parser.ProcessingInstructionHandler = lambda target, text: self.others.append(("pi", target, text))
        self.stack: list[tuple[str, str, str, int, int]] = []  # uri, local, prefix, start offset, events at start
        self.scopes: list[dict[str, str]] = [{}]
        self.pending: dict[str, str] = {}
        self.texts: list[list[str]] = []
        self.events = 0
        self.properties: dict[Field, _Property] = {}
        self.descriptions: list[_Description] = []
        self.rdf_end_tag: int | None = None
        self.rdf_prefix = "rdf"
        self.others: list[tuple] = []
        self.current: _Property | None = None
        self.item_start = 0
        self.property_depth = 0
        self.description_depth = -1  # stack depth of the top-level rdf:Description being read

    def declare(self, prefix, uri):
        self.pending[prefix or ""] = uri

    def start(self, name, attrs):
        self.events += 1
        uri, local, prefix = _split(name)
        self.scopes.append({**self.scopes[-1], **self.pending})
        self.pending = {}
        offset = self.parser.CurrentByteIndex
        parent = self.stack[-1][:2] if self.stack else None
        self.stack.append((uri, local, prefix, offset, self.events))
        self.texts.append([])
        if (uri, local) == (RDF, "RDF"):
            self.rdf_prefix = prefix
        elif (uri, local) == (RDF, "Description") and parent == (RDF, "RDF"):
            self.start_description(offset, attrs, prefix)
        elif (uri, local) in _BY_NAME and len(self.stack) == self.description_depth + 1 \
                and parent == (RDF, "Description"):
            self.start_property(_BY_NAME[(uri, local)], offset)
        elif self.current is not None:
            self.start_in_property(uri, local, prefix, offset, parent)
        elif (uri, local) != (XMPMETA, "xmpmeta"):
            self.others.append(("element", tuple(s[:2] for s in self.stack), tuple(sorted(attrs.items()))))

    def start_description(self, offset, attrs, prefix):
        about = next((v for k, v in attrs.items() if _split(k)[:2] == (RDF, "about")), "")
        rest = tuple(sorted((k, v) for k, v in attrs.items() if _split(k)[:2] != (RDF, "about")))
        for key in attrs:
            uri, local = _split(key)[:2]
            if (uri, local) in _BY_NAME:
                raise SidecarError(f"{_BY_NAME[(uri, local)].qname} is an attribute, not an array")
        if rest:
            self.others.append(("description", rest))
        self.descriptions.append(_Description(offset, about, prefix, self.scopes[-1]))
        self.description_depth = len(self.stack)

    def start_property(self, which: Field, offset):
        if which in self.properties:
            raise SidecarError(f"{which.qname} appears twice")
        self.current = _Property(which, offset)
        self.property_depth = len(self.stack)
        self.properties[which] = self.current

    def start_in_property(self, uri, local, prefix, offset, parent):
        assert self.current is not None  # called only inside a keyword property
        depth = len(self.stack) - self.property_depth
        if depth == 1 and uri == RDF and local in ("Bag", "Seq", "Alt"):
            self.current.li_qname = f"{prefix}:li" if prefix else "li"  # new items take the file's rdf prefix
            return
        if depth == 2 and (uri, local) == (RDF, "li") and parent[0] == RDF:
            self.current.li_qname = f"{prefix}:li" if prefix else "li"
            self.item_start = offset
            return
        raise SidecarError(f"{self.current.field.qname} is not an array of text")

    def text(self, data):
        self.events += 1
        if self.texts:
            self.texts[-1].append(data)

    def end(self, name):
        uri, local, prefix, start, events_at_start = self.stack.pop()
        offset = self.parser.CurrentByteIndex
        empty = events_at_start == self.events and self.data[offset - 2:offset] == b"/>"
        end = offset if empty else self.data.index(b">", offset) + 1
        text = "".join(self.texts.pop())
        self.events += 1
        self.scopes.pop()
        if (uri, local) == (RDF, "RDF"):
            if empty:
                raise SidecarError("an empty rdf:RDF element")
            self.rdf_end_tag = offset
        elif (uri, local) == (RDF, "Description") and self.stack and self.stack[-1][:2] == (RDF, "RDF"):
            self.descriptions[-1].end_tag = None if empty else offset
        elif self.current is not None and (uri, local) == (self.current.field.uri, self.current.field.name) \
                and len(self.stack) == self.description_depth:
            if self.current.array_end_tag is None and not self.current.items and text.strip():
                raise SidecarError(f"{self.current.field.qname} is not an array of text")
            self.current.end = end
            self.current = None
        elif self.current is not None and uri == RDF and local in ("Bag", "Seq", "Alt"):
            self.current.array_end_tag = None if empty else offset
        elif self.current is not None:  # an rdf:li
            self.current.items.append(_Item(text, self.item_start, end))
        elif (uri, local) != (XMPMETA, "xmpmeta"):
            self.others.append(("text", text.strip()))


def _split(name: str) -> tuple[str, str, str]:
    parts = name.split(" ")
    if len(parts) == 1:
        return "", parts[0], ""
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def edit(packet: Packet, remove: dict[Field, set[str]], add: dict[Field, list[str]]) -> bytes:
    """The sidecar's bytes with the items in ``remove`` taken out of each field and those in ``add`` appended
    (a field created where missing, removed where it ends up empty). Raises SidecarError when the result would
    differ from the intended change anywhere."""
    expected = {f: [k for k in packet.keywords(f) if k not in remove.get(f, set())] + add.get(f, []) for f in FIELDS}
    splices: list[tuple[int, int, str]] = []  # (start, end, new text): replace data[start:end]
    new_properties: dict[int | None, list[str]] = {}  # description start (None: a new one) -> rendered fields
    for which in FIELDS:
        prop = packet.properties.get(which)
        gone = remove.get(which, set())
        added = add.get(which, [])
        if prop is None:
            if added:
                _new_property(packet, which, added, new_properties)
            continue
        if not added and not any(item.text in gone for item in prop.items):
            continue  # a field not being changed stays exactly as written, even an odd empty one
        kept = [item for item in prop.items if item.text not in gone]
        if not kept and (prop.array_end_tag is None or not added):
            if prop.items or added or prop.array_end_tag is None:
                splices.append(_line_range(packet.data, prop.start, prop.end))
            if added:
                _new_property(packet, which, added, new_properties)
            continue
        splices.extend(_line_range(packet.data, item.start, item.end) for item in prop.items if item.text in gone)
        if added:
            splices.append(_append_items(packet.data, prop, added))
    splices.extend(_property_insertions(packet, new_properties))
    data = _apply(packet.data, splices)
    _check(packet, data, expected)
    return data


def _new_property(packet: Packet, which: Field, values: list[str], pending: dict) -> None:
    open_descriptions = [d for d in packet.descriptions if d.end_tag is not None]
    target = open_descriptions[0] if open_descriptions else None
    pending.setdefault(target.start if target else None, []).append((which, values))


def _property_insertions(packet: Packet, pending: dict) -> list[tuple[int, int, str]]:
    splices = []
    for key, fields in pending.items():
        if key is not None:
            description = next(d for d in packet.descriptions if d.start == key)
            assert description.end_tag is not None  # pending only holds descriptions with room for elements
            point, indent = _insertion_point(packet.data, description.end_tag)
            rdf = description.rdf_prefix
            text = "".join(_render_property(f, v, indent + " ", rdf, description.scope) for f, v in fields)
        else:  # no rdf:Description that can hold elements: add one beside the others, about the same resource
            point, indent = _insertion_point(packet.data, packet.rdf_end_tag)
            rdf = packet.rdf_prefix
            about = packet.descriptions[0].about if packet.descriptions else ""
            tag = f"{rdf}:Description" if rdf else "Description"
            attr = f"{rdf}:about" if rdf else "about"
            text = (f"{indent} <{tag} {attr}={quoteattr(about)}>\n"
                    + "".join(_render_property(f, v, indent + "  ", rdf, {}) for f, v in fields)
                    + f"{indent} </{tag}>\n")
        if not packet.data[:point].endswith(b"\n"):  # the end tag shares its line with what precedes it
            text = "\n" + text
        splices.append((point, point, text))
    return splices


def _render_property(which: Field, values: list[str], indent: str, rdf: str, scope: dict[str, str]) -> str:
    declare = "" if scope.get(which.prefix) == which.uri else f' xmlns:{which.prefix}="{which.uri}"'
    r = f"{rdf}:" if rdf else ""
    items = "".join(f"{indent}  <{r}li>{escape(v)}</{r}li>\n" for v in values)
    return (f"{indent}<{which.qname}{declare}>\n{indent} <{r}{which.array}>\n{items}"
            f"{indent} </{r}{which.array}>\n{indent}</{which.qname}>\n")


def _append_items(data: bytes, prop: _Property, values: list[str]) -> tuple[int, int, str]:
    assert prop.array_end_tag is not None  # an empty <rdf:Bag/> is replaced, never appended to
    point, indent = _insertion_point(data, prop.array_end_tag)
    if prop.items:
        line_start = data.rfind(b"\n", 0, prop.items[-1].start) + 1
        before = data[line_start:prop.items[-1].start].decode()
        indent = before if not before.strip() else indent + " "
    else:
        indent += " "
    text = "".join(f"{indent}<{prop.li_qname}>{escape(v)}</{prop.li_qname}>\n" for v in values)
    if point == prop.array_end_tag and not data[:point].endswith(b"\n"):  # the end tag shares a line
        text = "\n" + text
    return point, point, text


def _insertion_point(data: bytes, end_tag: int) -> tuple[int, str]:
    """Where to insert lines before the end tag at ``end_tag``, and the end tag's indentation: the start of its
    line when only blanks precede it there, else the tag itself."""
    line_start = data.rfind(b"\n", 0, end_tag) + 1
    before = data[line_start:end_tag]
    if before.strip():
        return end_tag, ""
    return line_start, before.decode()


def _line_range(data: bytes, start: int, end: int) -> tuple[int, int, str]:
    """``data[start:end]`` to be cut, with its whole line when it is alone on it."""
    line_start = data.rfind(b"\n", 0, start) + 1
    match = re.match(rb"[ \t]*\r?\n", data[end:])
    if not data[line_start:start].strip() and match:
        return line_start, end + match.end(), ""
    return start, end, ""


def _apply(data: bytes, splices: list[tuple[int, int, str]]) -> bytes:
    newline = "\r\n" if b"\r\n" in data else "\n"  # a sidecar written on Windows keeps its line ends
    out, position = [], 0
    for start, end, text in sorted(splices, key=lambda s: (s[0], s[1])):
        if start < position:
            raise SidecarError("overlapping edits (a bug in imgq)")
        out += [data[position:start], text.replace("\n", newline).encode()]
        position = end
    return b"".join(out) + data[position:]


def _check(before: Packet, data: bytes, expected: dict[Field, list[str]]) -> None:
    try:
        after = parse(data)
    except SidecarError as exc:
        raise SidecarError(f"the edited sidecar would not parse ({exc}); left as it was") from None
    for which in FIELDS:
        if after.keywords(which) != expected[which]:
            raise SidecarError(f"the edit would give {which.qname} {after.keywords(which)} instead of "
                               f"{expected[which]}; left as it was")
    if after.others != before.others:
        raise SidecarError("the edit would change other properties; left as it was")


def new_sidecar(add: dict[Field, list[str]]) -> bytes:
    """The bytes of a new sidecar holding these keywords."""
    return edit(parse(NEW_SIDECAR), {}, add)
