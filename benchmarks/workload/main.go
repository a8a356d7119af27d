// Command workload is the sampler benchmark's CPU-bound Go program: it keeps
// -threads OS threads busy for -seconds and prints, at exit, one JSON line
// with the work units it completed, so overhead shows up as lost throughput.
//
// A unit is fixed, allocation-free work (SHA-256 of 4 KiB, an integer mixing
// loop, sorting 256 ints) spread over a few named functions, so a profiler
// sees real, symbolizable Go stacks rather than one hot instruction. Nothing
// allocates in the loop, so GC pacing adds no noise to the count.
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"time"
)

type result struct {
	Units      uint64   `json:"units"`
	PerThread  []uint64 `json:"per_thread"`
	Seconds    float64  `json:"seconds"`
	UnitsPerS  float64  `json:"units_per_s"`
	CPUSeconds float64  `json:"cpu_seconds"`
	Threads    int      `json:"threads"`
	GOMAXPROCS int      `json:"gomaxprocs"`
	Checksum   uint64   `json:"checksum"`
}

type state struct {
	buf     [4096]byte
	ints    [256]int
	scratch [256]int
	h       uint64
}

func newState(seed uint64) *state {
	s := &state{h: seed | 1}
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := range s.buf {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		s.buf[i] = byte(x)
	}
	for i := range s.ints {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		s.ints[i] = int(x >> 1)
	}
	return s
}

//go:noinline
func hashBlock(s *state) {
	binary.LittleEndian.PutUint64(s.buf[:8], s.h)
	sum := sha256.Sum256(s.buf[:])
	s.h ^= binary.LittleEndian.Uint64(sum[:8])
}

//go:noinline
func mixLoop(s *state, n int) {
	h := s.h
	for i := 0; i < n; i++ {
		h ^= h >> 33
		h *= 0xff51afd7ed558ccd
		h ^= h >> 29
		h += uint64(i)
	}
	s.h = h
}

//go:noinline
func sortSmall(s *state) {
	copy(s.scratch[:], s.ints[:])
	s.scratch[int(s.h%256)] = int(s.h >> 1)
	sort.Ints(s.scratch[:])
	s.h += uint64(s.scratch[128])
}

//go:noinline
func unit(s *state) {
	hashBlock(s)
	mixLoop(s, 4000)
	sortSmall(s)
}

// worker runs units on its own locked OS thread until the deadline.
func worker(seed uint64, deadline time.Time, units *uint64, sum *uint64, wg *sync.WaitGroup) {
	defer wg.Done()
	runtime.LockOSThread()
	s := newState(seed)
	var n uint64
	for time.Now().Before(deadline) {
		unit(s)
		n++
	}
	*units, *sum = n, s.h
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func main() {
	seconds := flag.Float64("seconds", 10, "how long to run")
	threads := flag.Int("threads", 2, "busy threads (set GOMAXPROCS to match)")
	flag.Parse()
	if *seconds <= 0 || *threads < 1 {
		fmt.Fprintln(os.Stderr, "workload: -seconds must be > 0 and -threads >= 1")
		os.Exit(2)
	}
	units := make([]uint64, *threads)
	sums := make([]uint64, *threads)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	for i := 0; i < *threads; i++ {
		wg.Add(1)
		go worker(uint64(i+1), deadline, &units[i], &sums[i], &wg)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	r := result{PerThread: units, Seconds: elapsed, Threads: *threads, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	for i := range units {
		r.Units += units[i]
		r.Checksum ^= sums[i]
	}
	r.UnitsPerS = float64(r.Units) / elapsed
	r.CPUSeconds = cpuSeconds()
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		os.Exit(1)
	}
}
