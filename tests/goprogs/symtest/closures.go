package main

// apply is not inlined, so closures passed to it run as real calls
// (main.closureWork.func1 and friends).
//
//go:noinline
func apply(xs []int, f func(int) int) int {
	s := 0
	for _, x := range xs {
		s += f(x)
	}
	return s
}

// makeAdder returns a closure capturing k; nested closures inside it.
func makeAdder(k int) func(int) int {
	return func(x int) int {
		twice := func(y int) int { return y + k + k }
		return twice(x) - k
	}
}

//go:noinline
func closureWork(n int) int {
	xs := make([]int, n)
	for i := range xs {
		xs[i] = i
	}
	scale := 3
	total := apply(xs, func(x int) int { return x * scale })
	add := makeAdder(7)
	total += apply(xs, add)
	// A closure that creates and calls a closure that creates another one.
	outer := func(a int) int {
		mid := func(b int) int {
			inner := func(c int) int { return c*a + b }
			return apply(xs[:3], inner)
		}
		return mid(a + 1)
	}
	total += apply(xs[:10], outer)
	// Immediately invoked closure.
	total += func() int { return len(xs) }()
	return total
}
