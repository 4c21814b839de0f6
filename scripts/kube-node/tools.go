//go:build tools

// Package tools only pins the three node commands into this module's
// dependency graph so that `go mod tidy` keeps every module they need (and
// its go.sum lines). It is never compiled: the build tag "tools" is never
// set. The binaries are built with
//
//	go build k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
