// Package serve is the line protocol shared by the maxprocs test programs.
//
// On start it writes "ready <GOMAXPROCS>" to stdout, then answers one line
// per command read from stdin:
//
//	get      -> "gomaxprocs <n>"
//	set <n>  -> runtime.GOMAXPROCS(n), then "set <n now>"
//	exit     -> exits with status 0
//
// It exits when stdin is closed, so a crashed test leaves nothing behind.
// Replies are written straight to the stdout file (unbuffered in Go), so the
// test can block on each line instead of sleeping.
package serve

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Main runs the protocol until stdin closes or "exit" arrives.
func Main() {
	fmt.Printf("ready %d\n", runtime.GOMAXPROCS(0))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "get":
			fmt.Printf("gomaxprocs %d\n", runtime.GOMAXPROCS(0))
		case "set":
			n := 0
			if len(fields) > 1 {
				n, _ = strconv.Atoi(fields[1])
			}
			runtime.GOMAXPROCS(n)
			fmt.Printf("set %d\n", runtime.GOMAXPROCS(0))
		case "exit":
			os.Exit(0)
		default:
			fmt.Printf("error unknown command %q\n", fields[0])
		}
	}
}
