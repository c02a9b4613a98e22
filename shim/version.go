package shim

// Version is the shim's version, set at link time.
var Version = "dev"
