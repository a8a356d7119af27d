// Command symtest is the symbolizer's test program: built by every Go
// toolchain under test, in every build mode, stripped and not.
//
// It exercises what makes Go symbolization hard (deep and cross-package
// inlining, closures, generics, methods, interfaces, defer/recover,
// goroutines) and pulls in plenty of stdlib code (fmt, encoding/json, sort,
// strings). By default it computes a checksum and exits 0 quickly.
// With -spin SECONDS it burns CPU in named functions (main.hotLoop,
// main.(*worker).step, main.spinInline) so sampling tests find main.* frames.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"nodeagent.test/symtest/mathx"
)

type record struct {
	ID    int               `json:"id"`
	Name  string            `json:"name"`
	Tags  []string          `json:"tags"`
	Attrs map[string]string `json:"attrs"`
}

// worker is driven by its pointer-receiver step method.
type worker struct {
	id    int
	state uint64
	steps int
}

// step is the hot method the sampling tests look for as main.(*worker).step.
//
//go:noinline
func (w *worker) step(n int) uint64 {
	h := w.state
	for i := 0; i < n; i++ {
		h = crossFileInline(h, i+w.id) // inlined: mathx.Mix -> mathx.Rotl
	}
	w.state = h
	w.steps++
	return h
}

// hotLoop burns CPU until the deadline, in its own frame plus inlined frames.
//
//go:noinline
func hotLoop(deadline time.Time) uint64 {
	var h uint64 = 1
	for time.Now().Before(deadline) {
		for i := 0; i < 100000; i++ {
			h = mathx.Mix(h, uint64(outerInline(i)))
		}
	}
	return h
}

// spinInline keeps inlined frames (outerInline -> midInline -> leafInline) hot.
//
//go:noinline
func spinInline(deadline time.Time) int {
	acc := 0
	for time.Now().Before(deadline) {
		acc += inlineChain(50000)
	}
	return acc
}

// spin runs hotLoop, spinInline and two workers concurrently until seconds pass.
func spin(seconds float64) uint64 {
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	results := make(chan uint64, 4)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); results <- hotLoop(deadline) }()
	go func() { defer wg.Done(); results <- uint64(spinInline(deadline)) }()
	for id := 1; id <= 2; id++ {
		w := &worker{id: id, state: uint64(id)}
		go func() {
			defer wg.Done()
			var h uint64
			for time.Now().Before(deadline) {
				h ^= w.step(100000)
			}
			results <- h
		}()
	}
	wg.Wait()
	close(results)
	var sum uint64
	for r := range results {
		sum ^= r
	}
	return sum
}

// pipeline fans work out to goroutines over channels and collects results.
//
//go:noinline
func pipeline(n, workers int) uint64 {
	jobs := make(chan int)
	out := make(chan uint64)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				// A fresh worker per job keeps the sum independent of scheduling.
				w := &worker{state: uint64(j)}
				out <- w.step(j)
			}
		}()
	}
	go func() {
		for j := 1; j <= n; j++ {
			jobs <- j * 10
		}
		close(jobs)
	}()
	go func() { wg.Wait(); close(out) }()
	var sum uint64
	for v := range out {
		sum += v // order-independent
	}
	return sum
}

//go:noinline
func jsonWork(n int) int {
	recs := make([]record, n)
	for i := range recs {
		recs[i] = record{
			ID:    i,
			Name:  fmt.Sprintf("rec-%03d", i),
			Tags:  strings.Fields(strings.Repeat("t ", i%5+1)),
			Attrs: map[string]string{"k": strings.ToUpper(fmt.Sprint(i % 7))},
		}
	}
	data, err := json.Marshal(recs)
	if err != nil {
		panic(err)
	}
	var back []record
	if err := json.Unmarshal(data, &back); err != nil {
		panic(err)
	}
	sort.Slice(back, func(i, j int) bool { return back[i].Name > back[j].Name })
	keys := make([]string, 0, len(back))
	for _, r := range back {
		keys = append(keys, r.Name+"/"+r.Attrs["k"])
	}
	sort.Strings(keys)
	return len(data) + len(strings.Join(keys, ","))
}

func main() {
	spinFor := flag.Float64("spin", 0, "burn CPU in main.hotLoop / main.(*worker).step for this many seconds")
	n := flag.Int("n", 200, "problem size")
	flag.Parse()

	var sum uint64
	sum = mathx.Mix(sum, uint64(inlineChain(*n)))
	sum = mathx.Mix(sum, uint64(closureWork(*n)))
	sum = mathx.Mix(sum, uint64(genericsWork(*n)))
	sum = mathx.Mix(sum, uint64(ifaceWork(*n)))
	sum = mathx.Mix(sum, uint64(jsonWork(*n)))
	sum = mathx.Mix(sum, pipeline(*n, 4))
	sum = mathx.Mix(sum, uint64(mathx.Sum([]int{1, 2, 3}))+uint64(mathx.Sum([]float64{1.5, 2.5})))
	for i := 0; i < *n; i++ {
		sum = crossFileInline(sum, i)
	}
	if *spinFor > 0 {
		sum ^= spin(*spinFor)
		fmt.Fprintf(os.Stderr, "spun %.1fs\n", *spinFor)
	}
	fmt.Printf("symtest checksum %016x\n", sum)
}
