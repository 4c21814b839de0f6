#!/usr/bin/env python3
"""Import circles between the top-level modules of each product crate.

A module `a` depends on `b` when a file of `a` names `crate::b` (in a `use`
or a path) or, from a sibling file, `super::b`. Prints every circle found
(`crate: a -> b -> a`) and exits 1 when there is one.

    scripts/module-cycles.py            the product crates
    scripts/module-cycles.py DIR...     crates of your choice
"""
import os
import re
import sys

PRODUCT = ["registry-core", "registry", "registry-etcd", "registry-consul", "registry-kubernetes",
           "registry-zookeeper", "registry-xds", "registryctl"]


def modules(src):
    """Top-level module name -> its files."""
    found = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src).split(os.sep)
            if rel[0] in ("lib.rs", "main.rs"):
                continue
            top = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
            found.setdefault(top, []).append(path)
    return found


def strip_tests(text):
    cut = text.find("#[cfg(test)]\nmod tests")
    return text if cut < 0 else text[:cut]


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for mod, files in mods.items():
        for path in files:
            text = strip_tests(open(path, encoding="utf-8").read())
            text = re.sub(r"//[^\n]*", "", text)
            names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                names.update(re.findall(r"\b([a-z_][a-z0-9_]*)\b", group))
            # A file directly under src/ reaches siblings through `super::` only from inside a folder module.
            for other in names:
                if other in mods and other != mod:
                    edges[mod].add(other)
    return edges


def cycles(edges):
    found, seen = [], set()
    for start in sorted(edges):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges[node]):
                if nxt == start:
                    key = frozenset(path)
                    if key not in seen:
                        seen.add(key)
                        found.append(path + [start])
                elif nxt not in path and nxt > start:
                    stack.append((nxt, path + [nxt]))
    return found


def main():
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crates = sys.argv[1:] or [os.path.join(top, c) for c in PRODUCT]
    bad = 0
    for crate in crates:
        src = os.path.join(crate, "src")
        if not os.path.isdir(src):
            continue
        for cycle in cycles(graph(src)):
            bad += 1
            print(f"{os.path.basename(crate)}: {' -> '.join(cycle)}")
    print(f"{bad} import circle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
