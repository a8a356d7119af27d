// spin burns one CPU in main.spin (with main.step inlined into it) so the agent samples
// PCs there. tests/hostile mutates this binary's tables on disk: the Go runtime reads
// line tables and inline trees only for tracebacks, so the mutated program still runs.
// Usage: spin READY_FD — writes "ready\n" to the fd once running.
package main

import (
	"os"
	"strconv"
)

func step(x, i int) int { return x*3 + i } // inlined into spin

//go:noinline
func spin() int {
	x := 0
	for i := 0; ; i++ {
		x = step(x, i) ^ (x >> 7)
		if x == 42 && i < 0 {
			return x
		}
	}
}

func main() {
	if len(os.Args) > 1 {
		if fd, err := strconv.Atoi(os.Args[1]); err == nil {
			f := os.NewFile(uintptr(fd), "ready")
			f.Write([]byte("ready\n"))
			f.Close()
		}
	}
	os.Exit(spin())
}
