// Command etcd is the upstream etcd server main, built from go.etcd.io/etcd/server/v3
// at the version k8s.io/kubernetes pins for its etcd client.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
