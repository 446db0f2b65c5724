"""DataLad / git-annex file layouts made by hand, for tests that must run without git-annex.

`annex(path)` does what `git annex add` does to a file: the content moves to
`<root>/.git/annex/objects/<2>/<2>/<key>/<key>` (key `SHA256E-s<size>--<sha256><ext>`, file
mode 0444, folders 0555 as git-annex leaves them) and the file becomes a relative symlink to
it. `drop(path)` removes the content (the link then dangles, as after `git annex drop`);
`unlock_unfetched(path)` replaces the file with the pointer file an unlocked, un-fetched
annexed file is (`/annex/objects/<key>`). Real git-annex repositories are used by
tests/test_annex.py when `git-annex` is installed.
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
READ_ONLY_DIR = READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def annex_key(path: Path) -> str:
    """git-annex's SHA256E key of a file's content."""
    content = path.read_bytes()
    extension = "".join(path.suffixes)
    return f"SHA256E-s{len(content)}--{hashlib.sha256(content).hexdigest()}{extension}"


# git-annex's "hashdirmixed" object folders: the first little-endian 32-bit word of the key's
# md5, one character of this alphabet per 6-bit step (its low 5 bits), characters swapped in
# pairs; the first four give `xx/yy`. Checked against git-annex 10.20230126 (e.g. qV/89). Tools such as the BIDS
# validator find an annexed file's content by this path, not through the link.
_HASH_CHARS = "0123456789zqjxkmvwgpfZQJXKMVWGPF"


def hash_dirs(key: str) -> str:
    """`xx/yy`: the two object folders git-annex uses for `key`."""
    word = struct.unpack("<4I", hashlib.md5(key.encode()).digest())[0]
    chars = [_HASH_CHARS[(word >> (6 * i)) & 31] for i in range(4)]
    return f"{chars[1]}{chars[0]}/{chars[3]}{chars[2]}"


def _object_path(root: Path, key: str) -> Path:
    return root / ".git" / "annex" / "objects" / hash_dirs(key) / key / key


def annex(root: Path, path: Path) -> Path:
    """Move `path`'s content into the annex of the dataset at `root`; return the object."""
    key = annex_key(path)
    obj = _object_path(root, key)
    if obj.exists():  # the same content is stored once, as git-annex does
        path.unlink()
    else:
        obj.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, obj)
        os.chmod(obj, READ_ONLY_FILE)
        os.chmod(obj.parent, READ_ONLY_DIR)
    path.symlink_to(os.path.relpath(obj, path.parent))
    return obj


def annex_all(root: Path, pattern: str = "*.nii.gz") -> list[Path]:
    """Annex every file matching `pattern` under the `sub-*` folders of `root`."""
    return [annex(root, path) for path in sorted(root.glob(f"sub-*/**/{pattern}"))]


def read_only(root: Path) -> None:
    """Make the whole dataset read-only, as a clone on a read-only mount (root ignores it)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            os.chmod(path, READ_ONLY_DIR if path.is_dir() else READ_ONLY_FILE)
    os.chmod(root, READ_ONLY_DIR)


def drop(path: Path) -> None:
    """Remove the annexed content behind the link `path` (it then dangles, as every link
    to the same content does)."""
    obj = path.resolve()
    if not obj.exists():
        return
    os.chmod(obj.parent, READ_ONLY_DIR | stat.S_IWUSR)
    obj.unlink()


def unlock_unfetched(path: Path) -> None:
    """Turn `path` into the pointer file of an unlocked annexed file whose content is absent."""
    key = annex_key(path.resolve()) if path.is_symlink() else annex_key(path)
    path.unlink()
    path.write_text(f"/annex/objects/{key}\n")
