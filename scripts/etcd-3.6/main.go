// Builds the etcd 3.6 server that the etcd suites also run against
// (scripts/install-test-servers.sh runs `go build` in this directory).
//
// The etcd server module (go.etcd.io/etcd/server/v3) has replace lines in
// its go.mod, so `go install go.etcd.io/etcd/server/v3@version` refuses it;
// as a dependency of this module the replace lines do not apply and its
// sibling modules (api, client/pkg, client/v3, pkg) resolve to the same
// release. The binary is etcd's own entry point, etcdmain.Main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
