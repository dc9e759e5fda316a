package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is wg-wrap's version, stamped by the Makefile
// (-ldflags -X main.version=…); a plain `go build` says "dev".
var version = "dev"

const wireguardModule = "golang.zx2c4.com/wireguard"

// versionLine is what --version prints: the sidecar's version and the
// wireguard-go module and Go release it was built with, read from the
// binary's own build information.
func versionLine() string {
	wireguard, goVersion := "unknown", runtime.Version()
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		for _, dep := range info.Deps {
			if dep.Path != wireguardModule {
				continue
			}
			wireguard = dep.Version
			if dep.Replace != nil {
				wireguard = dep.Replace.Path + " " + dep.Replace.Version
			}
		}
	}
	return fmt.Sprintf("%s %s (wireguard-go %s, %s)", progName, version, wireguard, goVersion)
}
