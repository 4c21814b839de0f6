"""A proxyless grpcio client driven by the registry-xds tests.

The same line protocol as ../grpc-go/main.go: one channel to the xDS target
given as the argument (xds:///<name>; the bootstrap from
GRPC_XDS_BOOTSTRAP_CONFIG), raw-bytes unary calls (no code generation),
commands on stdin, one JSON line per command on stdout:

    call METHOD COUNT
    until METHOD absent|present ID TIMEOUT_MS
    quit
"""

import json
import sys
import time

import grpc


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: xds_client.py xds:///<target>", file=sys.stderr)
        return 2
    channel = grpc.insecure_channel(sys.argv[1])
    stubs = {}

    def call(method):
        stub = stubs.get(method)
        if stub is None:
            # No serializers: request and response are bytes as they are.
            stub = stubs[method] = channel.unary_unary(method)
        try:
            return stub(b"ping", timeout=5).decode(), None
        except grpc.RpcError as error:
            return None, error.code().name

    def answer(value):
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "call":
            ok, errors = {}, {}
            for _ in range(int(fields[2])):
                instance, code = call(fields[1])
                if code is None:
                    ok[instance] = ok.get(instance, 0) + 1
                else:
                    errors[code] = errors.get(code, 0) + 1
            answer({"ok": ok, "errors": errors})
        elif len(fields) == 5 and fields[0] == "until":
            method, state, wanted, timeout_ms = fields[1], fields[2], fields[3], int(fields[4])
            start = time.monotonic()
            last_hit, misses, done = -1.0, 0, False
            while not done and time.monotonic() - start < timeout_ms / 1000:
                began = time.monotonic() - start
                instance, _ = call(method)
                hit = instance == wanted
                if state == "present" and hit:
                    last_hit, done = began, True
                elif state == "absent" and hit:
                    last_hit, misses = began, 0
                elif state == "absent":
                    misses += 1
                    done = misses >= 200
            if done:
                answer({"elapsed_ms": max(last_hit, 0.0) * 1000})
            else:
                answer({"error": "timeout"})
        elif fields == ["quit"]:
            break
        else:
            answer({"error": "unknown command: " + line.strip()})
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
