#!/usr/bin/python3
"""Prints "PASSED FAILED" summed over JUnit XML files (Bazel's test.xml from
googletest, pytest's --junitxml). A file that cannot be parsed counts as one
failure, so a crashed suite can never read as green."""
import sys
import xml.etree.ElementTree as ET


def count(path):
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return 0, 1
    passed = failed = 0
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        else:
            passed += 1
    return passed, failed


def main(paths):
    passed = failed = 0
    for p in paths:
        a, b = count(p)
        passed += a
        failed += b
    print(passed, failed)


if __name__ == "__main__":
    main(sys.argv[1:])
