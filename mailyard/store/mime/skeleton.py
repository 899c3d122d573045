"""Where a message's parts lie in its raw bytes, and the skeleton that stores them.

The stdlib email parser cannot say where a part's body sits in the raw bytes, so
this module walks the bytes itself, by the rules `email.feedparser` follows: a
header block ends at the first line that is neither a field nor a continuation;
a delimiter is `--boundary` at a line start, `--` after it for the close
delimiter, then blanks up to the line end (RFC 2046); a delimiter of any
enclosing multipart ends every part inside it; the line break before a
delimiter belongs to the delimiter. The header fields themselves are read by
the stdlib.

`split` cuts the leaf part bodies out as content-addressed blobs, so an
attachment sent to many users, or many times, is stored once; `join` puts them
back. The cut ranges are slices of the input, whatever it is, so
`join(split(raw)) == raw` holds by construction.
"""
from __future__ import annotations

import binascii
import email.policy
import quopri
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email import errors
from email.header import decode_header, make_header
from email.message import Message
from typing import TypeVar

from mailyard.proto.events_pb2 import Skeleton
from mailyard.store.blobs.base import blob_key

# Bounds on hostile structure, so that no message costs much more than a plain
# one of its size: deeper nesting stays one opaque part; past MAX_PARTS the rest
# of the message stays literal; a header block ends after MAX_HEADER_BYTES (the
# rest is body, as with Postfix's header_size_limit).
MAX_DEPTH = 32
MAX_PARTS = 10_000
MAX_HEADER_BYTES = 1024 * 1024
MAX_BOUNDARY = 256  # RFC 2046 allows 70; a longer one is hostile, not mail

_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")  # email.feedparser.headerRE
_TOKEN = re.compile(r"[^\s;()]+")
# A line and its end, as email.feedparser splits (universal newlines only).
_TEXT_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
# Where str.splitlines() breaks a line (CR and LF, and the rarer ones).
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")
# Surrogates other than the escapes of bytes 0x80-0xff (U+DC80-U+DCFF).
_NOT_AN_ESCAPE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")))

T = TypeVar("T")


@dataclass(slots=True)
class PartInfo:
    """A leaf part of a message, and where its still-encoded body lies in the raw bytes."""
    path: str                    # IMAP-style, "1", "2.1"; a non-multipart message's body is "1"
    content_type: str            # lower-case type/subtype, "text/plain" when absent or invalid
    filename: str | None         # Content-Disposition filename, else Content-Type name; decoded
    disposition: str | None      # lower-case: "inline", "attachment", ...
    transfer_encoding: str       # lower-case, "7bit" when absent
    charset: str | None          # lower-case
    body_range: tuple[int, int]  # [start, end) of the encoded body in the raw message
    blob_key: str | None = None  # set by split when the body was cut out


@dataclass(slots=True)
class Structure:
    headers: Message             # the top-level header fields, as sent (compat32)
    parts: list[PartInfo]        # the leaf parts, in order
    defects: list[str]           # "<path>: <what>", e.g. "message: CloseBoundaryNotFoundDefect"


def parse(raw: bytes) -> Structure:
    """The leaf parts of a message and their byte ranges. Multipart bodies are
    parsed with their boundaries; any other body (message/rfc822 included) is
    one leaf, so its bytes can be served as one attachment."""
    walker = _Walker(raw)
    headers, _ = walker.entity(0, (), "", "text/plain", 0)
    return Structure(headers, walker.parts, walker.defects)


def parse_or_none(raw: bytes) -> Structure | None:
    """parse(raw), or None where the walk raises (a bug in it must not lose
    mail: the message is then kept whole)."""
    try:
        return parse(raw)
    except Exception:
        return None


def split(raw: bytes, min_part_size: int = 1024, structure: Structure | None = None
          ) -> tuple[Skeleton, dict[str, bytes], list[PartInfo]]:
    """The skeleton of a message, the part bodies it refers to (key -> bytes),
    and its leaf parts. Bodies of at least min_part_size bytes are cut out;
    everything else stays literal. `structure` is parse(raw) when the caller
    has it already (the walk is most of the cost)."""
    if structure is None:
        structure = parse_or_none(raw)
    parts = structure.parts if structure is not None else []
    skeleton = Skeleton(size=len(raw))
    blobs: dict[str, bytes] = {}
    pos = 0
    for part in parts:
        start, end = part.body_range
        if end - start < max(min_part_size, 1) or start < pos:
            continue
        body = raw[start:end]
        part.blob_key = blob_key(body)
        blobs[part.blob_key] = body
        if start > pos:
            skeleton.segments.add(literal=raw[pos:start])
        skeleton.segments.add(blob_key=part.blob_key)
        pos = end
    if pos < len(raw):
        skeleton.segments.add(literal=raw[pos:])
    return skeleton, blobs, parts


def join(skeleton: Skeleton, get_blob: Mapping[str, bytes] | Callable[[str], bytes]) -> bytes:
    """The raw message a skeleton was split from."""
    fetch = get_blob.__getitem__ if isinstance(get_blob, Mapping) else get_blob
    chunks = []
    for segment in skeleton.segments:
        kind = segment.WhichOneof("kind")
        if kind == "literal":
            chunks.append(segment.literal)
        elif kind == "blob_key":
            chunks.append(fetch(segment.blob_key))
        else:
            raise ValueError("skeleton segment has neither a literal nor a blob key")
    raw = b"".join(chunks)
    if len(raw) != skeleton.size:
        raise ValueError(f"skeleton rebuilt {len(raw)} bytes, expected {skeleton.size}")
    return raw


def decode_part(encoded: bytes, transfer_encoding: str) -> bytes:
    """A part body without its transfer encoding. Base64 is read leniently:
    junk characters are skipped and each padded run (some encoders pad every
    line) is decoded on its own; any other encoding is returned as is."""
    encoding = transfer_encoding.strip().lower()
    if encoding == "base64":
        runs = encoded.translate(None, _NOT_BASE64).split(b"=")
        return b"".join(_base64_run(run) for run in runs if run)
    if encoding == "quoted-printable":
        return quopri.decodestring(encoded)
    return encoded


def _base64_run(run: bytes) -> bytes:
    run = run[:len(run) - (len(run) % 4 == 1)]  # a lone trailing character holds no whole byte
    return binascii.a2b_base64(run + b"=" * (-len(run) % 4))


def readable(value: str) -> str:
    """Parsed text made storable: 8-bit bytes (which the parser keeps as
    surrogate escapes) read as UTF-8, else Latin-1, and line breaks unfolded.
    Any other lone surrogate (the UTF-7 and UTF-16 decoders let them through)
    becomes U+FFFD: SQLite, protobuf and JSON refuse them, so one would fail
    the message's delivery on every retry. The rarer line breaks (a byte 0x85
    read as Latin-1 is one) become spaces, so the text stays one line."""
    data = _NOT_AN_ESCAPE.sub("\ufffd", value).encode("utf-8", "surrogateescape")
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        value = data.decode("latin-1")
    return _LINE_BREAKS.sub(" ", re.sub(r"\r\n|\r|\n", "", value))


def decoded_line(text: str) -> str:
    """Decoded header text made safe to show and to write back into a header.
    An RFC 2047 word or RFC 2231 parameter can decode to CR/LF, which would
    inject a header field into a reply, a bounce or the Sent copy that
    re-emits it; every line break becomes a space. Then as readable()."""
    return readable(_LINE_BREAKS.sub(" ", text))


def header_text(value: str) -> str:
    """A header value as sent, decoded leniently: RFC 2047 words where they
    decode; one line (see decoded_line)."""
    value = readable(value)
    if "=?" in value:  # only then can there be an encoded word (and most fields have none)
        try:
            value = str(make_header(decode_header(value)))
        except Exception:  # a broken encoded word: show it as sent
            pass
    return decoded_line(value)


def raw_field(headers: Message, name: str) -> str | None:
    """The first value of a field as sent, without interpreting it."""
    return next((v for k, v in headers.raw_items() if k.lower() == name), None)


class _Walker:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.parts: list[PartInfo] = []
        self.defects: list[str] = []

    def entity(self, pos: int, enclosing: tuple[bytes, ...], path: str, default_type: str,
               depth: int) -> tuple[Message, int]:
        """Parses the entity (header block and body) at pos, inside multiparts
        with the enclosing boundaries (innermost first). Returns its header
        fields and where it ends: at the next enclosing delimiter line, or at
        the end of the input."""
        header_end, body_start = self._header_block(pos, enclosing, path)
        headers = _header_fields(self.raw[pos:header_end])
        self.defects += [f"{path or 'message'}: {type(d).__name__}" for d in headers.defects]
        headers.set_default_type(default_type)
        content_type = _call(headers.get_content_type, default_type)
        if content_type.startswith("multipart/"):
            end = self._multipart(headers, body_start, enclosing, path, depth)
            if end is not None:
                return headers, end
        delimiter = self._next_delimiter(body_start, enclosing)
        end = body_end = delimiter.start if delimiter else len(self.raw)
        if enclosing:  # the line break before a delimiter belongs to the delimiter
            if self.raw.endswith(b"\r\n", body_start, end):
                body_end -= 2
            elif self.raw.endswith((b"\r", b"\n"), body_start, end):
                body_end -= 1
        self.parts.append(_part_info(headers, path or "1", content_type, (body_start, body_end)))
        return headers, end

    def _multipart(self, headers: Message, pos: int, enclosing: tuple[bytes, ...], path: str,
                   depth: int) -> int | None:
        """Parses a multipart body starting at pos; returns where it ends, or
        None when it has no parts to find (it is then one opaque leaf)."""
        where = path or "message"
        boundary = _boundary(headers)
        if boundary is None:
            self.defects.append(f"{where}: NoBoundaryInMultipartDefect")
            return None
        if len(boundary) > MAX_BOUNDARY:
            self.defects.append(f"{where}: boundary too long")
            return None
        if depth >= MAX_DEPTH:
            self.defects.append(f"{where}: multipart nested too deep")
            return None
        if _transfer_encoding(headers) not in ("7bit", "8bit", "binary"):
            self.defects.append(f"{where}: InvalidMultipartContentTransferEncodingDefect")
        scope = (boundary, *enclosing)
        delimiter = self._next_delimiter(pos, scope)
        if delimiter is None or delimiter.boundary != boundary or delimiter.close:
            self.defects.append(f"{where}: StartBoundaryNotFoundDefect")
            return None
        default_type = ("message/rfc822" if _call(headers.get_content_subtype, "") == "digest"
                        else "text/plain")
        n = 0
        while True:
            if len(self.parts) >= MAX_PARTS:
                self.defects.append(f"{where}: more than {MAX_PARTS} parts")
                return len(self.raw)
            pos = delimiter.end
            # Repeated delimiter lines enclose no part (as in email.feedparser).
            while repeated := _delimiter_at(self.raw, pos, (boundary,)):
                pos = repeated.end
            n += 1
            _, end = self.entity(pos, scope, f"{path}.{n}" if path else str(n),
                                 default_type, depth + 1)
            delimiter = _delimiter_at(self.raw, end, scope)
            if delimiter is None or delimiter.boundary != boundary:
                self.defects.append(f"{where}: CloseBoundaryNotFoundDefect")
                return end
            if delimiter.close:
                break
        epilogue_end = self._next_delimiter(delimiter.end, enclosing)
        return epilogue_end.start if epilogue_end else len(self.raw)

    def _header_block(self, pos: int, enclosing: tuple[bytes, ...], path: str) -> tuple[int, int]:
        """Where the header block starting at pos ends, and where the body starts."""
        raw = self.raw
        limit = pos + MAX_HEADER_BYTES
        while pos < len(raw):
            if enclosing and _delimiter_at(raw, pos, enclosing):
                break
            if pos >= limit:
                self.defects.append(f"{path or 'message'}: header block too long")
                break
            eol = _EOL.search(raw, pos)
            if eol and eol.start() == pos:  # the empty line that ends the block
                return pos, eol.end()
            if not _FIELD_LINE.match(raw, pos):
                self.defects.append(f"{path or 'message'}: MissingHeaderBodySeparatorDefect")
                break
            pos = eol.end() if eol else len(raw)
        return pos, pos

    def _next_delimiter(self, pos: int, boundaries: tuple[bytes, ...]) -> _Delimiter | None:
        """The first delimiter line of any of the boundaries at or after pos, a line start."""
        if not boundaries:
            return None
        raw = self.raw
        needles = [b"--" + boundary for boundary in boundaries]
        # Each needle's next occurrence, found again only once passed, so a
        # body full of one boundary's near-misses stays one pass per needle.
        hits = [raw.find(needle, pos) for needle in needles]
        while True:
            found = [hit for hit in hits if hit >= 0]
            if not found:
                return None
            start = min(found)
            if start == pos or raw[start - 1] in b"\r\n":
                if delimiter := _delimiter_at(raw, start, boundaries):
                    return delimiter
            pos = start + 1
            hits = [raw.find(needle, pos) if 0 <= hit < pos else hit
                    for needle, hit in zip(needles, hits)]


def _header_fields(block: bytes) -> Message:
    """What BytesHeaderParser(policy=compat32).parsebytes(block) returns, for a
    block of field and continuation lines only (the walk has checked each
    line start against the parser's own pattern): the same fields, unix-from,
    defects and payload, by the same rules as email.feedparser, without the
    feed machinery that cost a fifth of the walk."""
    policy = email.policy.compat32
    headers = Message(policy=policy)
    lines = _TEXT_LINE.findall(block.decode("ascii", "surrogateescape"))
    name, value, payload = "", [], ""
    for n, line in enumerate(lines):
        if line[0] in " \t":  # a continuation
            if not name:
                policy.handle_defect(headers, errors.FirstHeaderLineIsContinuationDefect(line))
            else:
                value.append(line)
            continue
        if name:
            headers.set_raw(*policy.header_source_parse(value))
            name, value = "", []
        if line.startswith("From "):
            if n == 0:
                headers.set_unixfrom(line.rstrip("\r\n"))
            elif n == len(lines) - 1:  # the body's first line, as the parser takes it
                payload = line
                break
            else:
                headers.defects.append(errors.MisplacedEnvelopeHeaderDefect(line))
            continue
        colon = line.find(":")
        if colon == 0:
            headers.defects.append(errors.InvalidHeaderDefect("Missing header name."))
            continue
        name, value = line[:colon], [line]
    if name:
        headers.set_raw(*policy.header_source_parse(value))
    headers.set_payload(payload)
    return headers


@dataclass(slots=True)
class _Delimiter:
    start: int
    end: int           # after the line break (or at the end of the input)
    boundary: bytes
    close: bool        # "--boundary--": the multipart ends


def _delimiter_at(raw: bytes, pos: int, boundaries: tuple[bytes, ...]) -> _Delimiter | None:
    """The delimiter line of one of the boundaries starting at pos, the first
    listed winning a tie: "--", the boundary, "--" for a close delimiter, blanks,
    then a line break or the end of the input. Plain byte comparisons: a
    regular expression per boundary cost more to compile than the walk itself."""
    if not raw.startswith(b"--", pos):
        return None
    for boundary in boundaries:
        if not raw.startswith(boundary, pos + 2):
            continue
        after = pos + 2 + len(boundary)
        for close in (True, False):
            if close and not raw.startswith(b"--", after):
                continue
            end = after + 2 if close else after
            while end < len(raw) and raw[end] in b" \t":
                end += 1
            if end == len(raw):
                return _Delimiter(pos, end, boundary, close)
            if raw[end] == 0x0D:  # CR, or CRLF
                return _Delimiter(pos, end + (2 if raw.startswith(b"\n", end + 1) else 1),
                                  boundary, close)
            if raw[end] == 0x0A:
                return _Delimiter(pos, end + 1, boundary, close)
    return None


def _part_info(headers: Message, path: str, content_type: str,
               body_range: tuple[int, int]) -> PartInfo:
    disposition = _call(headers.get_content_disposition, None)
    charset = _call(headers.get_content_charset, None)
    return PartInfo(
        path=path, content_type=readable(content_type), filename=_filename(headers),
        disposition=disposition and readable(disposition),
        transfer_encoding=readable(_transfer_encoding(headers)),
        charset=charset and readable(charset), body_range=body_range)


def _boundary(headers: Message) -> bytes | None:
    boundary = _call(headers.get_boundary, None)
    if not boundary:
        return None
    try:
        return boundary.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return None


def _transfer_encoding(headers: Message) -> str:
    token = _TOKEN.search(raw_field(headers, "content-transfer-encoding") or "")
    return token[0].lower() if token else "7bit"


def _filename(headers: Message) -> str | None:
    """RFC 2231 and RFC 2047 decoded by policy.default; read as sent where it
    raises on a broken field."""
    try:
        for field, param in (("content-disposition", "filename"), ("content-type", "name")):
            value = raw_field(headers, field)
            # The header registry's parse is the costliest step of the walk;
            # a field naming no "name" parameter (most) has no file name.
            if value is not None and "name" in value.lower():
                name = email.policy.default.header_fetch_parse(field, value).params.get(param)
                name = decoded_line(name or "").strip()
                if name:
                    return name
        return None
    except Exception:
        name = _call(headers.get_filename, None)
        if name is None:
            return None
        return header_text(name).strip() or None


def _call(method: Callable[[], T], default: T) -> T:
    """A compat32 header method; they rarely raise, but mail is hostile."""
    try:
        return method()
    except Exception:
        return default
