package main

import (
	"fmt"
	"sort"
)

// Number is the constraint for the generic helpers.
type Number interface {
	~int | ~int64 | ~float64
}

// Map applies f to every element; instantiated with several type pairs.
func Map[T, U any](xs []T, f func(T) U) []U {
	out := make([]U, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	return out
}

// Reduce folds xs; it is not marked noinline so some instantiations inline.
func Reduce[T any, A any](xs []T, init A, f func(A, T) A) A {
	acc := init
	for _, x := range xs {
		acc = f(acc, x)
	}
	return acc
}

// Max is a tiny generic function that the inliner takes.
func Max[T Number](a, b T) T {
	if a > b {
		return a
	}
	return b
}

// Stack is a generic type with pointer- and value-receiver methods.
type Stack[T any] struct {
	items []T
}

func (s *Stack[T]) Push(v T) { s.items = append(s.items, v) }

func (s *Stack[T]) Pop() (T, bool) {
	var zero T
	if len(s.items) == 0 {
		return zero, false
	}
	v := s.items[len(s.items)-1]
	s.items = s.items[:len(s.items)-1]
	return v, true
}

func (s Stack[T]) Len() int { return len(s.items) }

// Pair is a generic type with two parameters and a value-receiver method.
type Pair[K comparable, V Number] struct {
	Key K
	Val V
}

func (p Pair[K, V]) String() string { return fmt.Sprintf("%v=%v", p.Key, p.Val) }

// SortedPairs is generic over the key and value types and uses sort.Slice.
//
//go:noinline
func SortedPairs[K comparable, V Number](m map[K]V) []Pair[K, V] {
	out := make([]Pair[K, V], 0, len(m))
	for k, v := range m {
		out = append(out, Pair[K, V]{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Val != out[j].Val {
			return out[i].Val > out[j].Val
		}
		return fmt.Sprint(out[i].Key) < fmt.Sprint(out[j].Key)
	})
	return out
}

type myInt int

//go:noinline
func genericsWork(n int) int {
	ints := make([]int, n)
	for i := range ints {
		ints[i] = i
	}
	floats := Map(ints, func(i int) float64 { return float64(i) / 2 })
	strs := Map(ints, func(i int) string { return fmt.Sprint(i % 10) })
	total := Reduce(ints, 0, func(a, b int) int { return Max(a, b) + b%3 })
	ftotal := Reduce(floats, 0.0, func(a, b float64) float64 { return a + Max(b, 1.5) })
	slen := Reduce(strs, int64(0), func(a int64, s string) int64 { return a + int64(len(s)) })
	mi := Max(myInt(3), myInt(n))

	var si Stack[int]
	var ss Stack[string]
	for i := 0; i < n; i++ {
		si.Push(i)
		ss.Push(strs[i])
	}
	for si.Len() > n/2 {
		v, _ := si.Pop()
		total += v
		s, _ := ss.Pop()
		total += len(s)
	}

	counts := map[string]int{}
	for _, s := range strs {
		counts[s]++
	}
	pairs := SortedPairs(counts)
	fpairs := SortedPairs(map[int]float64{1: 1.5, 2: 0.5, 3: ftotal})
	if len(pairs) > 0 {
		total += len(pairs[0].String())
	}
	total += len(fpairs[0].String())
	return total + int(ftotal) + int(slen) + int(mi)
}
