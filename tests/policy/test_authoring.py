"""Policy files: YAML, TOML and Python give the same bundles."""

from __future__ import annotations

import textwrap

import pytest

from grapevine.gossip.errors import PolicyError
from grapevine.policy.authoring import load_policy_file
from grapevine.policy.bundle import Bundle, bundles_from_file

YAML = """\
bundle: web/nginx
target: role=web
files:
  nginx.conf.j2: "worker_processes {{ facts.cpu_count }};\\n"
resources:
  - package: nginx
  - file: /etc/nginx/nginx.conf
    source: nginx.conf.j2
    mode: "0644"
    require: [package:nginx]
"""

TOML = """\
bundle = "web/nginx"
target = "role=web"

[files]
"nginx.conf.j2" = "worker_processes {{ facts.cpu_count }};\\n"

[[resources]]
package = "nginx"

[[resources]]
file = "/etc/nginx/nginx.conf"
source = "nginx.conf.j2"
mode = "0644"
require = ["package:nginx"]
"""

PY_FUNCTION = """\
def bundles():
    return {
        "bundle": "web/nginx",
        "target": "role=web",
        "files": {"nginx.conf.j2": "worker_processes {{ facts.cpu_count }};\\n"},
        "resources": [
            {"package": "nginx"},
            # keys in another order than the YAML: the bundle must not change
            {"require": ["package:nginx"], "mode": "0644", "source": "nginx.conf.j2", "file": "/etc/nginx/nginx.conf"},
        ],
    }
"""

PY_VARIABLE = """\
names = ["a", "b"]
bundles = [{"bundle": f"app/{n}", "resources": [{"directory": f"/srv/{n}"}]} for n in names]
"""


@pytest.mark.parametrize(
    "filename,text",
    [("site.yaml", YAML), ("site.yml", YAML), ("site.toml", TOML), ("site.py", PY_FUNCTION)],
)
def test_every_format_gives_the_same_canonical_bundle(tmp_path, filename, text):
    reference = tmp_path / "ref.yaml"
    reference.write_text(YAML)
    path = tmp_path / filename
    path.write_text(text)
    [bundle] = bundles_from_file(str(path))
    [expected] = bundles_from_file(str(reference))
    assert bundle == expected
    assert bundle.encode() == expected.encode()


def test_python_module_variable_may_hold_several_bundles(tmp_path):
    path = tmp_path / "gen.py"
    path.write_text(PY_VARIABLE)
    assert [b.name for b in bundles_from_file(str(path))] == ["app/a", "app/b"]


def test_yaml_multi_document_and_bundles_list_both_give_several(tmp_path):
    multi = tmp_path / "multi.yaml"
    multi.write_text("bundle: a\n---\nbundle: b\n")
    listed = tmp_path / "listed.yaml"
    listed.write_text("bundles:\n  - bundle: a\n  - bundle: b\n")
    assert [d["bundle"] for d in load_policy_file(multi)] == ["a", "b"]
    assert [d["bundle"] for d in load_policy_file(listed)] == ["a", "b"]


def test_toml_array_of_bundles(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text('[[bundles]]\nbundle = "a"\n[[bundles]]\nbundle = "b"\n')
    assert [b.name for b in bundles_from_file(str(path))] == ["a", "b"]


BAD_FILES = [
    ("missing.yaml", None, "does not exist"),
    ("site.txt", "bundle: a\n", "unknown policy file type"),
    ("broken.yaml", "bundle: [\n", "not valid YAML"),
    ("broken.toml", "bundle = \n", "not valid TOML"),
    ("scalar.yaml", "42\n", "expected a bundle document"),
    ("empty.yaml", "", "no bundles"),
    ("raises.py", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("nothing.py", "x = 1\n", "must define `bundles`"),
    ("fails.py", "def main():\n    return 1 / 0\n", "ZeroDivisionError"),
    ("exits.py", "import sys\nsys.exit(3)\n", "exited"),
    ("odd-keys.yaml", "bundles: []\n~: 1\n2: x\n", "only bundle documents are allowed"),
]


@pytest.mark.parametrize("filename,text,message", BAD_FILES)
def test_bad_policy_file_is_refused_naming_the_file(tmp_path, filename, text, message):
    path = tmp_path / filename
    if text is not None:
        path.write_text(text)
    with pytest.raises(PolicyError) as info:
        bundles_from_file(str(path))
    assert filename in str(info.value)
    assert message in str(info.value)


def test_duplicate_bundle_names_in_one_file_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("bundle: a\n---\nbundle: a\n")
    with pytest.raises(PolicyError, match="defined twice"):
        bundles_from_file(str(path))


def test_yaml_dates_must_be_quoted(tmp_path):
    path = tmp_path / "date.yaml"
    path.write_text(textwrap.dedent("""\
        bundle: a
        resources:
          - file: /etc/motd
            content: 2024-01-01
        """))
    with pytest.raises(PolicyError, match="date"):
        bundles_from_file(str(path))


def test_from_document_reports_unknown_keys():
    with pytest.raises(PolicyError, match="unknown top-level key"):
        Bundle.from_document({"bundle": "a", "resource": []}, "x.yaml")


def test_attached_files_may_be_read_from_disk_relative_to_the_policy_file(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "nginx.conf.j2").write_bytes(b"worker_processes 4;\n")
    path = tmp_path / "site.yaml"
    path.write_text("bundle: web/nginx\nfiles:\n  nginx.conf.j2: {path: templates/nginx.conf.j2}\n  motd: hi\n")
    [bundle] = bundles_from_file(str(path))
    assert bundle.files == {"motd": b"hi", "nginx.conf.j2": b"worker_processes 4;\n"}


@pytest.mark.parametrize(
    "entry,message",
    [("{path: nope.txt}", "cannot read"), ("{path: a, mode: x}", "either the content"), ("{path: 3}", "either the content")],
)
def test_bad_attached_file_references_are_refused(tmp_path, entry, message):
    path = tmp_path / "site.yaml"
    path.write_text(f"bundle: a\nfiles:\n  f: {entry}\n")
    with pytest.raises(PolicyError, match=message):
        bundles_from_file(str(path))
