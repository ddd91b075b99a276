"""The book's rules, checked on its sources without building it.

* A chapter page (``book/0*.md``) quotes no measured number by hand: every number that looks like a result
  (a unit, a percentage, a speed-up, a decimal, a thousands-separated count) comes from a ``{glue...}`` role, sits
  in a sentence that cites its source (``{cite}``), in code, or on the allow-list below with its reason.
* Every ``{glue...}`` key a page or a notebook's markdown uses is glued by the notebook it names.
* Every module of ``src/ufkit`` has its ``automodule`` in ``book/api.md``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("0*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))

# Numbers a chapter page may write by hand: not measurements of this machine, and not cited in their sentence.
# Each entry: (page glob relative to the repository, the exact text that may stay, why). The text must contain
# the flagged number; the entry allows that text wherever it occurs on the matching pages. Keep the list short:
# a number the notebook computes is glued, a figure from a paper goes in a sentence with {cite}.
ALLOWED: list[tuple[str, str, str]] = [
    ("book/0*.md", "3,072", "BERT-base's feedforward width (Devlin et al. 2019): a design constant, not a result"),
    ("book/0[16]_*.md", "4,095",
     "UltraFastBERT-1x11's width, one tree of depth 11 (2**12 - 1 neurons): a design constant of the paper"),
]

_UNIT = (r"%|×|x|ms|µs|us|s|sec|seconds?|min|minutes?|h|hours?|seq/s|sequences/s|it/s|MB|GB|kB|KB|KiB|MiB|GiB"
         r"|[kMG]?FLOPs?|[kMG]FLOP|points?|pp|times|M|k")
# a number with a unit ("27.2 ms", "3.07x", "10 %", "1,000 points"), a decimal ("88.9"), a count with thousands
# separators ("67,349"); a number glued to letters or an underscore on its left (L3, 1x11, fp32, 00_baseline) is a
# name, not a quantity.
NUMBER = re.compile(
    r"(?<![\w.])(?:"
    r"\d[\d,]*(?:\.\d+)?\s*(?:" + _UNIT + r")(?![\w/])"
    r"|\d+\.\d+(?![\w.])"
    r"|\d{1,3}(?:,\d{3})+(?![\d])"
    r")"
)

# In a table row, a cell that is a bare integer is a result as well ("| 130 |").
TABLE_INT = re.compile(r"(?<=\|)\s*(\d+)\s*(?=\|)")

# Spans removed before looking for numbers: glue and every other role, code, math, links' targets, comments,
# arXiv identifiers (which are citations, not quantities).
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")
_CODE = re.compile(r"``.+?``|`[^`]*`")
_MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_ARXIV = re.compile(r"arXiv:\s?\d{4}\.\d{4,5}(v\d+)?", re.I)
_CITE = re.compile(r"\{cite(:[\w]+)?\}`[^`]*`")
# A sentence ends at . ! ? before a capital or markup, at a blank line, and before a table row, a list item or a
# heading (so a {cite} in one row of a table does not excuse the others).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(*_\[{`\"'])|\n\s*\n|\n(?=\s*(?:\||[-*+] |\d+\. |#))")

# Fenced blocks whose body is prose and is checked (admonitions, figures); any other fence is code and skipped.
_PROSE_DIRECTIVES = {"note", "tip", "warning", "important", "caution", "attention", "admonition", "seealso",
                     "glue:figure", "figure", "margin", "sidebar", "dropdown", "epigraph", "topic", "hint"}
_FENCE = re.compile(r"^\s*(`{3,}|:{3,})\s*(\{([\w:.-]+)\})?")


@dataclass
class Hit:
    path: str  # relative to the repository
    line: int
    number: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.number!r} in: {self.text.strip()}"


def _blank(match: re.Match) -> str:
    """The same length of spaces, newlines kept, so offsets still map to lines."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _prose(lines: list[str]) -> list[str]:
    """The page's lines with code fences, math blocks, directive options and comment lines blanked."""
    out, fences, in_math = [], [], False
    for line in lines:
        stripped = line.strip()
        m = _FENCE.match(line)
        closes = (fences and m and not m.group(2) and stripped == m.group(1)
                  and m.group(1)[0] == fences[-1][0][0] and len(m.group(1)) >= len(fences[-1][0]))
        if closes:
            fences.pop()
            line = ""
        elif m and (not fences or fences[-1][1]):  # a fence opens (inside code, nothing opens)
            fences.append((m.group(1), m.group(3) in _PROSE_DIRECTIVES))
            line = ""
        elif fences and not fences[-1][1]:  # code
            line = ""
        elif in_math:
            in_math = not stripped.endswith("$$")
            line = ""
        elif stripped.startswith("$$"):
            in_math = not (len(stripped) > 2 and stripped.endswith("$$"))
            line = ""
        elif stripped.startswith("%") or (fences and re.match(r"\s*:[\w-]+:", line)):  # comment, directive option
            line = ""
        out.append(line)
    return out


def _allowed(rel: str, text: str, start: int, end: int) -> tuple[str, str, str] | None:
    for entry in ALLOWED:
        pattern, snippet, _ = entry
        if fnmatch.fnmatch(rel, pattern) and any(m.start() <= start and end <= m.end()
                                                 for m in re.finditer(re.escape(snippet), text)):
            return entry
    return None


def number_hits(path: Path, root: Path = ROOT, used: set | None = None) -> list[Hit]:
    """Numbers on a page that are neither glued, cited, code, math nor allowed; ``used`` collects ALLOWED hits."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    text = "\n".join(_prose(lines))
    for pattern in (_COMMENT, _ARXIV, _LINK_TARGET):
        text = pattern.sub(_blank, text)
    line_starts = [m.end() for m in re.finditer(r"\n", text)]
    bounds = [0] + [b for m in _SENTENCE_END.finditer(text) for b in (m.start(), m.end())] + [len(text)]
    hits = []
    for start, end in zip(bounds[::2], bounds[1::2]):
        sentence = text[start:end]
        if _CITE.search(sentence):
            continue
        for pattern in (_ROLE, _CODE, _MATH):
            sentence = pattern.sub(_blank, sentence)
        found = list(NUMBER.finditer(sentence))
        if sentence.lstrip().startswith("|"):
            found += [m for m in TABLE_INT.finditer(sentence)
                      if not any(n.start() <= m.start(1) < n.end() for n in found)]
        for m in sorted(found, key=lambda m: m.start()):
            m_start, m_end = (m.start(1), m.end(1)) if m.re is TABLE_INT else (m.start(), m.end())
            a, b = start + m_start, start + m_end
            entry = _allowed(rel, text, a, b)
            if entry is not None:
                if used is not None:
                    used.add(entry)
                continue
            line = sum(1 for s in line_starts if s <= a)
            hits.append(Hit(rel, line + 1, text[a:b], lines[line]))
    return hits


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.name)
def test_chapter_quotes_no_number_by_hand(page):
    hits = number_hits(page)
    if hits:
        pytest.fail(
        f"{len(hits)} number(s) on {page.relative_to(ROOT)} look measured but are written by hand. Glue each from "
        "the notebook (glue(\"key\", value, display=False) there, {glue:text}`../notebooks/NN_x.py::key:.2f` "
        "here), cite its source in the same sentence ({cite}`key`), put it in code, or add it to ALLOWED in "
        "tests/test_book.py with the reason:\n" + "\n".join(map(str, hits)), pytrace=False)


def test_allow_list_entries_are_used():
    used: set = set()
    for page in CHAPTERS:
        number_hits(page, used=used)
    stale = [entry for entry in ALLOWED if entry not in used]
    assert not stale, "ALLOWED entries that match nothing any more (remove them):\n" + "\n".join(map(str, stale))


def test_number_pattern():
    flagged = ["27.2 ms", "3.07x", "2.5×", "10 %", "88.9", "67,349", "130 seq/s", "91.6 MB", "0.6 points",
               "7.7 minutes", "12 s", "1.53 times"]
    kept = ["L3-H256-F768", "1x11", "fp32", "00_baseline", "chapter 4", "batch 32", "torch 2", "12 sentences"]
    for s in flagged:
        assert NUMBER.search(s), s
    for s in kept:
        assert not NUMBER.search(s), s


def test_number_check_skips_glue_cite_code_and_math(tmp_path):
    page = tmp_path / "book" / "09_x.md"
    page.parent.mkdir()
    page.write_text(
        "Glued: {glue:text}`../notebooks/09_x.py::acc:.2f` % and code `3.5 ms`.\n"
        "The paper reports 78x on CPU {cite}`belcak2023exponentially`. Ours ran 12.5 ms.\n"
        "Math $4.5 n^2$ stays.\n\n```python\nx = 3.14\n```\n\n"
        ":::{note}\nA note says 2.5 ms.\n:::\n\n| layers | seq/s |\n|---|---|\n| 6 | {glue:text}`nb.py::t:.0f` |\n",
        encoding="utf-8")
    hits = number_hits(page, root=tmp_path)
    assert [(h.line, h.number) for h in hits] == [(2, "12.5 ms"), (10, "2.5 ms"), (15, "6")]


# ---- glue keys -----------------------------------------------------------------------------------------------

# {glue}`key`, {glue:text}`path::key:fmt`, ... and the directives ```{glue} key``` / ```{glue:figure} key```.
_GLUE_ROLE = re.compile(r"\{glue(?::(\w+))?\}`([^`]+)`")
_GLUE_DIRECTIVE = re.compile(r"^\s*(?:#\s*)?(?:`{3,}|:{3,})\{glue(?::(\w+))?\}\s+(\S+)")
# glue("key", ...), wrappers named like it, and ufkit.measure.report.put("key", ...); f-string keys become patterns.
_GLUE_CALL = re.compile(r"""\b(?:\w*glue\w*|put)\(\s*(f?)(["'])(.+?)\2""")
_STRING = re.compile(r"""(?<![\w"'])(["'])([\w.-]+)\1""")


def glued_keys(notebook: Path) -> tuple[set[str], list[re.Pattern]]:
    """Keys a notebook glues: literal ones, and f-string keys as patterns (``f"acc_{name}"`` -> ``acc_.+``).

    Keys glued in a loop over a dict (``for key, value in {"n": n}.items(): glue(key, value)``) are found as the
    notebook's string literals: every identifier-like string in the notebook counts as a key it may glue.
    """
    source = notebook.read_text(encoding="utf-8")
    literal, patterns = {m.group(2) for m in _STRING.finditer(source)}, []
    for f, _, key in _GLUE_CALL.findall(source):
        if f and "{" in key:
            parts = re.split(r"\{[^}]*\}", key)
            patterns.append(re.compile(".+".join(map(re.escape, parts)) + r"\Z"))
        else:
            literal.add(key)
    return literal, patterns


def parse_glue(kind: str, content: str) -> tuple[str | None, str, bool]:
    """(notebook path or None, key, format spec missing) of a glue role's content, read as myst-nb 1.4 reads it.

    ``{glue:text}`` splits its content at the LAST colon for the format spec first, then looks for ``path::``; so
    ``path::key`` without a format spec reads as the key ``"path:"`` in the page itself. Other kinds take
    ``path::key`` or ``key``.
    """
    keypart = content
    if kind == "text" and ":" in content:
        keypart = content.rsplit(":", 1)[0]
    if "::" in keypart:
        doc, key = keypart.split("::", 1)
        return doc, key, False
    if "::" in content:  # {glue:text}`path::key` without a format spec
        doc, key = content.split("::", 1)
        return doc, key, True
    return None, keypart, False


def glue_uses(path: Path) -> list[tuple[int, str, str | None, str, bool]]:
    """(line, kind, notebook path or None, key, format spec missing) of every glue role and directive in a file.

    A directive names its notebook with a ``:doc:`` option (```` ```{glue} key ```` then ``:doc: ../nb.py``).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    uses = []
    for i, line in enumerate(lines, 1):
        uses += [(i, kind or "any", *parse_glue(kind or "any", c)) for kind, c in _GLUE_ROLE.findall(line)]
        for kind, key in _GLUE_DIRECTIVE.findall(line):
            doc = None
            for option in lines[i:]:
                m = re.match(r"\s*(?:#\s*)?:([\w-]+):\s*(.*)", option)
                if not m:
                    break
                if m.group(1) == "doc":
                    doc = m.group(2).strip()
            uses.append((i, "directive:" + (kind or "any"), doc, key, False))
    return uses


def _pages_and_notebooks():
    return sorted((ROOT / "book").glob("*.md")) + NOTEBOOKS


@pytest.mark.parametrize("source", _pages_and_notebooks(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_glue_keys_exist_in_the_notebook_they_name(source):
    problems = []
    for line, kind, doc, key, no_format in glue_uses(source):
        where = f"{source.relative_to(ROOT)}:{line}"
        if no_format:
            problems.append(f"{where}: {{glue:text}}`{doc}::{key}` needs a format spec (`{doc}::{key}:s`, "
                            f"`:.2f`...): myst-nb splits at the last colon first and would look for the key "
                            f"{doc + ':'!r} in this document")
            continue
        if doc is None:
            if source.suffix == ".md":
                problems.append(f"{where}: glue key {key!r} names no notebook: a page writes "
                                f"`../notebooks/NN_topic.py::{key}` in a role, `:doc: ../notebooks/NN_topic.py` "
                                "under a directive")
                continue
            notebook = source
        else:
            notebook = ROOT / doc.lstrip("/") if doc.startswith("/") else (source.parent / doc).resolve()
            if not notebook.is_file():
                problems.append(f"{where}: glue path {doc!r} is not a file ({notebook})")
                continue
        literal, patterns = glued_keys(notebook)
        if key not in literal and not any(p.match(key) for p in patterns):
            problems.append(f"{where}: glue key {key!r} is not glued by {notebook.relative_to(ROOT)}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_glue_parsing():
    assert parse_glue("text", "../notebooks/00_baseline.py::acc:.2f") == ("../notebooks/00_baseline.py", "acc", False)
    assert parse_glue("text", "acc:.1f") == (None, "acc", False)
    assert parse_glue("text", "acc") == (None, "acc", False)
    assert parse_glue("text", "nb.py::acc") == ("nb.py", "acc", True)
    assert parse_glue("any", "nb.py::table") == ("nb.py", "table", False)
    assert parse_glue("directive:figure", "fig") == (None, "fig", False)


def test_glue_directive_doc_option(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("```{glue:figure} fig\n:doc: ../notebooks/x.py\n:name: f\n```\n```{glue} t\n```\n")
    assert glue_uses(page) == [(1, "directive:figure", "../notebooks/x.py", "fig", False),
                               (5, "directive:any", None, "t", False)]


# ---- API reference -------------------------------------------------------------------------------------------

def package_modules() -> list[str]:
    src = ROOT / "src"
    mods = []
    for path in sorted((src / "ufkit").rglob("*.py")):
        if path.name == "__main__.py" or any(part.startswith("_") and part != "__init__.py"
                                             for part in path.relative_to(src).parts):
            continue
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods.append(".".join(parts))
    return mods


def test_every_module_is_in_the_api_reference():
    api = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. automodule:: ([\w.]+)\s*$", api, re.M))
    modules = set(package_modules())
    assert modules - documented == set(), f"add to book/api.md: {sorted(modules - documented)}"
    assert documented - modules == set(), f"book/api.md documents modules that do not exist: " \
                                          f"{sorted(documented - modules)}"
