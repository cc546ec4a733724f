"""Templates rendered on the node with its facts, in the Jinja2 sandbox.

A template sees ``facts`` (``{{ facts.cpu_count }}``), ``name`` as a
shortcut for the node name, and ``secrets``: the bundle's values sealed to
this node, opened with its node key (``{{ secrets.db_password }}``). A
secret that is not sealed to this node is an error naming it, as are
undefined names: a typo in a template must stop the converge before
anything changes, never write a half-empty config file. The sandbox refuses
access to private attributes and unsafe callables, so a template cannot
reach out of the data it was given.

A template is bounded in time and in output (``MAX_RENDER_SECONDS``,
``MAX_RENDERED_BYTES``): a runaway loop is stopped with a ``TemplateError``
naming the template and the limit. Output is counted as it is produced, and
operations that could build a huge value in one step (``'x' * n``,
``a ** b``, ``'%9999999999d' % 1``, a width given to ``center`` or
``format``) are refused before they run.

Jinja2 is imported on first use: a policy without templates does not pay for
it, and a compiled template is cached per source text.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Mapping as MappingABC
from typing import Any, Iterator, Mapping

from grapevine.gossip.errors import PolicyError

__all__ = ["render", "TemplateError", "SecretsView", "MAX_RENDER_SECONDS", "MAX_RENDERED_BYTES"]

# Rendered output larger than this is almost certainly a runaway loop: a
# bundle itself is limited to 1 MiB, and a config file is kilobytes. It is
# also the bound on any one value a template builds (a repeated string, a
# padding width), so memory stays a small multiple of it.
MAX_RENDERED_BYTES = 16 * 1024 * 1024
# A config file renders in milliseconds; a template still busy after this
# many seconds (on a loaded machine) is looping, and while it runs the
# converge holds the root lock and every other bundle waits.
MAX_RENDER_SECONDS = 5.0
# `a ** b` with integers: results past this many bits (about 20,000 decimal
# digits) take long to compute and print and have no place in a config file.
MAX_POWER_BITS = 64 * 1024
_NUMBER = re.compile(r"\d+")
# Calls whose integer arguments size what they build (a width, a count of
# batches or slices); other calls take numbers as plain values (a memory size
# passed to `format` or `filesizeformat`) and are not limited.
SIZED_METHODS = frozenset(["center", "ljust", "rjust", "zfill"])
SIZED_FILTERS = frozenset(["center", "batch", "slice"])


class TemplateError(PolicyError):
    """A template that does not compile or render on this node."""


class _OverLimit(BaseException):
    """Raised inside a render that passed a limit; a BaseException so no template-level handler swallows it."""


class SecretMissing(Exception):
    """A template asked for a secret that is not sealed to this node."""


class SecretsView(MappingABC):
    """The secrets a template may read; remembers whether it read any (the file is then hidden).

    Asking for a name that is not there is an error naming the secret and
    the node key, not an undefined value.
    """

    __slots__ = ("_values", "_where", "used")

    def __init__(self, values: Mapping[str, str] | None = None, *, where: str = "") -> None:
        self._values = dict(values or {})
        self._where = where
        self.used = False

    def __getitem__(self, key: str) -> str:
        self.used = True
        try:
            return self._values[key]
        except KeyError:
            where = f" ({self._where})" if self._where else ""
            raise SecretMissing(f"secret {key!r} is not sealed to this node{where}") from None

    def get(self, key: str, default: Any = None) -> Any:
        self.used = True
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.used = True
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        self.used = True
        return iter(self._values)

    def __len__(self) -> int:
        self.used = True
        return len(self._values)

    def values_for_scrubbing(self) -> list[str]:
        return [v for v in self._values.values() if v]

    def __repr__(self) -> str:
        return f"SecretsView({sorted(self._values)})"


def _too_big(n: int) -> bool:
    return n > MAX_RENDERED_BYTES


def _check_args(what: str, args: tuple, kwargs: dict) -> None:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and _too_big(abs(v)):
            raise _OverLimit(f"{what}: argument {v} exceeds the output limit of {MAX_RENDERED_BYTES} bytes")


def _check_growth(what: str, subject: Any, args: tuple, kwargs: dict) -> None:
    """Refuse the string operations whose result can be far larger than their input, before they run."""
    if not isinstance(subject, str):
        return
    if what in ("replace",) and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = subject.count(old) if old else len(subject) + 1
        grown = len(subject) + count * (len(new) - len(old))
    elif what == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        grown = len(subject) + (subject.count("\n") + 1) * (len(width) if isinstance(width, str) else int(width or 0))
    elif what == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        grown = len(subject) + subject.count("\t") * int(size or 0)
    else:
        return
    if _too_big(grown):
        raise _OverLimit(f"{what} would build {grown} characters, more than {MAX_RENDERED_BYTES}")


def _check_format_string(text: str) -> None:
    for m in _NUMBER.finditer(text):
        if len(m.group()) > 9 or _too_big(int(m.group())):
            raise _OverLimit(f"a width of {m.group()} exceeds the output limit of {MAX_RENDERED_BYTES} bytes")


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from jinja2.compiler import CodeGenerator

    class BoundedCodeGenerator(CodeGenerator):
        def visit_Concat(self, node: Any, frame: Any) -> None:
            # `a ~ b` is a plain join in generated code, not a binop the sandbox sees
            self.write("environment.checked_concat(")
            super().visit_Concat(node, frame)
            self.write(")")

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "%", "+"])
        code_generator_class = BoundedCodeGenerator

        @staticmethod
        def checked_concat(value: Any) -> Any:
            if _too_big(len(value)):
                raise _OverLimit(f"'~' built {len(value)} characters, more than {MAX_RENDERED_BYTES}")
            return value

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and _too_big(len(seq) * n):
                        raise _OverLimit(f"'*' would build {len(seq) * n} items, more than {MAX_RENDERED_BYTES}")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and right > 0:
                    if max(abs(left), 2).bit_length() * right > MAX_POWER_BITS:
                        raise _OverLimit(f"'**' would build a number of more than {MAX_POWER_BITS} bits")
            elif operator == "%" and isinstance(left, str):
                _check_format_string(left)
            elif operator == "+":
                if isinstance(left, (str, bytes, list, tuple)) and hasattr(right, "__len__") and _too_big(len(left) + len(right)):
                    raise _OverLimit(f"'+' would build {len(left) + len(right)} items, more than {MAX_RENDERED_BYTES}")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            what = getattr(__obj, "__name__", "a call")
            if what in SIZED_METHODS:
                _check_args(what, args, kwargs)
            _check_growth(what, getattr(__obj, "__self__", None), args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:
            f_self = getattr(value, "__self__", None)
            if isinstance(f_self, str) and getattr(value, "__name__", "") in ("format", "format_map"):
                _check_format_string(f_self)
            return super().wrap_str_format(value)

    env = BoundedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    for fname, func in list(env.filters.items()):
        env.filters[fname] = _bounded_filter(fname, func)
    env.globals.pop("lipsum", None)  # `lipsum(n=...)` writes n paragraphs of filler: nothing a config file needs
    return env


def _bounded_filter(fname: str, func: Any) -> Any:
    @functools.wraps(func)  # keeps jinja's pass_context/pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if fname in SIZED_FILTERS:
            _check_args(f"filter {fname}", args[1:], kwargs)  # args[0] is the value filtered
        strings = [a for a in args if isinstance(a, str)]
        if fname in ("replace", "indent") and strings:
            _check_growth(fname, strings[0], args[args.index(strings[0]) + 1:], kwargs)
        if fname == "format":  # `'%99999999s'|format(x)`: the width is inside the string
            for a in args:
                if isinstance(a, str):
                    _check_format_string(a)
                    break
        return func(*args, **kwargs)

    return bounded


@functools.lru_cache(maxsize=4096)
def _compile(text: str, name: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {name} line {exc.lineno}: {exc.message}") from None
    except _OverLimit as exc:  # Jinja folds constant expressions while compiling
        raise TemplateError(f"template {name}: {exc}") from None


def _scrub(message: str, hidden: list[str]) -> str:
    """An error message with every secret value in it replaced (Jinja names missing keys, values included)."""
    for value in sorted(hidden, key=len, reverse=True):
        message = message.replace(value, "<secret>")
    return message


def render(
    text: str,
    facts: Mapping[str, Any],
    *,
    name: str,
    secrets: Mapping[str, str] | SecretsView | None = None,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
) -> str:
    """Render ``text`` with ``facts`` (and this node's opened ``secrets``).

    TemplateError names the template and the line, or the limit it passed;
    its message never contains a secret value.
    """
    import jinja2

    max_seconds = MAX_RENDER_SECONDS if max_seconds is None else max_seconds
    max_bytes = MAX_RENDERED_BYTES if max_bytes is None else max_bytes
    view = secrets if isinstance(secrets, SecretsView) else SecretsView(secrets)
    hidden = view.values_for_scrubbing()
    template = _compile(text, name)
    deadline = time.monotonic() + max_seconds
    timed_out = f"template {name} ran longer than the limit of {max_seconds:g} s (a runaway loop?)"

    def tracer(frame: Any, event: str, arg: Any) -> None:
        # Called on every Python call the render makes; returns None, so no per-line tracing.
        if time.monotonic() > deadline:
            raise _OverLimit(timed_out)
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(facts=dict(facts), name=facts.get("name"), secrets=view):
            size += len(chunk)
            if size > max_bytes:
                raise _OverLimit(f"template {name} rendered to more than the limit of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _OverLimit(timed_out)
            chunks.append(chunk)
    except _OverLimit as exc:
        msg = str(exc)
        raise TemplateError(msg if msg.startswith(f"template {name} ") else f"template {name}: {msg}") from None
    except jinja2.TemplateError as exc:
        line = _error_line(exc)
        where = f" line {line}" if line else ""
        raise TemplateError(_scrub(f"template {name}{where}: {type(exc).__name__}: {exc}", hidden)) from None
    except SecretMissing as exc:
        raise TemplateError(f"template {name}: {exc}") from None
    except RecursionError:
        raise TemplateError(f"template {name}: recursion too deep") from None
    except Exception as exc:  # e.g. ZeroDivisionError inside an expression
        raise TemplateError(_scrub(f"template {name}: {type(exc).__name__}: {exc}", hidden)) from None
    finally:
        sys.settrace(previous)
    out = "".join(chunks)
    if len(out.encode("utf-8")) > max_bytes:
        raise TemplateError(f"template {name} rendered to more than the limit of {max_bytes} bytes")
    return out


def _error_line(exc: BaseException) -> int | None:
    lineno = getattr(exc, "lineno", None)
    if lineno:
        return lineno
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
