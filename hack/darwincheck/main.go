// Command darwincheck type-checks packages for darwin from any host
// (DESIGN.md §8; internal/darwincheck): the vz backend needs cgo and the
// macOS SDK to compile, but not to type-check.
//
//	go run ./hack/darwincheck [-arch arm64,amd64] [-exclude ./agent/...] [packages]
//
// It prints each type error in our module as file:line:col and exits 1 if
// there is any.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/vz-shim/containerd-shim-vz/internal/darwincheck"
)

func main() {
	arches := flag.String("arch", "arm64,amd64", "comma-separated darwin architectures")
	verbose := flag.Bool("v", false, "also print the errors in dependencies")
	exclude := flag.String("exclude", "", "comma-separated package patterns not to check (Linux-only packages: the guest's)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: darwincheck [-v] [-arch arm64,amd64] [-exclude patterns] [packages (default ./...)]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	var excluded []string
	if *exclude != "" {
		excluded = strings.Split(*exclude, ",")
	}
	patterns := flag.Args()
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	failed := false
	for _, arch := range strings.Split(*arches, ",") {
		res, err := darwincheck.Check(context.Background(), darwincheck.Options{GOARCH: arch, Patterns: patterns, Exclude: excluded})
		if err != nil {
			fmt.Fprintf(os.Stderr, "darwin/%s: %v\n", arch, err)
			os.Exit(2)
		}
		for _, e := range res.Errors {
			fmt.Fprintf(os.Stderr, "darwin/%s: %s\n", arch, e)
		}
		if *verbose {
			for _, e := range res.DepErrors {
				fmt.Fprintf(os.Stderr, "darwin/%s: (dependency) %s\n", arch, e)
			}
		}
		fmt.Printf("darwincheck: darwin/%s: %d packages type-checked, %d errors in our module, %d in dependencies (-v shows them)\n",
			arch, res.Checked, len(res.Errors), len(res.DepErrors))
		failed = failed || len(res.Errors) > 0
	}
	if failed {
		os.Exit(1)
	}
}
