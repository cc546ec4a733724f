"""`inject --preview` usage errors: exit status 2, the problem named, before any agent is asked."""

from __future__ import annotations

import pytest

from grapevine.cli.main import main
from grapevine.cli.preview import order_selector


@pytest.fixture
def site(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text("bundle: site/motd\nresources:\n  - file: /etc/motd\n    content: v2\n")
    return p


@pytest.mark.parametrize("extra,words", [
    ((), "--preview needs --key"),
    (("--key", "k.key", "--now"), "--now and --wait do not go with it"),
    (("--key", "k.key", "--now", "--wait"), "--now and --wait do not go with it"),
])
def test_usage_errors_exit_2(site, tmp_path, capsys, extra, words):
    code = main(["inject", str(site), "--preview", "--agent", str(tmp_path / "none.sock"), *extra])
    assert code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("targets,selector", [
    (["role=web"], "role=web"),
    (["role=web", "role=web"], "role=web"),
    (["role=web", "role=db"], "(role=db) or (role=web)"),
    (["role=web", None], ""),
    ([None], ""),
    (["a=" + "x" * 3000, "b=" + "y" * 3000], ""),  # too long to join: every node is asked and checks itself
])
def test_the_order_goes_where_any_candidate_targets(targets, selector):
    assert order_selector(targets) == selector
