"""Zip archives read in one pass, then held to their central directory.

Loaders (``torch.load``, ``zipfile``, ``np.load``) find members through the
central directory at the end; a stream sees local headers first. So every
member is scanned as it streams past, and at the end the central directory
must describe exactly those members: same names, same offsets, same sizes and
methods, nothing between them, nothing after the end record. Anything else (a
member hidden inside another, a local name that differs from the directory's,
junk between members) is refused, because a loader would read something the
stream never showed as a member.

Members written with a data descriptor (flag bit 3: ``torch.save``,
``torch.jit.save``, ``zipfile`` on a pipe) carry no sizes in their local
header: a deflated one ends where its deflate stream ends, a stored one where
a descriptor signature is followed by the size actually seen.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from .reader import BLOCK, Decompressed, Limited, Reader, Unscannable

LOCAL = b"PK\x03\x04"
CENTRAL = b"PK\x01\x02"
END = b"PK\x05\x06"
END64 = b"PK\x06\x06"
LOCATOR64 = b"PK\x06\x07"
DESCRIPTOR = b"PK\x07\x08"
_METHODS = {0: None, 8: "deflate", 12: "bz2"}


@attrs.define
class _Member:
    offset: int
    name: bytes
    method: int
    crc: int
    csize: int
    usize: int


#: Scans one member's (decompressed) bytes; the caller drains what it leaves.
MemberScanner = Callable[[Reader, str], None]


def scan_zip(r: Reader, where: str, scan_member: MemberScanner, expand_limit: int | None = None) -> list[str]:
    """Walk the archive ``r`` holds (from its current position to its end); returns the member names."""
    base = r.position
    members: dict[int, _Member] = {}
    while True:
        offset = r.position - base
        sig = r.read(4)
        if sig in (CENTRAL, END, END64):
            r.unread(sig)
            break
        if sig != LOCAL:
            raise Unscannable(
                f"{where}: bytes at offset {offset} are neither a zip member nor the central directory "
                "(data between members, which a loader may read)"
            )
        members[offset] = _read_member(r, where, offset, scan_member, expand_limit)
    names = _reconcile(r, where, base, members)
    if r.read(1):
        raise Unscannable(f"{where}: bytes after the end of the zip archive")
    return names


def _read_member(r: Reader, where: str, offset: int, scan_member: MemberScanner, expand_limit: int | None) -> _Member:
    fixed = r.read_exact(26, "zip local header")
    _ver, flags, method, _t, _d, crc, csize, usize, nlen, elen = struct.unpack("<HHHHHIIIHH", fixed)
    raw_name = r.read_exact(nlen, "zip member name")
    extra = r.read_exact(elen, "zip extra field")
    name = _decode(raw_name, flags)
    if flags & 0x1:
        raise Unscannable(f"{where}: member {name!r} is encrypted")
    if method not in _METHODS:
        raise Unscannable(f"{where}: member {name!r} uses compression method {method}, which the scanner cannot read")
    usize, csize, _ = _zip64(extra, usize, csize, None)
    start = r.position
    described = bool(flags & 0x8)
    raw: Reader
    if not described:
        raw = Limited(r, csize)
    elif method == 0:
        raw = _Delimited(r, where, name)
    else:
        raw = r  # a deflate or bz2 stream says where it ends
    kind = _METHODS[method]
    content = Decompressed(raw, kind, expand_limit) if kind else raw
    scan_member(content, name)
    content.drain()
    if raw is not r and raw is not content:
        raw.drain()
    seen_c, seen_u = r.position - start, content.position
    if described:
        crc = _descriptor(r, where, name, seen_c, seen_u)
    elif (csize, usize if kind else csize) != (seen_c, seen_u):
        raise Unscannable(f"{where}: member {name!r} holds {seen_u} bytes, its header says {usize}")
    return _Member(offset, raw_name, method, crc, seen_c, seen_u)


def _descriptor(r: Reader, where: str, name: str, csize: int, usize: int) -> int:
    if r.peek(4) == DESCRIPTOR:
        r.skip(4)
    body = r.read_exact(12, "zip data descriptor")
    crc, c32, u32 = struct.unpack("<III", body)
    if (c32, u32) == (csize, usize):
        return int(crc)
    body += r.read_exact(8, "zip64 data descriptor")
    crc, c64, u64 = struct.unpack("<IQQ", body)
    if (c64, u64) == (csize, usize):
        return int(crc)
    raise Unscannable(f"{where}: the data descriptor of member {name!r} does not match its {csize} bytes")


class _Delimited(Reader):
    """A stored member of unknown size: up to the descriptor that records the size actually read."""

    _KEEP = 24  # signature + crc + two 8-byte sizes: what must be seen to decide on a signature

    def __init__(self, parent: Reader, where: str, name: str) -> None:
        super().__init__()
        self._parent = parent
        self._where, self._name = where, name
        #: Bytes taken from the parent, not yet handed out: they may start the signature.
        self._carry = b""
        #: Bytes of the member handed out (or passed over) so far.
        self._given = 0
        self._found = False

    def _next_block(self) -> bytes | None:
        while (piece := self._step(deliver=True)) is not None:
            if piece:
                return piece  # type: ignore[return-value]  # bytes, since delivered
        return None

    def drain(self) -> int:
        # Passing over a tensor needs only the search, not copies of its bytes.
        done = len(self._block) - self._pos
        self._pos = len(self._block)
        while (step := self._step(deliver=False)) is not None:
            done += step if isinstance(step, int) else len(step)
        self.position += done
        return done

    def _step(self, deliver: bool) -> bytes | int | None:
        """The member's next bytes (or how many, when not ``deliver``ed); None once the descriptor is reached."""
        while not self._found:
            more = self._parent.read_some(BLOCK)
            final = not more
            if not final and len(more) < self._KEEP:
                self._carry += more  # a block's last few bytes: too few to decide on
                continue
            carry = self._carry
            at = self._match(carry + more[: self._KEEP], self._given, final, stop=len(carry)) if carry else None
            if at is not None:  # the signature starts in the carry
                self._parent.unread(more)
                self._parent.unread(carry[at:])
                return self._end(carry[:at], deliver)
            at = self._match(more, self._given + len(carry), final, stop=len(more))
            if at is not None:
                self._parent.unread(more[at:])
                return self._end(carry + more[:at] if deliver else len(carry) + at, deliver)
            if final:
                raise Unscannable(f"{self._where}: member {self._name!r} has no data descriptor where it should end")
            cut = len(more) - (self._KEEP - 1)
            self._carry = more[cut:]
            self._given += len(carry) + cut
            return carry + more[:cut] if deliver else len(carry) + cut
        return None

    def _end(self, piece: bytes | int, deliver: bool) -> bytes | int:
        self._found = True
        self._carry = b""
        self._given += piece if isinstance(piece, int) else len(piece)
        return piece

    @classmethod
    def _match(cls, buf: bytes, base: int, final: bool, stop: int) -> int | None:
        """The first signature starting before ``stop`` whose recorded size is ``base`` + its offset."""
        at = _find_descriptor(buf, 0)
        while 0 <= at < stop:
            if len(buf) - at < cls._KEEP and not final:
                return None  # its sizes have not arrived: decided with the next block
            c32 = struct.unpack_from("<I", buf, at + 8)[0] if len(buf) >= at + 16 else -1
            c64 = struct.unpack_from("<Q", buf, at + 8)[0] if len(buf) >= at + 24 else -1
            if base + at in (c32, c64):
                return at
            at = _find_descriptor(buf, at + 1)
        return None


def _find_descriptor(buf: bytes, start: int) -> int:
    """Where the next descriptor signature starts, or -1.

    Most blocks of stored tensor data hold none, and CPython's reverse search
    proves that about twice as fast as its forward one: this search is what
    bounds the scan of a checkpoint's tensors.
    """
    if buf.rfind(DESCRIPTOR, start) < 0:
        return -1
    return buf.find(DESCRIPTOR, start)


def _reconcile(r: Reader, where: str, base: int, members: dict[int, _Member]) -> list[str]:
    cd_start = r.position - base
    entries: list[_Member] = []
    while r.peek(4) == CENTRAL:
        r.skip(4)
        fixed = r.read_exact(42, "zip central directory entry")
        (_vm, _vn, _flags, method, _t, _d, crc, csize, usize, nlen, elen, clen, _disk, _ia, _ea, off) = struct.unpack(
            "<HHHHHHIIIHHHHHII", fixed
        )
        name = r.read_exact(nlen, "zip central directory name")
        extra = r.read_exact(elen, "zip central directory extra field")
        r.read_exact(clen, "zip member comment")
        usize, csize, off = _zip64(extra, usize, csize, off)
        entries.append(_Member(off or 0, name, method, crc, csize, usize))
    cd_size = r.position - base - cd_start
    total, size, offset = _end_records(r, where)
    if (total, size, offset) != (len(entries), cd_size, cd_start):
        raise Unscannable(
            f"{where}: the zip end record describes {total} members at offset {offset}; "
            f"the archive has {len(entries)} at offset {cd_start}"
        )
    names: list[str] = []
    seen: set[bytes] = set()
    for entry in entries:
        local = members.get(entry.offset)
        shown = _decode(entry.name, 0x800)
        if entry.name in seen:
            raise Unscannable(f"{where}: member {shown!r} appears twice in the central directory")
        seen.add(entry.name)
        if local is None:
            raise Unscannable(
                f"{where}: the central directory places member {shown!r} at offset {entry.offset}, "
                "where no member starts (hidden inside another member?)"
            )
        if local.name != entry.name:
            raise Unscannable(
                f"{where}: the member at offset {entry.offset} is {_decode(local.name, 0x800)!r} in its local header "
                f"but {shown!r} in the central directory"
            )
        if (local.method, local.crc, local.csize, local.usize) != (entry.method, entry.crc, entry.csize, entry.usize):
            raise Unscannable(f"{where}: member {shown!r} differs between its local header and the central directory")
        names.append(shown)
    if len(entries) != len(members):
        raise Unscannable(f"{where}: {len(members) - len(entries)} member(s) are missing from the central directory")
    return names


def _end_records(r: Reader, where: str) -> tuple[int, int, int]:
    z64: tuple[int, int, int] | None = None
    if r.peek(4) == END64:
        r.skip(4)
        length = struct.unpack("<Q", r.read_exact(8, "zip64 end record"))[0]
        body = r.read_exact(min(length, 1 << 20), "zip64 end record")
        if len(body) < 44 or length > 1 << 20:
            raise Unscannable(f"{where}: malformed zip64 end record")
        _vm, _vn, _disk, _cd_disk, _n_disk, n_total, cd_size, cd_off = struct.unpack("<HHIIQQQQ", body[:44])
        z64 = (n_total, cd_size, cd_off)
        if r.read(4) != LOCATOR64:
            raise Unscannable(f"{where}: zip64 end record without its locator")
        r.read_exact(16, "zip64 locator")
    if r.read(4) != END:
        raise Unscannable(f"{where}: no zip end record after the central directory")
    fields = r.read_exact(18, "end record")
    _disk, _cd_disk, _n_disk, n_total, cd_size, cd_off, clen = struct.unpack("<HHHHIIH", fields)
    comment = r.read_exact(clen, "zip comment")
    if END in END[1:] + fields + comment:
        # zipfile, numpy and torch look for the end record from the end of the file backwards: they would
        # read this second one, and the archive it describes, instead of the one the stream showed.
        raise Unscannable(f"{where}: a second zip end record inside the archive's comment, which loaders read instead")
    if z64 is not None:
        n_total = z64[0] if n_total == 0xFFFF else n_total
        cd_size = z64[1] if cd_size == 0xFFFFFFFF else cd_size
        cd_off = z64[2] if cd_off == 0xFFFFFFFF else cd_off
        if (n_total, cd_size, cd_off) != z64:
            raise Unscannable(f"{where}: the zip and zip64 end records disagree")
    return n_total, cd_size, cd_off


def _zip64(extra: bytes, usize: int, csize: int, offset: int | None) -> tuple[int, int, int | None]:
    """Sizes (and offset) from the zip64 extra field, where the 32-bit fields are 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[at : at + 4])
        if tag == 0x0001:
            body = extra[at + 4 : at + 4 + length]
            values = [struct.unpack("<Q", body[i : i + 8])[0] for i in range(0, len(body) - 7, 8)]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        at += 4 + length
    return usize, csize, offset


def _decode(name: bytes, flags: int) -> str:
    return name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
