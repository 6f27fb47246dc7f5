"""Listing a dataset folder safely: symbolic links are followed only inside its root.

A dataset folder may hold symbolic links (a class folder linked in from elsewhere in the
tree, files deduplicated by links). `walk` follows a link when its target, fully resolved,
lies inside the root (the root itself resolved too, so a root that is a link works). It
skips and reports, never reads:
  - links whose target is outside the root (like zip entries that escape the archive),
  - links that form a loop (a folder linked into itself or into one of its own subfolders),
  - entries that are neither files nor folders (sockets, FIFOs, devices),
  - dangling links (the target does not exist).
"""

import dataclasses
import os


@dataclasses.dataclass
class Listing:
  """What `walk` found, as relative POSIX paths.

  Attributes:
    files: sorted paths of the regular files (directly, or through a link inside the root).
    dirs: paths of every folder walked (a linked folder under the link's own path).
    unsafe: (path, reason) of entries refused: links leaving the root or forming a loop,
      and special files.
    dangling: (path, detail) of links whose target does not exist.
  """

  files: list = dataclasses.field(default_factory=list)
  dirs: list = dataclasses.field(default_factory=list)
  unsafe: list = dataclasses.field(default_factory=list)
  dangling: list = dataclasses.field(default_factory=list)


def _inside(path: str, root: str) -> bool:
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk(root) -> Listing:
  """Lists the files and folders under `root`, following links only inside it.

  Args:
    root: a folder.

  Returns:
    a `Listing`; every entry under `root` is in exactly one of its lists (a followed
    folder link in `dirs`).
  """
  root = os.fspath(root)
  real_root = os.path.realpath(root)
  out = Listing()

  def visit(folder: str, rel: str, chain: tuple) -> None:
    with os.scandir(folder) as entries:
      entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
      path = rel + entry.name
      if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if not os.path.exists(target):
          out.dangling.append((path, f"link to {os.readlink(entry.path)}, which does not "
                                     "exist"))
          continue
        if not _inside(target, real_root):
          out.unsafe.append((path, "symbolic link to a path outside the dataset root"))
          continue
        if os.path.isdir(target):
          if any(_inside(step, target) for step in chain):
            out.unsafe.append((path, "symbolic link loop (links to a folder above it)"))
            continue
          out.dirs.append(path)
          visit(entry.path, path + "/", chain + (target,))
        elif os.path.isfile(target):
          out.files.append(path)
        else:
          out.unsafe.append((path, "link to a special file (not a regular file)"))
      elif entry.is_dir(follow_symlinks=False):
        out.dirs.append(path)
        visit(entry.path, path + "/", chain + (os.path.realpath(entry.path),))
      elif entry.is_file(follow_symlinks=False):
        out.files.append(path)
      else:
        out.unsafe.append((path, "special file (not a regular file)"))

  visit(root, "", (real_root,))
  out.files.sort()
  return out
