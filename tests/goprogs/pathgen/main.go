// pathgen walks N distinct call paths over and over: the stack generator of
// node-agent's big-node test and benchmark (tests/system/test_bignode_shares.py,
// benchmarks/bench_bignode.py).
//
// Path p (0 <= p < N) is the sequence of functions f<d1>, f<d2>, ... named by
// the base-16 digits of p, called one inside the other, then leaf(): every
// path has a different chain of callers, so a frame-pointer walk sees N
// distinct user stacks. leaf() allocates a little, so the GC runs too.
//
// Usage: pathgen -paths 20000 -workers 2 [-ready-fd N]; runs until killed.
package main

import (
	"flag"
	"os"
	"sync"
)

var fns [16]func(p, depth int) int

var sink [][]byte
var mu sync.Mutex

//go:noinline
func leaf(p int) int {
	buf := make([]byte, 256+p%512)
	x := 0
	for i := range buf {
		buf[i] = byte(i + p)
		x += int(buf[i])
	}
	if x%7 == 0 {
		mu.Lock()
		sink = append(sink, buf)
		if len(sink) > 4096 {
			sink = sink[:0]
		}
		mu.Unlock()
	}
	return x
}

//go:noinline
func f0(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 0
}

//go:noinline
func f1(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 1
}

//go:noinline
func f2(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 2
}

//go:noinline
func f3(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 3
}

//go:noinline
func f4(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 4
}

//go:noinline
func f5(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 5
}

//go:noinline
func f6(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 6
}

//go:noinline
func f7(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 7
}

//go:noinline
func f8(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 8
}

//go:noinline
func f9(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 9
}

//go:noinline
func f10(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 10
}

//go:noinline
func f11(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 11
}

//go:noinline
func f12(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 12
}

//go:noinline
func f13(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 13
}

//go:noinline
func f14(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 14
}

//go:noinline
func f15(p, depth int) int {
	if depth == 0 {
		return leaf(p)
	}
	return fns[p&15](p>>4, depth-1) + 15
}

func init() {
	fns = [16]func(p, depth int) int{f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15}
}

func main() {
	paths := flag.Int("paths", 20000, "distinct call paths")
	workers := flag.Int("workers", 1, "goroutines walking them")
	readyFD := flag.Int("ready-fd", -1, "write one line here once running")
	flag.Parse()
	depth := 1
	for n := 16; n < *paths; n *= 16 {
		depth++
	}
	for w := 0; w < *workers; w++ {
		go func(w int) {
			total := 0
			for i := w; ; i += 7919 { // a prime stride: every path, in a scattered order
				p := i % *paths
				total += fns[p&15](p>>4, depth-1)
				if total == 42 {
					println(total) // keeps total live
				}
			}
		}(w)
	}
	if *readyFD >= 0 {
		f := os.NewFile(uintptr(*readyFD), "ready")
		f.Write([]byte("ready\n"))
		f.Close()
	}
	select {}
}
