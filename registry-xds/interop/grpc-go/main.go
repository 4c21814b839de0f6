// Command xds-grpc-go-client is a proxyless grpc-go client driven by the
// registry-xds tests: one channel to the xDS target given as its argument
// (xds:///<name>, the bootstrap from GRPC_XDS_BOOTSTRAP_CONFIG), raw-bytes
// unary calls, commands on stdin and one JSON line per command on stdout.
//
//	call METHOD COUNT
//	    COUNT sequential calls; prints {"ok":{"<instance id>":n,...},"errors":{"<code>":n,...}}
//	until METHOD absent|present ID TIMEOUT_MS
//	    calls until ID stops answering (absent: 200 calls in a row without it)
//	    or answers (present); prints {"elapsed_ms":x} where x is when the
//	    last call that reached it (absent) or the first one (present) started,
//	    counted from the command, or {"error":"timeout"}
//	quit
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver and balancers
)

// rawCodec sends and receives message bytes as they are: no code generation.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "raw" }

func call(conn *grpc.ClientConn, method string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	request := []byte("ping")
	var reply []byte
	err := conn.Invoke(ctx, method, &request, &reply, grpc.ForceCodecV2(rawCodec{}))
	return string(reply), err
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: xds-grpc-go-client xds:///<target>")
		os.Exit(2)
	}
	conn, err := grpc.NewClient(os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "channel:", err)
		os.Exit(1)
	}
	defer conn.Close()
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		switch {
		case len(fields) == 3 && fields[0] == "call":
			count, _ := strconv.Atoi(fields[2])
			ok, errors := map[string]int{}, map[string]int{}
			for i := 0; i < count; i++ {
				id, err := call(conn, fields[1])
				if err != nil {
					errors[status.Code(err).String()]++
				} else {
					ok[id]++
				}
			}
			out.Encode(map[string]any{"ok": ok, "errors": errors})
		case len(fields) == 5 && fields[0] == "until":
			timeoutMs, _ := strconv.Atoi(fields[4])
			start := time.Now()
			deadline := start.Add(time.Duration(timeoutMs) * time.Millisecond)
			lastHit, misses, done := time.Duration(-1), 0, false
			for !done && time.Now().Before(deadline) {
				began := time.Since(start)
				id, err := call(conn, fields[1])
				hit := err == nil && id == fields[3]
				switch {
				case fields[2] == "present" && hit:
					lastHit, done = began, true
				case fields[2] == "absent" && hit:
					lastHit, misses = began, 0
				case fields[2] == "absent":
					misses++
					done = misses >= 200
				}
			}
			if !done {
				out.Encode(map[string]any{"error": "timeout"})
			} else {
				out.Encode(map[string]any{"elapsed_ms": float64(max(lastHit, 0).Microseconds()) / 1000})
			}
		case len(fields) == 1 && fields[0] == "quit":
			return
		default:
			out.Encode(map[string]any{"error": "unknown command: " + in.Text()})
		}
	}
}
