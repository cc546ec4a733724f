"""Templates rendered on the node with its facts, in the Jinja2 sandbox.

A template sees ``facts`` (``{{ facts.cpu_count }}``), ``name`` as a
shortcut for the node name, and ``secrets``: the bundle's values sealed to
this node, opened with its node key (``{{ secrets.db_password }}``; empty
when the converge has no node key). Undefined names are errors, not
empty strings: a typo in a template must stop the converge before anything
changes, never write a half-empty config file. The sandbox refuses access to
private attributes and unsafe callables, so a template cannot reach out of
the data it was given.

Jinja2 is imported on first use: a policy without templates does not pay for
it, and a compiled template is cached per source text.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from grapevine.gossip.errors import PolicyError

__all__ = ["render", "TemplateError"]

# Rendered output larger than this is almost certainly a runaway loop in a
# template; a bundle itself is limited to 1 MiB.
MAX_RENDERED_BYTES = 16 * 1024 * 1024


class TemplateError(PolicyError):
    """A template that does not compile or render on this node."""


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


@functools.lru_cache(maxsize=4096)
def _compile(text: str, name: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {name} line {exc.lineno}: {exc.message}") from None


def render(text: str, facts: Mapping[str, Any], *, name: str, secrets: Mapping[str, str] | None = None) -> str:
    """Render ``text`` with ``facts`` (and this node's opened ``secrets``);
    TemplateError names the template and line."""
    import jinja2

    template = _compile(text, name)
    try:
        out = template.render(facts=dict(facts), name=facts.get("name"), secrets=dict(secrets or {}))
    except jinja2.TemplateError as exc:
        line = _error_line(exc)
        where = f" line {line}" if line else ""
        raise TemplateError(f"template {name}{where}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # e.g. ZeroDivisionError inside an expression
        raise TemplateError(f"template {name}: {type(exc).__name__}: {exc}") from None
    if len(out) > MAX_RENDERED_BYTES:
        raise TemplateError(f"template {name} rendered to more than {MAX_RENDERED_BYTES} bytes")
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
