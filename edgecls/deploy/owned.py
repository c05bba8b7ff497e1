"""Whether an existing `--out` is a bundle that `edgecls deploy` wrote, so that a new build may
replace it: a folder (or a .tar.gz) holds exactly the files its SHA256SUMS lists, each with that
checksum, and a bundle.json of this schema. A name alone (any folder with a bundle.json) is not
enough: a folder holding anything else, or a file changed since, is the user's and never deleted."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import IO

SUMS = "SHA256SUMS"


def _sha256(stream: IO[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _listing(text: str) -> dict[str, str] | None:
    """SHA256SUMS as {relative path: digest}, or None when it is not one deploy writes."""
    listed: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or name in listed:
            return None
        listed[name] = digest
    return listed


def _judge(listed: dict[str, str] | None, files: dict[str, str], schema: str, bundle_json: bytes | None) -> str | None:
    """Why the files are not a bundle deploy wrote (None when they are)."""
    if listed is None:
        return f"has no {SUMS} as edgecls deploy writes it"
    extra = sorted(set(files) - set(listed) - {SUMS})
    if extra:
        return f"holds files edgecls deploy did not write there ({', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''})"
    changed = sorted(name for name, digest in listed.items() if files.get(name) != digest)
    if changed:
        return f"holds files changed or removed since edgecls deploy wrote them ({', '.join(changed[:3])})"
    try:
        if json.loads(bundle_json or b"null").get("schema") != schema:
            raise ValueError
    except (ValueError, AttributeError):
        return "has no bundle.json of an edgecls bundle"
    return None


def folder_not_ours(folder: Path, schema: str) -> str | None:
    """Why `folder` is not a bundle folder that deploy wrote, or None when it is one (an empty
    folder counts as one: nothing in it can be lost)."""
    entries = sorted(folder.rglob("*"))
    if not entries:
        return None
    odd = [p for p in entries if p.is_symlink() or not (p.is_file() or p.is_dir())]
    if odd:
        return f"holds {odd[0].relative_to(folder)}, which is not a plain file"
    files = {}
    for path in entries:
        if path.is_file():
            with open(path, "rb") as f:
                files[path.relative_to(folder).as_posix()] = _sha256(f)
    sums, meta = folder / SUMS, folder / "bundle.json"
    listed = _listing(sums.read_text(encoding="utf-8", errors="replace")) if sums.is_file() else None
    return _judge(listed, files, schema, meta.read_bytes() if meta.is_file() else None)


def archive_not_ours(path: Path, schema: str) -> str | None:
    """Why the file `path` is not a .tar.gz bundle that deploy wrote, or None when it is one: one
    folder edgecls-bundle-TARGET holding exactly what its SHA256SUMS lists."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            files, listed, meta, top = {}, None, None, set()
            for member in tar:
                top.add(member.name.split("/", 1)[0])
                if member.isdir():
                    continue
                if not member.isfile() or "/" not in member.name:
                    return f"holds {member.name}, which edgecls deploy does not write"
                name = member.name.split("/", 1)[1]
                data = tar.extractfile(member)
                if name == SUMS:
                    listed = _listing(data.read().decode("utf-8", errors="replace"))
                elif name == "bundle.json":
                    meta = data.read()
                    files[name] = hashlib.sha256(meta).hexdigest()
                else:
                    files[name] = _sha256(data)
    except (OSError, tarfile.TarError, EOFError):
        return "is not a .tar.gz that edgecls deploy wrote"
    if len(top) != 1 or not next(iter(top)).startswith("edgecls-bundle-"):
        return "is not a .tar.gz that edgecls deploy wrote (one edgecls-bundle-TARGET folder)"
    return _judge(listed, files, schema, meta)


def not_ours(out: Path, schema: str, archive: bool) -> str | None:
    """Why the existing `out` must not be replaced by a new bundle (None: it may be)."""
    if out.is_symlink():
        return "is a symbolic link (give the folder or file it points to)"
    if archive:
        return "is a folder, expected a .tar.gz file name" if out.is_dir() else archive_not_ours(out, schema)
    if not out.is_dir():
        return "is a file, expected a folder (or a name ending in .tar.gz)"
    return folder_not_ours(out, schema)
