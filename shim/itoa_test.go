package shim

import "strconv"

func itoa[T ~int | ~uint32](v T) string { return strconv.Itoa(int(v)) }
