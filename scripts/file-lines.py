#!/usr/bin/env python3
"""Lines of each product source file, excluding its test module: every line
before the first `#[cfg(test)]` at the start of a line. Prints the largest
ones (`scripts/file-lines.py [N]`, default 8); the redesign keeps each under 600.
"""
import glob
import sys

PRODUCT = ["registry-core", "registry", "registry-etcd", "registry-consul", "registry-kubernetes",
           "registry-zookeeper", "registry-xds", "registryctl"]


def product_lines(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for number, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return number
    return len(lines)


def main():
    most = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    files = [f for crate in PRODUCT for f in glob.glob(f"{crate}/src/**/*.rs", recursive=True)]
    for count, path in sorted((product_lines(f), f) for f in files)[-most:]:
        print(count, path)


if __name__ == "__main__":
    main()
