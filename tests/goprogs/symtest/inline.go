package main

import "nodeagent.test/symtest/mathx"

// Three levels of inlining in one file: outerInline -> midInline -> leafInline.
// All are small enough for the inliner; the loop in inlineChain calls them.

func leafInline(x int) int {
	return x*3 + 1
}

func midInline(x int) int {
	return leafInline(x) ^ (x >> 2)
}

func outerInline(x int) int {
	return midInline(x) + mathx.Clamp(x, 0, 1000)
}

// crossFileInline is inlined into callers in main.go; its body in turn
// inlines mathx.Mix -> mathx.Rotl from the second package (three deep,
// across two files and two packages).
func crossFileInline(h uint64, v int) uint64 {
	return mathx.Mix(h, uint64(v))
}

//go:noinline
func inlineChain(n int) int {
	acc := 0
	for i := 0; i < n; i++ {
		acc += outerInline(i)
	}
	return acc
}
