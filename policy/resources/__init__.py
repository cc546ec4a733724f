"""Resource types, one module per family, and the registry that reads an entry.

An entry is a mapping such as ``{"file": "/etc/motd", "content": "hi"}``.
Bundles store maps key-sorted, so the type is found by which key names a
known type, never by position. A type name can also be an attribute
(``group`` of a file or a user): an entry's type is then the type key whose
remaining keys are all attributes of that type.

Attributes (every type also takes ``require``, ``notify`` and ``when``):

- ``file: PATH`` — ensure present|absent, content | source (attached file;
  rendered when it ends in .j2 or ``template: true``), template, mode,
  owner, group.
- ``directory: PATH`` — ensure, mode, owner, group, force (remove a tree).
- ``symlink: PATH`` — to, ensure, force (replace a directory).
- ``package: NAME`` — provider apt|pip, ensure present|absent, version,
  source (.deb / wheel path under the root), virtualenv (pip).
- ``service: UNIT`` — running, enabled, reload (notify reloads).
- ``user: NAME`` — ensure, uid, group, groups, home, shell, comment, system.
- ``group: NAME`` — ensure, gid, system.
- ``exec: NAME`` — command (argv list or shell string), creates, onlyif,
  unless, timeout, cwd, env, refresh_only, returns.
"""

from __future__ import annotations

from typing import Any, Mapping

from grapevine.gossip.errors import PolicyError

from .accounts import GroupResource, UserResource
from .base import COMMON_ATTRS, Attr, Change, Context, Converged, Resource, ResourceError, ref_list
from .execs import ExecResource
from .files import DirectoryResource, FileResource, SymlinkResource, sync_written
from .packages import PackageResource
from .services import ServiceResource

__all__ = [
    "TYPES", "Attr", "Change", "Context", "Converged", "Resource", "ResourceError",
    "entry_type", "build", "ref_list", "finish",
]

TYPES: dict[str, type[Resource]] = {
    cls.TYPE: cls
    for cls in (
        FileResource, DirectoryResource, SymlinkResource, PackageResource,
        ServiceResource, UserResource, GroupResource, ExecResource,
    )
}


def entry_type(entry: Mapping[str, Any]) -> str:
    """Which resource type an entry declares; PolicyError if none or unclear."""
    candidates = [k for k in entry if k in TYPES]
    if len(candidates) > 1:
        fitting = [
            t for t in candidates
            if all(k == t or k in COMMON_ATTRS or k in TYPES[t].ATTRS for k in entry)
        ]
        if len(fitting) == 1:
            return fitting[0]
        # None fits (a misspelt attribute too): the type is the key that is
        # not an attribute of another named type (`file` + `group` is a file).
        primary = [t for t in candidates if not any(t in TYPES[o].ATTRS for o in candidates if o != t)]
        if not fitting and len(primary) == 1:
            return primary[0]
        raise PolicyError(f"entry names several resource types ({', '.join(sorted(candidates))}); give one per entry")
    if candidates:
        return candidates[0]
    every_attr = set(COMMON_ATTRS).union(*(cls.ATTRS for cls in TYPES.values()))
    unknown = sorted(k for k in entry if k not in every_attr)
    if unknown:
        raise PolicyError(f"unknown resource type {unknown[0]!r} (known: {', '.join(sorted(TYPES))})")
    raise PolicyError(f"entry has no resource type (one of {', '.join(sorted(TYPES))})")


def build(entry: Mapping[str, Any], *, bundle: str, files: Mapping[str, bytes]) -> Resource:
    """Validate one entry and build its resource (PolicyError naming the reason)."""
    rtype = entry_type(entry)
    cls = TYPES[rtype]
    name, attrs = cls.validate(entry[rtype], entry)
    res = cls(name=name, attrs=attrs, bundle=bundle, files=files)
    if isinstance(res, FileResource):
        res.check_files(files)
    return res


def finish(ctx: Context) -> None:
    """End of a converge: flush what providers wrote without syncing each time."""
    sync_written(ctx)
