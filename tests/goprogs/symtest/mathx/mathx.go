// Package mathx is a second local package whose small functions are inlined
// into package main, so inlined frames carry a file from another package.
package mathx

// Clamp is small enough to be inlined everywhere.
func Clamp(v, lo, hi int) int {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

// Mix inlines Rotl, and is itself inlined into callers in package main:
// main.* -> mathx.Mix -> mathx.Rotl is a cross-package inline chain.
func Mix(h, v uint64) uint64 {
	return Rotl(h^v, 13) * 0x9e3779b97f4a7c15
}

// Rotl is a leaf that is always inlined.
func Rotl(x uint64, k uint) uint64 {
	return x<<k | x>>(64-k)
}

// Sum is generic, so its instantiations live in the caller's binary with
// shape-based names (mathx.Sum[go.shape.int] and friends).
func Sum[T int | int64 | float64](xs []T) T {
	var s T
	for _, x := range xs {
		s += x
	}
	return s
}
