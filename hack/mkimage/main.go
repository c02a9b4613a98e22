// Command mkimage writes the busybox test image as an OCI layout tar, for
// make run: mkimage OUT.tar NAME [BUSYBOX].
package main

import (
	"fmt"
	"os"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: mkimage OUT.tar NAME [BUSYBOX]")
		os.Exit(2)
	}
	busybox := "/bin/busybox"
	if len(os.Args) > 3 {
		busybox = os.Args[3]
	}
	if err := testimage.WriteBusybox(os.Args[1], busybox, os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}
