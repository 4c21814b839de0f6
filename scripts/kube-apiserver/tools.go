//go:build tools

// Package tools only pins k8s.io/kubernetes/cmd/kube-apiserver into this
// module's dependency graph so that `go mod tidy` keeps every module it
// needs (and its go.sum lines). It is never compiled: the build tag
// "tools" is never set. The binary is built with
//
//	go build k8s.io/kubernetes/cmd/kube-apiserver
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
