#!/usr/bin/env python3
"""Module import graph of a Rust crate: reports import circles between modules ("layers only point down").

Usage: python3 scripts/layers.py CRATE_DIR [--edges] [--tests]

Reads the crate's roots (src/lib.rs, src/main.rs), follows `mod x;` declarations to map files to modules, and
collects every path that starts with `crate::`, `super::` or `self::` (in `use` trees, glob imports and code).
A path resolves to the module that defines its item: a name that a module only re-exports (`pub use a::X`) is
followed to where it comes from. Code under `#[cfg(test)]` is left out unless `--tests` is given.

An edge from module A to module B is lifted to the two children of their closest common ancestor (a use of
`crate::cache::pool::BufPool` from `source::file` is the edge `source -> cache`). Circles are strongly connected
components of these sibling graphs. An edge from a module to one of its own ancestors (a child using its
parent's items) is listed separately as "up to parent": it closes a circle with the parent's `mod child;`.

Exit status: 1 when a circle was found, else 0.
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments(text):
    """Removes comments and the contents of string and char literals (keeping line breaks)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            j = text.find("'", i + 2)
            out.append("' '")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def item_end(text, start):
    """End offset of the item starting at `start`: its closing brace or semicolon at depth 0."""
    depth = 0
    for k in range(start, len(text)):
        ch = text[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return k + 1
        elif ch == ";" and depth == 0:
            return k + 1
    return len(text)


def test_spans(text):
    """Spans of items under `#[cfg(test)]` (or `#[cfg(any(test, ...))]`)."""
    spans = []
    for m in re.finditer(r"#\[cfg\((?:any\()?test\b[^\]]*\]", text):
        spans.append((m.start(), item_end(text, m.end())))
    return spans


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [re.sub(r"as" + IDENT + "$", "", tree) if "as" in tree else tree]
    prefix, inner = tree[:brace], tree[brace + 1:tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p:
            out.extend(prefix + q for q in expand_use_tree(p))
    return out


class Crate:
    def __init__(self, src, include_tests):
        self.src = src
        self.include_tests = include_tests
        self.files = {}  # module path (tuple) -> file
        self.test_only = set()  # modules declared under `#[cfg(test)]` (and their children)
        for root in ("lib.rs", "main.rs"):
            if (src / root).exists():
                self.walk((root[:-3],), src / root, src)

    def walk(self, module, path, dir_):
        self.files[module] = path
        text = strip_comments(path.read_text())
        for m in re.finditer(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(" + IDENT + r")\s*;", text, re.M):
            name = m.group(1)
            before = text[: m.start()].rstrip()
            if module in self.test_only or re.search(r"#\[cfg\(test\)\]$", before):
                self.test_only.add(module + (name,))
            base = dir_ if path.name in ("lib.rs", "main.rs", "mod.rs") else dir_ / path.stem
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                if cand.exists():
                    sub_dir = cand.parent if cand.name == "mod.rs" else base
                    self.walk(module + (name,), cand, sub_dir)
                    break

    def uses(self, module):
        """(path, is_test, is_reexport) for each `crate::`/`super::`/`self::` path in the module's own file."""
        if module in self.test_only and not self.include_tests:
            return []
        text = strip_comments(self.files[module].read_text())
        tests = test_spans(text)
        # Inline `mod x { ... }` blocks are kept in the file's module (only tests use them here).
        found = []
        for m in re.finditer(r"\b(pub(?:\([a-z]+\))?\s+)?use\s+([^;]+);", text):
            in_test = any(a <= m.start() < b for a, b in tests)
            for p in expand_use_tree(m.group(2)):
                found.append((p, in_test, bool(m.group(1))))
        for m in re.finditer(r"(?<![:\w])((?:crate|super|self)(?:::" + IDENT + r")+)", text):
            if re.match(r"(?:pub(?:\([a-z]+\))?\s+)?use\b", text[text.rfind("\n", 0, m.start()) + 1:m.start()].strip()):
                continue  # already taken from its `use` tree
            in_test = any(a <= m.start() < b for a, b in tests)
            found.append((m.group(1), in_test, False))
        out = []
        for p, in_test, reexport in found:
            if in_test and not self.include_tests:
                continue
            segs = [s for s in p.split("::") if s]
            if not segs or segs[0] not in ("crate", "super", "self"):
                continue
            # In a test block, `super` is the file's module; that block is a child of it.
            base = module + (("tests",) if in_test and segs[0] == "super" else ())
            out.append((self.absolute(base, segs), in_test, reexport))
        return out

    def absolute(self, module, segs):
        cur = list(module)
        if segs[0] == "crate":
            cur = [module[0]]
            segs = segs[1:]
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
        return tuple(cur) + tuple(segs)

    def reexports(self, module):
        """Names a module brings in with `use` (pub or not): name -> absolute path of the source."""
        text = strip_comments(self.files[module].read_text())
        spans = test_spans(text)
        names = {}
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            if any(a <= m.start() < b for a, b in spans):
                continue
            for p in expand_use_tree(m.group(1)):
                alias = re.search(r"as(" + IDENT + ")$", p)
                segs = [s for s in re.sub(r"as" + IDENT + "$", "", p).split("::") if s]
                if not segs or segs[-1] == "*":
                    continue
                if segs[0] not in ("crate", "super", "self") and (module + (segs[0],)) in self.files:
                    segs = ["self"] + segs
                if segs[0] not in ("crate", "super", "self"):
                    continue
                names[alias.group(1) if alias else segs[-1]] = self.absolute(module, segs)
        return names

    def resolve(self, path, seen=()):
        """The module that defines the item `path` names (following re-exports)."""
        k = len(path)
        while k > 0 and path[:k] not in self.files:
            k -= 1
        if k == 0:
            return None
        module = path[:k]
        if k == len(path):
            return module
        name = path[k]
        target = self.reexports(module).get(name)
        if target and target not in seen and target != path:
            resolved = self.resolve(target + path[k + 1:], seen + (path,))
            if resolved:
                return resolved
        return module


def sccs(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def name(module):
    return "::".join(module[1:]) or module[0]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    crate = Crate(Path(args[0]) / "src", "--tests" in sys.argv)
    # witness[(a, b)] = [(from module, to module)] for lifted sibling edges a -> b
    sibling = defaultdict(lambda: defaultdict(set))
    witness = defaultdict(set)
    up = defaultdict(set)
    down = set()  # (parent, child) where the parent uses the child's items (not only re-exports them)
    for module in crate.files:
        for path, _in_test, reexport in crate.uses(module):
            target = crate.resolve(path)
            if target is None or target == module:
                continue
            if module[: len(target)] == target:
                up[(module, target)].add("::".join(path[len(target):]) or "*")
                continue
            if target[: len(module)] == module:
                if not reexport:
                    down.add((module, target[: len(module) + 1]))
                continue  # a module using its own child
            k = 0
            while module[k] == target[k]:
                k += 1
            a, b = module[: k + 1], target[: k + 1]
            sibling[module[:k]][a].add(b)
            witness[(a, b)].add((name(module), name(target)))
    if "--edges" in sys.argv:
        for (a, b), w in sorted(witness.items()):
            print(f"edge {name(a)} -> {name(b)}: " + ", ".join(f"{x}->{y}" for x, y in sorted(w)))
    circles = 0
    for parent, edges in sorted(sibling.items()):
        nodes = set(edges) | {b for bs in edges.values() for b in bs}
        for comp in sccs(nodes, edges):
            if len(comp) < 2:
                continue
            circles += 1
            print(f"circle in {name(parent)}: {{{', '.join(name(c) for c in comp)}}}")
            for a in comp:
                for b in sorted(edges.get(a, ())):
                    if b in comp:
                        via = ", ".join(f"{x} -> {y}" for x, y in sorted(witness[(a, b)]))
                        print(f"    {name(a)} -> {name(b)}  ({via})")
    # A child using its ancestor's items is the usual shape (the parent holds the trait or error type its children
    # share, and re-exports them); it is a circle when the ancestor also uses that child's items.
    for (child, parent), items in sorted(up.items()):
        back = (parent, child[: len(parent) + 1]) in down
        if back:
            circles += 1
            print(f"circle with parent: {name(child)} -> {name(parent)} ({', '.join(sorted(items))}), and back")
        elif "--edges" in sys.argv or "--up" in sys.argv:
            print(f"up to parent: {name(child)} -> {name(parent)} ({', '.join(sorted(items))})")
    print(f"{len(crate.files)} modules, {circles} circle(s), {len(up)} child-to-ancestor edge(s)")
    sys.exit(1 if circles else 0)


if __name__ == "__main__":
    main()
