// Command etcd is the etcd server, exactly as etcd's own root main.go builds it:
// the server lives in go.etcd.io/etcd/server/v3/etcdmain (see ../../build.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
