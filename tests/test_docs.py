"""The README and docs/ hold together: relative links resolve (files and #anchors), the
doctest blocks run and print what they say, and no file names the private design note.

A doctest block is a fenced code block whose first non-blank line starts with ">>>" or whose
info string contains "doctest". Anchors follow the code host's heading slugs (lower case,
punctuation other than "-" and "_" dropped, spaces to "-", "-1", "-2", ... for repeats).
"""

import doctest
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
# The private design note's name, built so that this file does not contain it.
_NOTE = "FACTS"
_NOTE_REFERENCE = re.compile((_NOTE + r"(\.md|\s+s\.\s?\d)").encode())


def split_blocks(text: str):
  """(prose lines with fenced code blanked out, [(first line number, info, code)])."""
  prose, blocks = [], []
  fence = None
  for number, line in enumerate(text.splitlines(), 1):
    match = _FENCE.match(line)
    if fence is None and match:
      fence, info, start, body = match.group(2), match.group(3).strip(), number + 1, []
      prose.append("")
    elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and \
        not line.strip().strip(fence[0]):
      blocks.append((start, info, "\n".join(body) + "\n"))
      fence = None
      prose.append("")
    elif fence is not None:
      body.append(line)
      prose.append("")
    else:
      prose.append(line)
  return prose, blocks


def slug(heading: str) -> str:
  """The code host's anchor of a heading text (inline code and links reduced to text)."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
  text = text.replace("`", "").strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
  """Every heading anchor of a Markdown file."""
  prose, _ = split_blocks(path.read_text(encoding="utf-8"))
  seen, out = {}, set()
  for line in prose:
    match = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not match:
      continue
    base = slug(match.group(1))
    count = seen.get(base, 0)
    seen[base] = count + 1
    out.add(base if count == 0 else f"{base}-{count}")
  return out


def relative_links(path: pathlib.Path):
  """[(line number, target)] of the relative links and images outside code."""
  prose, _ = split_blocks(path.read_text(encoding="utf-8"))
  out = []
  for number, line in enumerate(prose, 1):
    line = _INLINE_CODE.sub("", line)
    for match in _LINK.finditer(line):
      target = match.group(1)
      if not _EXTERNAL.match(target):
        out.append((number, target))
  return out


def _name(path: pathlib.Path) -> str:
  try:
    return str(path.relative_to(ROOT))
  except ValueError:
    return path.name


def broken_links(path: pathlib.Path) -> list:
  """'file:line: target (why)' for every relative link of `path` that does not resolve."""
  bad = []
  for number, target in relative_links(path):
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    where = f"{_name(path)}:{number}: {target}"
    if not dest.exists():
      bad.append(f"{where} (no such file)")
    elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
      bad.append(f"{where} (no heading with that anchor in {dest.name})")
  return bad


def doctest_blocks():
  """pytest params, one per doctest block of the README and docs/."""
  params = []
  for path in DOC_FILES:
    _, blocks = split_blocks(path.read_text(encoding="utf-8"))
    for start, info, code in blocks:
      first = next((l.strip() for l in code.splitlines() if l.strip()), "")
      if first.startswith(">>>") or "doctest" in info:
        name = f"{path.relative_to(ROOT)}:{start}"
        params.append(pytest.param(name, code, start, id=name))
  return params


def test_the_link_checker_finds_broken_links(tmp_path):
  (tmp_path / "other.md").write_text("# Title here\n\n## A `code` (part/one.py)\n")
  page = tmp_path / "page.md"
  page.write_text(
      "# Top\n[ok](other.md) [ok](other.md#a-code-partonepy) [ok](#top)\n"
      "[gone](missing.md) [bad anchor](other.md#nothing) [web](https://x.org/a)\n"
      "`[in code](missing2.md)`\n```\n[in a block](missing3.md)\n```\n")
  bad = broken_links(page)
  assert [b.split(": ", 1)[1] for b in bad] == [
      "missing.md (no such file)",
      "other.md#nothing (no heading with that anchor in other.md)"]


def test_slugs_follow_the_code_host():
  assert slug("Metrics of a pair (`jaxdrift/metrics/drift.py`)") == \
      "metrics-of-a-pair-jaxdriftmetricsdriftpy"
  assert slug("The two Grad-CAM++ variants") == "the-two-grad-cam-variants"
  assert slug("A run on 2026-12-04") == "a-run-on-2026-12-04"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
  assert broken_links(path) == []


def test_the_docs_hold_doctests():
  names = [p.values[0] for p in doctest_blocks()]
  assert any(n.startswith("docs/metrics.md") for n in names), names


@pytest.mark.parametrize("name,code,start", doctest_blocks())
def test_doctest_block(name, code, start):
  test = doctest.DocTestParser().get_doctest(code, {}, name, name, start - 1)
  assert test.examples, f"{name}: a doctest block without examples"
  report = []
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
  result = runner.run(test, out=report.append)
  assert result.failed == 0, "".join(report)


def _tracked_files():
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout: the repository's files are unknown")
  return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_file_names_the_private_design_note():
  naming = [str(p.relative_to(ROOT)) for p in _tracked_files()
            if p.is_file() and _NOTE_REFERENCE.search(p.read_bytes())]
  assert naming == [], f"these files cite {_NOTE}: cite docs/<name>.md instead"
