#!/usr/bin/python3
"""Writes testdata/*.json, the fixtures of fixtures.py as single objects the
way the API serves them in watch events (with the metadata the server adds),
for the C decoding tests. Run with PYTHONHASHSEED=0 so the output is stable:
  PYTHONHASHSEED=0 /usr/bin/python3 tests/k8s/make_testdata.py
"""

import json
from pathlib import Path

import fixtures as fx

OUT = Path(__file__).resolve().parent / "testdata"


def served(obj, rv, uid):
    obj["metadata"].update({"resourceVersion": str(rv), "uid": uid, "creationTimestamp": "2026-12-05T10:00:00Z"})
    return obj


def main():
    web = fx.pod("demo", "web-7d9f8b6c5d-x2v9q", "web", "node-1", ["10.244.1.5", "fd00:10:244:1::5"])
    objects = {
        "pod.json": served(web, 1201, "0f5a7c1e-2b3d-4e6f-8a9b-0c1d2e3f4a5b"),
        "pod-terminating.json": served(fx.terminating(web), 1250, "0f5a7c1e-2b3d-4e6f-8a9b-0c1d2e3f4a5b"),
        "pod-pending.json": served(fx.pod("demo", "db-5c4b3a2918-qq7rt", "db", "", [], phase="Pending", ready=False),
                                   1202, "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"),
        "service.json": served(fx.service("demo", "web", ["10.96.0.20", "fd00:96::20"], [("http", 80, 8080), ("grpc", 9090, "grpc")]),
                               1100, "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"),
        "endpointslice.json": served(fx.endpointslice("demo", "web", "abc12", "IPv4",
                                                      [("web-7d9f8b6c5d-x2v9q", "10.244.1.5", "node-1", True),
                                                       ("web-7d9f8b6c5d-k8j7h", "10.244.2.9", "node-2", False)],
                                                      [("http", 8080), ("grpc", 9090)]),
                                     1300, "3c4d5e6f-7a8b-4c9d-0e1f-2a3b4c5d6e7f"),
        "namespace.json": served(fx.namespace("demo"), 17, "4d5e6f7a-8b9c-4d0e-1f2a-3b4c5d6e7f8a"),
        "node.json": served(fx.NODE_1, 40, "5e6f7a8b-9c0d-4e1f-2a3b-4c5d6e7f8a9b"),
        "node-dual-stack.json": served(fx.NODE_2, 41, "6f7a8b9c-0d1e-4f2a-3b4c-5d6e7f8a9b0c"),
        "node-no-cidrs.json": served(fx.NODE_3, 42, "7a8b9c0d-1e2f-4a3b-4c5d-6e7f8a9b0c1d"),
        "node-legacy.json": served(fx.NODE_OLD, 43, "8b9c0d1e-2f3a-4b4c-5d6e-7f8a9b0c1d2e"),
    }
    OUT.mkdir(exist_ok=True)
    for name, obj in objects.items():
        (OUT / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
