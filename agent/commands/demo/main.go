// Command demo is node-agent's bundled workload: an allocation-heavy HTTP
// service ("serve") and a closed-loop load generator ("load").
//
// The service does what many real Go services do per request: decode JSON,
// build maps and slices, encode JSON. Allocation keeps the GC busy, and many
// short requests keep the scheduler busy, so a GOMAXPROCS far above the
// container's CPU limit shows up as scheduler and GC time.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type item struct {
	ID    int               `json:"id"`
	Name  string            `json:"name"`
	Tags  []string          `json:"tags"`
	Attrs map[string]string `json:"attrs"`
	Score float64           `json:"score"`
}

type request struct {
	Items []item `json:"items"`
	Sort  string `json:"sort"`
}

type response struct {
	Count   int      `json:"count"`
	Top     []item   `json:"top"`
	Summary []string `json:"summary"`
}

func makeItems(n, seed int) []item {
	items := make([]item, n)
	for i := range items {
		attrs := make(map[string]string, 4)
		for k := 0; k < 4; k++ {
			attrs["k"+strconv.Itoa(k)] = strconv.Itoa((i*31 + k*7 + seed) % 1000)
		}
		items[i] = item{
			ID:    i,
			Name:  fmt.Sprintf("item-%d-%d", seed, i),
			Tags:  []string{"a" + strconv.Itoa(i%7), "b" + strconv.Itoa(i%11)},
			Attrs: attrs,
			Score: float64((i*7919+seed)%1000) / 10,
		}
	}
	return items
}

// handle is the service's work: decode, transform (allocating), encode.
func handle(w http.ResponseWriter, r *http.Request) {
	var req request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	items := transform(req.Items)
	sort.Slice(items, func(a, b int) bool { return items[a].Score > items[b].Score })
	top := items
	if len(top) > 10 {
		top = top[:10]
	}
	resp := response{Count: len(items), Top: top, Summary: summarize(items)}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&resp)
}

func transform(in []item) []item {
	out := make([]item, 0, len(in))
	for _, it := range in {
		attrs := make(map[string]string, len(it.Attrs)+1)
		for k, v := range it.Attrs {
			attrs[k] = v + "-x"
		}
		attrs["len"] = strconv.Itoa(len(it.Name))
		it.Attrs = attrs
		it.Tags = append([]string{it.Name[:4]}, it.Tags...)
		out = append(out, it)
	}
	return out
}

func summarize(items []item) []string {
	counts := map[string]int{}
	for _, it := range items {
		for _, t := range it.Tags {
			counts[t]++
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+strconv.Itoa(counts[k]))
	}
	return out
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	readyFD := fs.Int("ready-fd", -1, "write the bound address and a newline to this fd when listening")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/work", handle)
	mux.HandleFunc("/gomaxprocs", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, runtime.GOMAXPROCS(0))
	})
	if *readyFD >= 0 {
		f := os.NewFile(uintptr(*readyFD), "ready")
		fmt.Fprintln(f, ln.Addr().String())
		f.Close()
	}
	return http.Serve(ln, mux)
}

// load drives a URL with a closed loop of concurrent clients and prints
// one JSON line: requests, errors, seconds, requests per second.
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "http://host:port/work")
	conc := fs.Int("c", 8, "concurrent clients")
	dur := fs.Duration("d", 10*time.Second, "duration")
	n := fs.Int("items", 200, "items per request")
	_ = fs.Parse(args)
	body, _ := json.Marshal(request{Items: makeItems(*n, 1), Sort: "score"})
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: *conc, DisableCompression: true},
		Timeout:   10 * time.Second,
	}
	var ok, failed int64
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				resp, err := client.Post(*url, "application/json", bytes.NewReader(body))
				if err != nil {
					atomic.AddInt64(&failed, 1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					atomic.AddInt64(&ok, 1)
				} else {
					atomic.AddInt64(&failed, 1)
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	fmt.Printf("{\"requests\": %d, \"errors\": %d, \"seconds\": %.3f, \"rps\": %.1f}\n", ok, failed, secs, float64(ok)/secs)
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demo serve|load [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
