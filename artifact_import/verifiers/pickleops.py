"""Walk one pickle's opcodes the way ``pickle`` reads them, without running any of them.

``pickle.load`` executes each opcode as it reads it, so what matters is what a
loader would have *done* before it stopped, not whether ``pickletools`` can
parse the stream. The walker therefore reads every argument exactly as the
unpickler does (``int(x, 0)`` integers, escape-decoded strings, FRAME markers
anywhere, every opcode of protocols 0 to 5) and keeps a small symbolic stack
and memo, so a ``STACK_GLOBAL`` built from memoised strings is still named.

It records every import (``GLOBAL``, ``INST``, ``STACK_GLOBAL``, ``EXT*``): the
only way a pickle runs code is through a callable it imports. A persistent
load hands the loader's own ``persistent_load`` a value (torch looks up a
storage; ``pickle.load`` raises), which runs nothing of the file's choosing.
A stream that stops being a pickle *before* any import could not have run
anything; one that stops after is refused by the caller.

Its memory is bounded whatever the input: live objects (every stack level and
the memo together), and the bytes of the small values it keeps to name imports.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Any

import attrs

from .reader import Bound, Reader

#: Strings and bytes longer than this are skipped, not kept: no module or dtype name is that long.
KEEP = 4096
#: A text-protocol argument (INT, STRING, GLOBAL...) longer than this is refused, not read into memory.
MAX_LINE = 1 << 20
#: Containers longer than this stop being tracked element by element.
TRACK = 256
#: A pickle with more live objects than this, all stack levels and the memo together, is refused.
MAX_OBJECTS = 1_000_000
#: Bytes of small values (strings, tracked container slots) kept per pickle; past it values become opaque.
MAX_KEPT = 64 << 20
#: MARKs nest as deep as the data's containers do; a pickle nesting deeper than this is refused.
MAX_MARKS = 100_000
#: Different names one pickle may import (a real checkpoint imports a few dozen).
MAX_IMPORTS = 4096
HIGHEST_PROTOCOL = 5


class PickleError(Exception):
    """The stream is not a (whole) pickle; ``pickle.load`` would raise at the same point."""


class _LongLine(Exception):
    """A text argument longer than :data:`MAX_LINE`: passed over, its first bytes in ``args[0]``."""


@attrs.frozen
class Global:
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@attrs.define(eq=False)
class Call:
    """What calling ``func`` (REDUCE, NEWOBJ, OBJ, INST) produced; ``state`` is what BUILD gave it."""

    func: Any
    args: Any
    state: Any = None


class _Opaque:
    """A value the walker does not follow (a large string, a container past TRACK, a buffer)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<opaque>"


OPAQUE = _Opaque()


@attrs.define(eq=False)
class Container:
    """A list, dict or set; ``items`` is None once it grew past what is tracked."""

    kind: str
    items: Any


@attrs.define
class Walk:
    """What one pickle would do when loaded."""

    #: Every name imported, once each, in the order first met.
    imports: list[str] = attrs.field(factory=list)
    #: Reached an import: something that could have run code.
    effects: bool = False
    value: Any = None
    #: Where and why the stream stopped being a pickle (``pickle.load`` would raise there); None after STOP.
    error: str | None = None


#: Called after BUILD with the object built; returns what the unpickler puts on the stack instead
#: (joblib reads array bytes that follow a wrapper object), or None to leave it.
AfterBuild = Callable[[Any, "Walk"], Any]


def walk(reader: Reader, *, after_build: AfterBuild | None = None) -> Walk:
    """Read one pickle up to and including STOP.

    Where ``pickle.load`` would fail (a bad opcode, a truncation), the walk so
    far comes back with ``error`` set; ``Unscannable`` is raised where the
    walker's own bounds are reached, which ``pickle`` does not have.
    """
    w = Walk()
    try:
        _Walker(reader, w, after_build).run()
    except (PickleError, EOFError) as exc:
        w.error = f"{exc} at byte {reader.position}"
    return w


class _Walker:
    def __init__(self, reader: Reader, w: Walk, after_build: AfterBuild | None) -> None:
        self.r = reader
        self.w = w
        self.after_build = after_build
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        #: Objects on the stack levels below the current one (the current one is ``len(self.stack)``).
        self.below = 0
        self.kept = 0
        self.seen: set[str] = set()

    # -- arguments, read as the unpickler reads them -------------------------------------------

    def _n(self, n: int, what: str) -> bytes:
        return self.r.read_exact(n, f"the pickle's {what}")

    def _line(self) -> bytes:
        line, whole = self.r.readline(MAX_LINE)
        if not line:
            raise EOFError(f"truncated pickle at byte {self.r.position}")
        if not whole:
            raise _LongLine(line)
        # As the unpicklers do: the last byte goes whether or not it is the newline.
        return line[:-1]

    def _blob(self, size: int, mode: str) -> Any:
        if size < 0:
            raise PickleError("negative byte count")
        if size > KEEP or not self.keep(size + 64):
            if self.r.skip(size) < size:
                raise EOFError(f"truncated pickle: {size}-byte string at byte {self.r.position}")
            return OPAQUE
        data = self._n(size, "string")
        if mode == "utf-8":
            try:
                return data.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise PickleError("invalid UTF-8 in a unicode string") from None
        return _loader_text(data) if mode == "loader" else data

    def _int(self, fmt: str, size: int) -> int:
        return int(struct.unpack(fmt, self._n(size, "integer"))[0])

    # -- the stack -------------------------------------------------------------------------------

    def keep(self, cost: int) -> bool:
        """Whether ``cost`` more bytes of small values may be kept; once not, values become opaque."""
        if self.kept + cost > MAX_KEPT:
            self.kept = MAX_KEPT + 1
            return False
        self.kept += cost
        return True

    def live(self) -> int:
        return self.below + len(self.stack) + len(self.memo)

    def push(self, value: Any) -> None:
        if self.live() >= MAX_OBJECTS:
            raise Bound(f"more than {MAX_OBJECTS} live objects in one pickle (the scanner's object bound)")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise PickleError("unpickling stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise PickleError("unpickling stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise PickleError("MARK expected")
        items, self.stack = self.stack, self.metastack.pop()
        self.below -= len(self.stack)
        return items

    def imported(self, module: Any, name: Any) -> Global:
        if not isinstance(module, str) or not isinstance(name, str):
            raise PickleError("STACK_GLOBAL requires str")
        if not module or not all(part.isidentifier() for part in module.split(".")):
            # No importable module has such a name: find_class fails before anything runs. (This is
            # what keeps a text file that starts with "c" or "i" from reading as a pickle.)
            raise PickleError(f"No module named {module[:60]!r}")
        g = Global(module, name)
        self.record(str(g))
        return g

    def record(self, name: str) -> None:
        self.w.effects = True
        if name not in self.seen:
            if len(self.seen) >= MAX_IMPORTS:
                raise Bound(f"a pickle importing more than {MAX_IMPORTS} different names (the scanner's bound)")
            self.seen.add(name)
            self.w.imports.append(name)

    def memo_put(self, index: int) -> None:
        if index < 0:
            raise PickleError("negative PUT argument")
        if index not in self.memo and self.live() >= MAX_OBJECTS:
            raise Bound(f"more than {MAX_OBJECTS} live objects in one pickle (the scanner's object bound)")
        self.memo[index] = self.top()

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise PickleError(f"memo value not found at index {index}")
        self.push(self.memo[index])

    # -- the opcodes -----------------------------------------------------------------------------

    def run(self) -> None:
        table = _OPS
        while True:
            code = self.r.read(1)
            if not code:
                raise EOFError(f"truncated pickle: no STOP before byte {self.r.position}")
            op = table.get(code[0])
            if op is None:
                raise PickleError(f"invalid load key {code!r} at byte {self.r.position - 1}")
            try:
                if op(self) is _STOP:
                    return
            except _LongLine as long:
                self._long_line(code[0], long.args[0])

    def _long_line(self, code: int, start: bytes) -> None:
        """What the unpickler does with a text argument too long to keep (its first bytes: ``start``)."""
        if code in _NAME_OPS:
            # No importable module is named by a megabyte: find_class fails, the unpickler stops here.
            raise PickleError(f"No module named {start[:60]!r}...")
        if code in _MEMO_OPS:
            if not start.strip().isdigit():
                raise PickleError(f"invalid memo index {start[:40]!r}...")
            raise Bound(f"a memo index of more than {MAX_LINE} digits (the scanner's bound)")
        # A persistent id, a number or a string: a value the walker need not know.
        self.push(OPAQUE)


_STOP = object()


def _text_int(line: bytes) -> int:
    try:
        return int(line, 0)
    except ValueError:
        raise PickleError(f"invalid literal for int(): {line[:40]!r}") from None


def _op_int(p: _Walker) -> None:
    line = p._line()
    if line == b"00":
        p.push(False)
    elif line == b"01":
        p.push(True)
    else:
        # The C unpickler reads INT with strtol (a leading 0 means octal) before falling back to int(x, 0).
        value = _strtol(line)
        p.push(value if value is not None else _text_int(line))


def _strtol(line: bytes) -> int | None:
    text = line.lstrip(b" \t\n\v\f\r")
    sign = -1 if text[:1] == b"-" else 1
    text = text[1:] if text[:1] in (b"-", b"+") else text
    for prefix, base in ((b"0x", 16), (b"0X", 16), (b"0", 8)):
        if text.startswith(prefix) and len(text) > len(prefix) - (base == 8):
            body = text[len(prefix) :] if base == 16 else text
            break
    else:
        body, base = text, 10
    try:
        return sign * int(body, base) if body and body.isalnum() else None
    except ValueError:
        return None


def _op_long(p: _Walker) -> None:
    line = p._line()
    if line.endswith(b"L"):
        line = line[:-1]
    p.push(_text_int(line))


def _op_float(p: _Walker) -> None:
    line = p._line()
    try:
        p.push(float(line))
    except ValueError:
        raise PickleError(f"could not convert string to float: {line[:40]!r}") from None


def _op_string(p: _Walker) -> None:
    data = p._line()
    if len(data) < 2 or data[0] != data[-1] or data[0] not in b"\"'":
        raise PickleError("the STRING opcode argument must be quoted")
    try:
        raw = codecs.escape_decode(data[1:-1])[0]
    except ValueError as exc:
        raise PickleError(f"bad escape in STRING: {exc}") from None
    p.push(_loader_text(raw))


def _loader_text(raw: bytes) -> str:
    # Loaders pick the encoding (ASCII by default, UTF-8 in torch, latin-1 in numpy): a name that is
    # anything but ASCII is refused by the allow-list whichever they pick.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _op_unicode(p: _Walker) -> None:
    line = p._line()
    try:
        p.push(str(line, "raw-unicode-escape"))
    except UnicodeDecodeError as exc:
        raise PickleError(f"bad UNICODE argument: {exc}") from None


def _op_global(p: _Walker) -> None:
    module, name = p._line(), p._line()
    try:
        p.push(p.imported(module.decode("utf-8"), name.decode("utf-8")))
    except UnicodeDecodeError:
        raise PickleError("GLOBAL names are not UTF-8") from None


def _op_inst(p: _Walker) -> None:
    module, name = p._line(), p._line()
    try:
        cls = p.imported(module.decode("ascii"), name.decode("ascii"))
    except UnicodeDecodeError:
        raise PickleError("INST names are not ASCII") from None
    args = p.pop_mark()
    p.push(Call(cls, tuple(args)))


def _op_stack_global(p: _Walker) -> None:
    name = p.pop()
    module = p.pop()
    if module is OPAQUE or name is OPAQUE or isinstance(module, Call) or isinstance(name, Call):
        if p.kept > MAX_KEPT:
            raise Bound(f"a pickle keeping more than {MAX_KEPT} bytes of names and small values (the scanner's bound)")
        # Names computed at load time: nothing here says what would be imported.
        p.record("<STACK_GLOBAL of computed names>")
        p.push(OPAQUE)
        return
    p.push(p.imported(module, name))


def _op_ext(size: int, fmt: str) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        code = p._int(fmt, size)
        if code <= 0:
            raise PickleError("EXT specifies code <= 0")
        if p.proto < 2:
            # Python registers no extension codes, so outside a protocol 2+ pickle (random bytes that begin
            # with this opcode) the unpickler fails here. In a real pickle, a library may have registered
            # the code: an import nobody can name here.
            raise PickleError(f"unregistered extension code {code}")
        p.record(f"<extension code {code}>")
        p.push(OPAQUE)

    return op


def _op_persid(p: _Walker) -> None:
    line = p._line()
    try:
        line.decode("ascii")
    except UnicodeDecodeError:
        raise PickleError("persistent IDs in protocol 0 must be ASCII strings") from None
    p.push(OPAQUE)


def _op_binpersid(p: _Walker) -> None:
    p.pop()
    p.push(OPAQUE)


def _op_reduce(p: _Walker) -> None:
    args = p.pop()
    func = p.pop()
    p.push(Call(func, args))


def _op_build(p: _Walker) -> None:
    state = p.pop()
    inst = p.top()
    if isinstance(inst, Call):
        inst.state = state
    if p.after_build is not None:
        replaced = p.after_build(inst, p.w)
        if replaced is not None:
            p.stack[-1] = replaced


def _op_newobj(p: _Walker) -> None:
    args = p.pop()
    cls = p.pop()
    p.push(Call(cls, args))


def _op_newobj_ex(p: _Walker) -> None:
    p.pop()  # kwargs
    args = p.pop()
    cls = p.pop()
    p.push(Call(cls, args))


def _op_obj(p: _Walker) -> None:
    args = p.pop_mark()
    if not args:
        raise PickleError("OBJ needs a class")
    p.push(Call(args[0], tuple(args[1:])))


def _op_mark(p: _Walker) -> None:
    if len(p.metastack) >= MAX_MARKS:
        raise Bound(f"more than {MAX_MARKS} nested MARKs (the scanner's bound)")
    p.below += len(p.stack)
    p.metastack.append(p.stack)
    p.stack = []


def _op_frame(p: _Walker) -> None:
    # Framing only batches reads; it changes nothing about what the opcodes do.
    size = p._int("<Q", 8)
    if size > 2**63 - 1:
        raise PickleError("frame size > sys.maxsize")


def _op_proto(p: _Walker) -> None:
    proto = p._n(1, "protocol")[0]
    if proto > HIGHEST_PROTOCOL:
        raise PickleError(f"unsupported pickle protocol: {proto}")
    p.proto = proto


def _op_stop(p: _Walker) -> object:
    p.w.value = p.pop()
    return _STOP


def _tuple(p: _Walker, items: list[Any]) -> Any:
    return tuple(items) if len(items) <= TRACK and p.keep(64 + 8 * len(items)) else OPAQUE


def _new(kind: str) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        p.push(Container(kind, ({} if kind == "dict" else []) if p.keep(64) else None))

    return op


def _from_mark(kind: str) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        items = p.pop_mark()
        if kind == "tuple":
            p.push(_tuple(p, items))
        elif kind == "dict":
            if len(items) % 2:
                raise PickleError("odd number of items for DICT")
            c = Container("dict", {} if p.keep(64) else None)
            _set_items(p, c, items)
            p.push(c)
        else:
            tracked = len(items) <= TRACK and p.keep(64 + 8 * len(items))
            p.push(Container(kind, items if tracked else None))

    return op


def _set_items(p: _Walker, c: Any, items: list[Any]) -> None:
    if not isinstance(c, Container) or c.items is None:
        return
    if c.kind != "dict" or len(c.items) + len(items) // 2 > TRACK or not p.keep(8 * len(items)):
        c.items = None
        return
    for k, v in zip(items[::2], items[1::2], strict=True):
        try:
            c.items[k] = v
        except TypeError:  # an unhashable key (a tracked list): stop tracking rather than guess
            c.items = None
            return


def _add_items(p: _Walker, c: Any, items: list[Any]) -> None:
    if isinstance(c, Container) and c.items is not None:
        if c.kind == "dict" or len(c.items) + len(items) > TRACK or not p.keep(8 * len(items)):
            c.items = None
        else:
            c.items.extend(items)


def _op_append(p: _Walker) -> None:
    value = p.pop()
    _add_items(p, p.top(), [value])


def _op_appends(p: _Walker) -> None:
    items = p.pop_mark()
    _add_items(p, p.top(), items)


def _op_setitem(p: _Walker) -> None:
    value = p.pop()
    key = p.pop()
    _set_items(p, p.top(), [key, value])


def _op_setitems(p: _Walker) -> None:
    items = p.pop_mark()
    if len(items) % 2:
        raise PickleError("odd number of items for SETITEMS")
    _set_items(p, p.top(), items)


def _op_additems(p: _Walker) -> None:
    items = p.pop_mark()
    _add_items(p, p.top(), items)


def _op_tuple_n(n: int) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        if len(p.stack) < n:
            raise PickleError("unpickling stack underflow")
        items = p.stack[len(p.stack) - n :] if n else []
        del p.stack[len(p.stack) - n :]
        p.push(_tuple(p, items))

    return op


def _op_pop(p: _Walker) -> None:
    if p.stack:
        p.stack.pop()
    else:
        p.pop_mark()


def _op_dup(p: _Walker) -> None:
    p.push(p.top())


def _op_pop_mark(p: _Walker) -> None:
    p.pop_mark()


def _op_buffer(p: _Walker) -> None:
    # NEXT_BUFFER: out-of-band buffers; a file carries none, so a loader fails here.
    raise PickleError("pickle stream refers to out-of-band data but no buffers were given")


def _op_readonly(p: _Walker) -> None:
    p.top()


def _decimal(line: bytes) -> int:
    # GET and PUT read base 10 (so "010" is 10), unlike INT and LONG.
    try:
        return int(line, 10)
    except ValueError:
        raise PickleError(f"invalid memo index {line[:40]!r}") from None


def _op_get(p: _Walker) -> None:
    p.memo_get(_decimal(p._line()))


def _op_put(p: _Walker) -> None:
    p.memo_put(_decimal(p._line()))


def _const(value: Any) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        p.push(value)

    return op


def _sized(fmt: str, size: int, mode: str, limit: int | None = None) -> Callable[[_Walker], None]:
    """A length-prefixed argument: ``mode`` is how the unpickler makes a value of its bytes."""

    def op(p: _Walker) -> None:
        n = p._int(fmt, size)
        if limit is not None and n > limit:
            raise PickleError("string or bytes too large for this platform")
        p.push(p._blob(n, mode))

    return op


def _binint(fmt: str, size: int) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        p.push(p._int(fmt, size))

    return op


def _op_long_n(size: int, fmt: str) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        n = p._int(fmt, size)
        if n < 0:
            raise PickleError("LONG pickle has negative byte count")
        if n > KEEP:
            p.r.skip(n)
            p.push(OPAQUE)
            return
        p.push(int.from_bytes(p._n(n, "long"), "little", signed=True))

    return op


def _op_binfloat(p: _Walker) -> None:
    p.push(struct.unpack(">d", p._n(8, "float"))[0])


def _op_binget(fmt: str, size: int) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        p.memo_get(p._int(fmt, size))

    return op


def _op_binput(fmt: str, size: int) -> Callable[[_Walker], None]:
    def op(p: _Walker) -> None:
        p.memo_put(p._int(fmt, size))

    return op


def _op_memoize(p: _Walker) -> None:
    p.memo_put(len(p.memo))


_MAXSIZE = 2**63 - 1
_NAME_OPS = frozenset(b"ci")  # GLOBAL, INST: their lines name a module and a class
_MEMO_OPS = frozenset(b"gp")  # GET, PUT: their lines are memo indices

_OPS: dict[int, Callable[[_Walker], Any]] = {
    ord("("): _op_mark,
    ord("."): _op_stop,
    ord("0"): _op_pop,
    ord("1"): _op_pop_mark,
    ord("2"): _op_dup,
    ord("F"): _op_float,
    ord("I"): _op_int,
    ord("J"): _binint("<i", 4),
    ord("K"): _binint("<B", 1),
    ord("L"): _op_long,
    ord("M"): _binint("<H", 2),
    ord("N"): _const(None),
    ord("P"): _op_persid,
    ord("Q"): _op_binpersid,
    ord("R"): _op_reduce,
    ord("S"): _op_string,
    # BINSTRING and SHORT_BINSTRING: str in the loader's encoding (torch: UTF-8), so they can name a global.
    ord("T"): _sized("<i", 4, "loader"),
    ord("U"): _sized("<B", 1, "loader"),
    ord("V"): _op_unicode,
    ord("X"): _sized("<I", 4, "utf-8"),
    ord("a"): _op_append,
    ord("b"): _op_build,
    ord("c"): _op_global,
    ord("d"): _from_mark("dict"),
    ord("}"): _new("dict"),
    ord("e"): _op_appends,
    ord("g"): _op_get,
    ord("h"): _op_binget("<B", 1),
    ord("i"): _op_inst,
    ord("j"): _op_binget("<I", 4),
    ord("l"): _from_mark("list"),
    ord("]"): _new("list"),
    ord("o"): _op_obj,
    ord("p"): _op_put,
    ord("q"): _op_binput("<B", 1),
    ord("r"): _op_binput("<I", 4),
    ord("s"): _op_setitem,
    ord("t"): _from_mark("tuple"),
    ord(")"): _op_tuple_n(0),
    ord("u"): _op_setitems,
    ord("G"): _op_binfloat,
    0x80: _op_proto,
    0x81: _op_newobj,
    0x82: _op_ext(1, "<B"),
    0x83: _op_ext(2, "<H"),
    0x84: _op_ext(4, "<i"),
    0x85: _op_tuple_n(1),
    0x86: _op_tuple_n(2),
    0x87: _op_tuple_n(3),
    0x88: _const(True),
    0x89: _const(False),
    0x8A: _op_long_n(1, "<B"),
    0x8B: _op_long_n(4, "<i"),
    ord("B"): _sized("<I", 4, "bytes"),
    ord("C"): _sized("<B", 1, "bytes"),
    0x8C: _sized("<B", 1, "utf-8"),
    0x8D: _sized("<Q", 8, "utf-8", _MAXSIZE),
    0x8E: _sized("<Q", 8, "bytes", _MAXSIZE),
    0x8F: _new("set"),
    0x90: _op_additems,
    0x91: _from_mark("frozenset"),
    0x92: _op_newobj_ex,
    0x93: _op_stack_global,
    0x94: _op_memoize,
    0x95: _op_frame,
    0x96: _sized("<Q", 8, "bytes", _MAXSIZE),
    0x97: _op_buffer,
    0x98: _op_readonly,
}

#: Bytes that start a pickle opcode (a protocol 0/1 pickle has no header to recognise it by).
OPCODE_BYTES = frozenset(_OPS)
