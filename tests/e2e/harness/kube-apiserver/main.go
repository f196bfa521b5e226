// kube-apiserver built from the Kubernetes Go modules: the real API server,
// for trustplane's end-to-end tests (no registry serves the binary here).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
