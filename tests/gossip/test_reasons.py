"""One reason vocabulary: every refusal reason spelled anywhere is a member of ``Reason``.

The test reads the source (``ast``), not a list kept by hand: every string
that a refusal site passes as its reason (the constructors of the refusal
errors and effects, ``reason=`` / ``refused=`` keywords, metrics ``labels``,
API error documents, comparisons against ``.reason``, ``*_REASONS`` sets)
must be a ``Reason`` value, and no module may declare a second enumeration
that spells reasons.
"""

from __future__ import annotations

import ast
import enum
import importlib
import re
from pathlib import Path

import pytest

from grapevine.gossip.errors import GrapevineError, Reason

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gossip", "policy", "node", "cli", "simulation")
WORD = re.compile(r"[A-Z][A-Za-z]+")

# Calls whose string arguments are reasons: the refusal errors and the refusal effects.
REFUSAL_CALLS = {
    "Refusal", "RunRefused", "FrameRefused", "BadSeal", "Refuse", "QueryDeclined", "Count", "ItemRefused",
    "AnswerOutcome", "labels", "_error", "_refused", "_on_evict", "on_evict", "_count", "count",
}
REASON_KEYS = {"reason", "refused", "error"}  # keyword arguments and dict keys that carry a reason


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _word(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and WORD.fullmatch(node.value):
        return node.value
    return None


def reasons_spelled(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, spelling) of every reason literal at a refusal site in ``tree``."""
    found: list[tuple[int, str]] = []

    def add(node: ast.AST | None) -> None:
        w = _word(node)
        if w is not None:
            found.append((node.lineno, w))  # type: ignore[union-attr]

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if _name(node.func) in REFUSAL_CALLS:
                for arg in node.args:
                    add(arg)
            for kw in node.keywords:
                if kw.arg in REASON_KEYS:
                    add(kw.value)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in REASON_KEYS:
                    add(v)
        elif isinstance(node, ast.Compare) and _name(node.left) in {"reason", "refused"}:
            for c in node.comparators:
                add(c)
                if isinstance(c, (ast.Tuple, ast.Set, ast.List)):
                    for e in c.elts:
                        add(e)
        elif isinstance(node, ast.Assign):
            names = [_name(t) or "" for t in node.targets]
            if any(n == "reason" or n.endswith("REASONS") for n in names):
                values = [node.value]
                if isinstance(node.value, ast.Call) and node.value.args:  # frozenset({...})
                    values = list(node.value.args)
                for v in values:
                    add(v)
                    if isinstance(v, (ast.Tuple, ast.Set, ast.List)):
                        for e in v.elts:
                            add(e)
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            elts = node.value.elts  # ``return False, "NotAccepted", detail`` (accepted, reason, detail)
            if len(elts) == 3 and isinstance(elts[0], ast.Constant) and elts[0].value is False:
                add(elts[1])
    return found


def test_every_reason_spelled_at_a_refusal_site_is_a_member():
    members = {r.value for r in Reason}
    seen: dict[str, list[str]] = {}
    for path in _sources():
        for line, word in reasons_spelled(ast.parse(path.read_text(), str(path))):
            seen.setdefault(word, []).append(f"{path.relative_to(ROOT)}:{line}")
    unknown = {w: where for w, where in seen.items() if w not in members}
    assert not unknown, f"reasons spelled outside the Reason enumeration: {unknown}"
    # The scan must actually see the refusal sites, or this test proves nothing.
    assert {"Malformed", "NodeKeyChanged", "SenderMismatch", "RateLimited", "OutOfScope", "BadRequest"} <= set(seen)
    assert len(seen) >= 40


def test_the_scan_catches_a_misspelt_reason():
    tree = ast.parse('raise FrameRefused(403, "BadNodeSig", "no")\nm.labels("Stael").inc()\nx = {"error": "Oops"}')
    assert sorted(w for _, w in reasons_spelled(tree)) == ["BadNodeSig", "Oops", "Stael"]


def test_there_is_exactly_one_enumeration_of_reasons():
    members = {r.value for r in Reason}
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef) or not any("Enum" in (_name(b) or "") for b in node.bases):
                continue
            if path == ROOT / "gossip" / "errors.py" and node.name == "Reason":
                continue
            values = {n.value.value for n in ast.walk(node) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
            if values & members:
                offenders.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert offenders == []


def _all_error_classes() -> set[type]:
    for path in _sources():
        parts = path.relative_to(ROOT).with_suffix("").parts
        importlib.import_module(".".join(("grapevine",) + (parts[:-1] if parts[-1] == "__init__" else parts)))
    out, todo = set(), [GrapevineError]
    while todo:
        cls = todo.pop()
        out.add(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_every_grapevine_error_carries_a_reason_member():
    classes = _all_error_classes()
    assert len(classes) > 10
    for cls in classes:
        assert isinstance(cls.reason, Reason), cls


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: __import__("grapevine.policy.trust", fromlist=["Refusal"]).Refusal("OutOfScope", "x"), Reason.OUT_OF_SCOPE),
    (lambda: __import__("grapevine.policy.runorder", fromlist=["RunRefused"]).RunRefused("NotTargeted", "x"), Reason.NOT_TARGETED),
    (lambda: __import__("grapevine.node.frames", fromlist=["FrameRefused"]).FrameRefused(403, "NodeKeyChanged", "x"), Reason.NODE_KEY_CHANGED),
    (lambda: __import__("grapevine.node.netkey", fromlist=["BadSeal"]).BadSeal("Unsealed", "x"), Reason.UNSEALED),
])
def test_refusal_errors_carry_the_member_and_print_its_spelling(make, reason):
    exc = make()
    assert exc.reason is reason and isinstance(exc, GrapevineError)
    assert f"{exc.reason}" == reason.value


def test_a_misspelt_reason_fails_at_once():
    from grapevine.node.frames import FrameRefused

    with pytest.raises(ValueError):
        FrameRefused(403, "BadNodeSig", "x")


def test_a_peers_unknown_reason_is_folded_into_refused():
    """A reason text from another process never opens a new metrics label."""
    assert Reason.from_text("Stale") is Reason.STALE
    assert Reason.from_text("x" * 500) is Reason.REFUSED
    assert Reason.from_text(None) is Reason.REFUSED


def test_reason_is_a_str_enum_so_wire_and_json_forms_are_unchanged():
    import json

    import msgpack

    assert issubclass(Reason, enum.StrEnum)
    assert json.dumps({"error": Reason.NOT_FOUND}) == '{"error": "NotFound"}'
    assert msgpack.unpackb(msgpack.packb({"refused": Reason.REPLAYED})) == {"refused": "Replayed"}


def test_the_command_line_prints_the_reason_first(tmp_path, capsys):
    """A bad policy file: exit 2 and ``error: Malformed: ...`` (the reason once, then the detail)."""
    from grapevine.cli.main import main

    bad = tmp_path / "site.yaml"
    bad.write_text("bundle: [unclosed\n")
    assert main(["converge", "--local", str(bad), "--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Malformed: ") and err.count("Malformed") == 1, err


def test_a_refusal_that_already_names_its_reason_is_not_prefixed_twice(capsys, monkeypatch):
    from grapevine.cli import main as cli_main
    from grapevine.policy.trust import Refusal

    def boom(*a, **k):
        raise Refusal("OutOfScope", "bundle 'x' by k: path /etc/shadow")

    monkeypatch.setattr(cli_main.cli, "main", boom)
    assert cli_main.main(["status"]) == 2
    assert capsys.readouterr().err == "error: OutOfScope: bundle 'x' by k: path /etc/shadow\n"


# Exceptions that are not refusals of input, and so stand outside the GrapevineError tree.
NOT_REFUSALS = {
    ("node/lifecycle.py", "GracefulExit"),  # SIGTERM turned into one exception that unwinds the daemon
    ("simulation/observers.py", "SafetyViolation"),  # the simulator's invariant checkers, not input errors
    ("simulation/observers.py", "LivenessFailure"),
    ("policy/templates.py", "SecretMissing"),  # raised inside a render and turned into a TemplateError there
    ("cli/localfleet.py", "FleetError"),  # a local agent that would not start or exited: the launcher's own failure
}


def test_every_exception_class_outside_the_tree_is_a_known_non_refusal():
    builtin = {"Exception", "RuntimeError", "ValueError", "TypeError", "KeyError", "LookupError", "OSError"}
    found = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(_name(b) in builtin for b in node.bases):
                if path.relative_to(ROOT) != Path("gossip/errors.py"):  # the root of the tree itself
                    found.add((str(path.relative_to(ROOT)), node.name))
    assert found == NOT_REFUSALS
