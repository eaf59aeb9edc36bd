#!/usr/bin/env python3
# A copy of the workplace tool shared/tools/cycles.py (2026-12-07), kept here so that CI on a
# clean clone has it; issue 19 asks that CI runs it. Refresh it from there, never edit here.
"""Module import cycles in a Rust crate's src/: reads `crate::a::b` paths (comments and strings
stripped, roughly) and prints strongly connected groups of modules (files) and of layers
(first path segment). Usage: cycles.py SRC_DIR. Exit 0 when there are none."""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(root, f)
        rel = os.path.relpath(p, src)[:-3].replace(os.sep, "::")
        if rel.endswith("::mod"):
            rel = rel[:-5]
        if rel in ("lib", "main"):
            continue
        mods[rel] = p

def clean(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # drop #[cfg(test)] mod tests { ... } blocks: from the attribute to the end of file is a fair cut
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests", text)
    return text[: m.start()] if m else text

def resolve(path):
    parts = path.split("::")
    for k in range(len(parts), 0, -1):
        cand = "::".join(parts[:k])
        if cand in mods:
            return cand
    return None

edges = {m: set() for m in mods}
for m, p in mods.items():
    text = clean(open(p, encoding="utf-8").read())
    for g in re.finditer(r"crate::([A-Za-z_][\w:]*)(?:::\{([^}]*)\})?", text):
        base = g.group(1).rstrip(":")
        targets = [base]
        if g.group(2):
            targets = [base + "::" + t.strip().split(" ")[0].split("::{")[0] for t in g.group(2).split(",") if t.strip()]
        for t in targets:
            r = resolve(t)
            if r and r != m and not r.startswith(m + "::") and not m.startswith(r + "::"):
                edges[m].add(r)

def sccs(graph):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out

layer = lambda m: m.split("::")[0]
lgraph = {}
for a, bs in edges.items():
    for b in bs:
        if layer(a) != layer(b):
            lgraph.setdefault(layer(a), set()).add(layer(b))
fc, lc = sccs(edges), sccs(lgraph)
for c in fc:
    print("module cycle:", " <-> ".join(c))
for c in lc:
    print("layer cycle:", " <-> ".join(c))
print(f"{len(fc)} module cycles, {len(lc)} layer cycles, {len(mods)} modules")
sys.exit(1 if fc or lc else 0)
