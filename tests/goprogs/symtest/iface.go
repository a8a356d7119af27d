package main

import (
	"errors"
	"fmt"
)

// Shape is implemented by value receivers (circle) and pointer receivers (*rect).
type Shape interface {
	Area() float64
	Name() string
}

type circle struct{ r float64 }

func (c circle) Area() float64 { return 3.14159 * c.r * c.r }
func (c circle) Name() string  { return "circle" }

type rect struct{ w, h float64 }

func (r *rect) Area() float64 { return r.w * r.h }
func (r *rect) Name() string  { return "rect" }

// Grow has a pointer receiver and mutates.
func (r *rect) Grow(d float64) { r.w += d; r.h += d }

// Perimeter has a value receiver; calling it through a *rect uses the
// compiler-generated (*rect).Perimeter wrapper.
func (r rect) Perimeter() float64 { return 2 * (r.w + r.h) }

var errNegative = errors.New("negative")

// mayPanic panics on negative input; safeArea recovers from it.
//
//go:noinline
func mayPanic(v int) int {
	if v < 0 {
		panic(fmt.Errorf("value %d: %w", v, errNegative))
	}
	return v * 2
}

//go:noinline
func safeCall(v int) (out int, err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = fmt.Errorf("%v", r)
			}
		}
	}()
	return mayPanic(v), nil
}

//go:noinline
func ifaceWork(n int) int {
	shapes := []Shape{}
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			shapes = append(shapes, circle{float64(i)})
		} else {
			r := &rect{float64(i), 2}
			r.Grow(1)
			shapes = append(shapes, r)
		}
	}
	var total float64
	names := 0
	for _, s := range shapes {
		total += s.Area()
		names += len(s.Name())
		if r, ok := s.(*rect); ok {
			total += r.Perimeter()
		}
	}
	errs := 0
	for i := -3; i < 3; i++ {
		if _, err := safeCall(i); err != nil && errors.Is(err, errNegative) {
			errs++
		}
	}
	return int(total)%100000 + names + errs
}
