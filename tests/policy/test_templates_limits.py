"""Template rendering is bounded in time and output; a runaway template is a TemplateError naming it and the limit."""

from __future__ import annotations

import sys

import pytest

from grapevine.gossip.errors import PolicyError
from grapevine.policy import templates
from grapevine.policy.bundle import Bundle
from grapevine.policy.engine import converge
from grapevine.policy.templates import MAX_RENDERED_BYTES, TemplateError, render

FACTS = {"name": "web-01", "cpu_count": 4}


def test_a_loop_that_never_ends_is_stopped_at_the_time_limit():
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match=r"template spin.j2 ran longer than the limit of 0.3 s"):
        render(forever, FACTS, name="spin.j2", max_seconds=0.3)


def test_a_loop_that_renders_gigabytes_is_stopped_at_the_output_limit():
    huge = "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match=rf"template big.j2 rendered to more than the limit of {MAX_RENDERED_BYTES} bytes"):
        render(huge, FACTS, name="big.j2")


@pytest.mark.parametrize(
    "text,words",
    [
        ("{{ 'x' * 10000000000 }}", "'*' would build"),
        ("{{ [1] * 10000000000 }}", "'*' would build"),
        ("{{ 7 ** 100000000 }}", "'**' would build a number"),
        ("{{ 'x'|center(10000000000) }}", "filter center"),
        ("{{ 'x'.ljust(10000000000) }}", "ljust"),
        ("{{ '{:>10000000000}'.format(1) }}", "a width of 10000000000"),
        ("{{ '%10000000000d' % 1 }}", "a width of 10000000000"),
        ("{{ '%10000000000d'|format(1) }}", "a width of 10000000000"),
        ("{{ ('a' * 10000000)|replace('a', 'xxxxxxxxxx') }}", "replace would build"),
        ("{{ ('a' * 10000000).replace('', 'xxx') }}", "replace would build"),
        ("{{ ('a\n' * 1000000)|indent(100) }}", "indent would build"),
        ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "'+' would build"),
        ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "'~' built"),
        ("{{ [1]|batch(100000000, 'x') }}", "filter batch"),
        ("{{ [1]|slice(100000000) }}", "filter slice"),
        ("{{ lipsum(1000000) }}", "'lipsum' is undefined"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursion too deep"),
    ],
)
def test_a_value_too_big_to_build_is_refused_before_it_is_built(text, words):
    with pytest.raises(TemplateError) as info:
        render(text, FACTS, name="t.j2", max_seconds=10)
    assert "template t.j2" in str(info.value) and words in str(info.value)


def test_ordinary_templates_render_as_before():
    text = (
        "{{ name }} {{ 'ab' * 3 }} {{ '%05d' % facts.cpu_count }} {{ '{:>4}'.format(1) }} {{ 2 ** 10 }}"
        " {{ 'a-b'|replace('-', '+') }} {{ [1, 2] + [3] }} {{ 'x' ~ 'y' }}\n"
        "{% for i in range(3) %}{{ i }}{% endfor %}\n"
    )
    assert render(text, FACTS, name="ok.j2") == "web-01 ababab 00004    1 1024 a+b [1, 2, 3] xy\n012\n"


def test_large_numbers_as_plain_values_are_fine():
    facts = {**FACTS, "memory_bytes": 24 * 1024**3}
    text = "{{ facts.memory_bytes|filesizeformat }} {{ '{}'.format(facts.memory_bytes) }} {{ facts.memory_bytes|int }}"
    assert render(text, facts, name="mem.j2") == f"25.8 GB {24 * 1024**3} {24 * 1024**3}"


def test_the_callers_tracer_is_restored():
    before = sys.gettrace()
    render("{{ name }}", FACTS, name="t.j2")
    with pytest.raises(TemplateError):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", FACTS, name="t.j2",
               max_seconds=0.1)
    assert sys.gettrace() is before


def test_a_runaway_template_fails_the_converge_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.3)
    b = Bundle.from_document({"bundle": "site/spin", "resources": [
        {"file": "/etc/a", "content": "ok\n"},
        {"file": "/etc/spin", "template": True,
         "content": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"},
    ]}, "t.yaml")
    with pytest.raises(PolicyError, match="site/spin.*template content of file:/etc/spin ran longer than the limit of 0.3 s"):
        converge([b], root=tmp_path, facts=FACTS)
    assert list(tmp_path.iterdir()) == []
