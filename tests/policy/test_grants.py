"""Publisher grants: path globs, resource types and a target ceiling, checked on every node."""

from __future__ import annotations

import pytest

from grapevine.gossip.errors import TrustError
from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.grants import DEFAULT_TYPES, Grant, glob_matches, implies, normalise
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import FORMAT, FORMAT_GRANTS, Refusal, TrustRoot, check_first_root
from grapevine.policy.trust_files import build_root, init_root, rotate

NOW = 1_800_000_000_000
ADMIN, WEB, OPS = (SigningKey(bytes([i]) * 32) for i in (41, 42, 43))
WEB_GRANT = "web/;paths=/etc/nginx/**,/srv/www/**;types=file,directory,symlink,service;target=role=web"


def root_with(*publishers, serial=1, now=NOW):
    return build_root(serial=serial, now_ms=now, expires_days=30, admins=[ADMIN.public], threshold=1,
                      publishers=[(k.public, Grant.parse(spec)) for k, spec in publishers])


def admission(*publishers):
    return Admission(init_root(root_with(*publishers), [ADMIN], NOW))


def web_bundle(resources, target="role=web", name="web/nginx"):
    return Bundle(name=name, target=target, resources=tuple(resources))


def refusal(adm, bundle, key=WEB):
    try:
        adm.verify_bundle_item(pack(bundle, key, NOW), NOW)
    except Refusal as exc:
        return exc
    return None


# -- globs and paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        ("/etc/nginx/**", "/etc/nginx", True),  # ** may match no component at all
        ("/etc/nginx/**", "/etc/nginx/sites/default", True),  # ... or several
        ("/etc/nginx/*", "/etc/nginx/nginx.conf", True),
        ("/etc/nginx/*", "/etc/nginx/sites/default", False),  # * never crosses a /
        ("/etc/*.conf", "/etc/a/b.conf", False),
        ("/srv/**/current", "/srv/current", True),
        ("/srv/**/current", "/srv/a/b/current", True),
        ("/srv/**/current", "/srv/a/b/current/x", False),
        ("/etc/nginx/**", "/etc/nginxx", False),  # a prefix of a name is not the directory
        ("/etc/ng?nx/*.conf", "/etc/nginx/a.conf", True),
    ],
)
def test_glob_semantics(pattern, path, expected):
    assert glob_matches(pattern, path) is expected


def test_paths_are_normalised_before_matching_so_dotdot_cannot_escape():
    assert normalise("/etc/nginx/../shadow") == "/etc/shadow"
    assert normalise("//etc/./nginx//x") == "/etc/nginx/x"
    assert normalise("/../../root") == "/root"  # never above /
    assert normalise("../../root/.ssh", base="/srv/www") == "/root/.ssh"
    assert not glob_matches("/etc/nginx/**", normalise("/etc/nginx/../shadow"))


def test_glob_clauses_are_checked_when_the_root_is_built():
    with pytest.raises(TrustError, match="whole path component"):
        Grant.parse("web/;paths=/srv/a**")
    with pytest.raises(TrustError, match="absolute"):
        Grant.parse("web/;paths=etc/*")
    with pytest.raises(TrustError, match="'..' components"):
        Grant.parse("web/;paths=/srv/www/../../**")
    with pytest.raises(TrustError, match="unknown resource type"):
        Grant.parse("web/;types=file,bogus")
    with pytest.raises(TrustError, match="expected paths="):
        Grant.parse("web/;pathz=/etc/**")


# -- target ceilings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "target,ceiling,inside",
    [
        ("role=web", "role=web", True),
        ("role=web and env=prod", "role=web", True),
        ("env=prod and (role=web)", "role=web", True),
        ("os=debian", "os in (debian, ubuntu)", True),
        ("os in (debian)", "os in (debian, ubuntu)", True),
        ("name=web-01", "name~=web-*", True),
        ("role=web or role=api", "role in (web, api)", True),
        ("role=web", "role=web and env=prod", False),
        (None, "role=web", False),  # no target reaches every node
        ("role=web or role=db", "role=web", False),
        ("not role=db", "role=web", False),
        ("os in (debian, arch)", "os in (debian, ubuntu)", False),
        ("name=db-01", "name~=web-*", False),
        ("role!=db", "role=web", False),
    ],
)
def test_target_ceiling_is_checked_soundly(target, ceiling, inside):
    assert implies(target, ceiling) is inside


# -- admission on every node -------------------------------------------------------------


def test_a_scoped_publisher_is_refused_outside_its_paths_types_and_ceiling():
    adm = admission((WEB, WEB_GRANT))
    ok = web_bundle([{"file": "/etc/nginx/nginx.conf", "content": "x"}, {"directory": "/srv/www"},
                     {"symlink": "/srv/www/current", "to": "releases/1"}, {"service": "nginx"}],
                    target="role=web and env=prod")
    assert refusal(adm, ok) is None
    cases = {
        "file:/root/.ssh/authorized_keys": web_bundle([{"file": "/root/.ssh/authorized_keys", "content": "k"}]),
        "exec:pwn": web_bundle([{"exec": "pwn", "command": ["/bin/true"]}]),
        "package:nmap": web_bundle([{"package": "nmap"}]),
        "symlink:/srv/www/keys": web_bundle([{"symlink": "/srv/www/keys", "to": "../../root/.ssh"}]),
        "symlink:/srv/www/abs": web_bundle([{"symlink": "/srv/www/abs", "to": "/etc/shadow"}]),
        "target": web_bundle([{"file": "/etc/nginx/x", "content": "x"}], target=None),
    }
    for what, bundle in cases.items():
        exc = refusal(adm, bundle)
        assert exc is not None and exc.reason == "OutOfScope", what
        assert what in str(exc) and "grant web/ [paths /etc/nginx/**,/srv/www/**" in str(exc), str(exc)


def test_a_grant_with_clauses_but_no_types_refuses_exec_user_package_and_group():
    adm = admission((WEB, "web/;target=role=web"))
    assert set(DEFAULT_TYPES) == {"file", "directory", "symlink", "service"}
    assert refusal(adm, web_bundle([{"file": "/anywhere", "content": "x"}])) is None  # no paths clause: any path
    for entry in ({"exec": "x", "command": ["/bin/true"]}, {"user": "eve"}, {"package": "nmap"},
                  {"group": "sudo", "ensure": "absent"}):
        exc = refusal(adm, web_bundle([entry]))
        assert exc is not None and exc.reason == "OutOfScope" and "is not granted" in str(exc)
    adm = admission((WEB, "web/;types=exec;target=role=web"))
    assert refusal(adm, web_bundle([{"exec": "x", "command": ["/bin/true"]}])) is None


def test_a_publisher_without_clauses_stays_unrestricted():
    adm = admission((WEB, "web/"))
    bundle = web_bundle([{"file": "/root/.ssh/authorized_keys", "content": "k"}, {"exec": "x", "command": ["/bin/true"]}],
                        target=None)
    assert refusal(adm, bundle) is None


def test_any_one_covering_grant_is_enough_and_refusals_name_each_grant():
    adm = admission((WEB, "web/;paths=/etc/nginx/**;target=role=web"), (WEB, "web/blog;paths=/srv/blog/**"))
    blog = web_bundle([{"file": "/srv/blog/index.html", "content": "x"}], target=None, name="web/blog")
    assert refusal(adm, blog) is None
    exc = refusal(adm, web_bundle([{"file": "/tmp/x", "content": "x"}], name="web/blog"))
    assert "grant web/ [" in str(exc) and "grant web/blog [" in str(exc)


def test_narrowing_a_grant_in_a_rotation_stops_stored_bundles_being_trusted():
    first = init_root(root_with((WEB, "web/")), [ADMIN], NOW)
    adm = Admission(first)
    item = pack(web_bundle([{"file": "/root/.ssh/authorized_keys", "content": "k"}]), WEB, NOW)
    assert adm(item, None, NOW) is None and adm.still_valid(item, NOW) is None
    second = rotate(first, root_with((WEB, WEB_GRANT), serial=2, now=NOW + 1), [ADMIN], NOW + 1)
    assert adm(second, first, NOW + 2) is None
    adm.on_accepted(second)
    assert adm.still_valid(item, NOW + 2) == "OutOfScope"


# -- the root format ---------------------------------------------------------------------


def test_old_roots_without_clauses_keep_their_exact_bytes():
    """A root with no clause is encoded as before (format 1, no grants key), so roots
    written before grants existed still load, verify and re-encode byte for byte."""
    import msgpack

    root = root_with((WEB, "web/"), (OPS, "*"))
    obj = msgpack.unpackb(root.encode(), raw=False)
    assert obj["format"] == FORMAT and "grants" not in obj
    item = init_root(root, [ADMIN], NOW)
    assert check_first_root(item) == root and TrustRoot.decode(item.payload).encode() == item.payload


def test_roots_with_clauses_round_trip_and_older_readers_are_told_the_format():
    import msgpack

    root = root_with((WEB, WEB_GRANT), (WEB, "ops/"), (OPS, "*"))
    obj = msgpack.unpackb(root.encode(), raw=False)
    assert obj["format"] == FORMAT_GRANTS and set(obj["grants"]) == {WEB.key_id}
    back = TrustRoot.decode(root.encode())
    assert back == root
    assert [g.describe() for g in back.publisher_grants(WEB.key_id)] == [
        "ops/ (unrestricted)",
        "web/ [paths /etc/nginx/**,/srv/www/**; types directory,file,service,symlink; target role=web]",
    ]
    # a grants map in a format-1 root is refused rather than ignored
    obj["format"] = FORMAT
    with pytest.raises(Exception, match="exactly the keys"):
        TrustRoot.decode(msgpack.packb(obj, use_bin_type=True))


def test_the_same_prefix_twice_with_different_clauses_is_refused():
    with pytest.raises(TrustError, match="given twice with different clauses"):
        root_with((WEB, "web/"), (WEB, "web/;types=file"))


def test_at_apply_time_a_node_outside_the_ceiling_does_not_apply_the_bundle():
    adm = admission((WEB, "web/;target=role=web"), (OPS, "ops/"))
    bundle = web_bundle([{"file": "/etc/x", "content": "x"}], target="role=web and env=prod")
    item = pack(bundle, WEB, NOW)
    assert adm.within_ceiling(item, bundle, {"role": "web", "env": "prod"})
    assert not adm.within_ceiling(item, bundle, {"role": "db", "env": "prod"})
    free = Bundle(name="ops/any", resources=({"file": "/etc/y", "content": "y"},))
    assert adm.within_ceiling(pack(free, OPS, NOW), free, {"role": "db"})  # unrestricted: no ceiling


def _reference_match(pat, got):
    """Plain recursive definition of the glob semantics, to check the fast matcher against."""
    import fnmatch

    if not pat:
        return not got
    if pat[0] == "**":
        return any(_reference_match(pat[1:], got[k:]) for k in range(len(got) + 1))
    return bool(got) and fnmatch.fnmatchcase(got[0], pat[0]) and _reference_match(pat[1:], got[1:])


def test_the_glob_matcher_agrees_with_the_plain_definition_on_random_cases():
    import random

    rng = random.Random(12)
    parts = ["a", "b", "ab", "x", "-", "]"]
    pattern_parts = ["a", "b", "*", "a*", "?", "**", "**", "x", "[ab]", "[!a]", "[]a]", "[!]]", "*b", "[+-0]"]
    for _ in range(20000):
        pat = [rng.choice(pattern_parts) for _ in range(rng.randint(0, 5))]
        got = [rng.choice(parts) for _ in range(rng.randint(0, 6))]
        expected = _reference_match(pat, got)
        assert glob_matches("/" + "/".join(pat), "/" + "/".join(got)) is expected, (pat, got)


@pytest.mark.parametrize("grants", [
    {"paths": ["/etc/**"], "target": None, "types": None},
    {"paths": None, "target": "role=web", "types": ["file"]},
])
def test_grant_maps_of_the_wrong_shape_are_refused_with_a_grapevine_error(grants):
    """Every field of a stored grant swapped for something else: a clear error or a valid root, never a crash."""
    import msgpack

    from grapevine.gossip.errors import GrapevineError

    root = root_with((WEB, "web/;types=file"))
    obj = msgpack.unpackb(root.encode(), raw=False)
    bad_values = [None, 1, "x", [], {}, ["/ok/**", 3], ["relative"], ["/a**"], ["bogus-type"], "role=", [""] * 100]
    for field in ("paths", "target", "types"):
        for value in bad_values:
            doc = dict(obj)
            doc["grants"] = {WEB.key_id: {"web/": {**grants, field: value}}}
            data = msgpack.packb(doc, use_bin_type=True)
            try:
                back = TrustRoot.decode(data)
            except GrapevineError:
                continue
            assert back.encode() == data  # accepted only in canonical form
    doc = dict(obj)
    doc["grants"] = {WEB.key_id: {"db/": grants}}  # a grant for a prefix the key was not given
    with pytest.raises(GrapevineError, match="not one of its prefixes"):
        TrustRoot.decode(msgpack.packb(doc, use_bin_type=True))


def test_at_apply_time_only_the_ceiling_of_a_grant_that_admits_the_bundle_counts():
    adm = admission((WEB, "web/;paths=/etc/**;target=role=web"), (WEB, "web/blog;paths=/srv/**;target=role=blog"))
    blog = Bundle(name="web/blog", target="role=blog", resources=({"file": "/srv/blog/index", "content": "x"},))
    item = pack(blog, WEB, NOW)
    assert refusal(adm, blog) is None
    assert adm.within_ceiling(item, blog, {"role": "blog"})
    # inside the other grant's ceiling, but that grant does not admit this bundle (its paths)
    assert not adm.within_ceiling(item, blog, {"role": "web"})
