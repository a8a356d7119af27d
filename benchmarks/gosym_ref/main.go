// Command gosym_ref is the symbolization benchmark's anchor: Go's own
// debug/elf + debug/gosym doing what node-agent's symbolizer does.
//
//	gosym_ref BINARY PCFILE
//
// It opens BINARY, indexes its pclntab, and for every hex PC in PCFILE
// (one per line, "0x" optional; "-" reads stdin) prints "file:line func"
// ("?:0 ?" when no function holds the PC).
//
// Text start: Go 1.18+ pclntabs store the address of runtime.text in their
// header and encode function entries relative to it. That is where the
// runtime and node-agent start. `go tool addr2line` (cmd/internal/objfile)
// passes the .text section address instead, which is the same for Go's
// internal linker but not for an externally linked (cgo) binary: there the
// host linker puts C start-up code first (on Debian's /usr/bin/prometheus
// .text is 0x402340 and runtime.text 0x402440), and every answer is shifted.
// So this uses the header's value when it is set, and .text otherwise (the
// field is 0 in the file in Go 1.27 builds).
package main

import (
	"bufio"
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gosym_ref: "+format+"\n", args...)
	os.Exit(1)
}

// textStart returns runtime.text from a Go 1.18+ pclntab header, or the
// .text section's address for older tables and PIE files.
func textStart(f *elf.File, pclntab []byte) uint64 {
	text := f.Section(".text")
	if text == nil {
		fail("no .text section")
	}
	if len(pclntab) >= 8 {
		magic := binary.LittleEndian.Uint32(pclntab)
		ptrSize := int(pclntab[7])
		off := 8 + 2*ptrSize
		if (magic == 0xfffffff0 || magic == 0xfffffff1) && ptrSize == 8 && len(pclntab) >= off+8 {
			if v := binary.LittleEndian.Uint64(pclntab[off:]); v != 0 {
				return v
			}
		}
	}
	return text.Addr
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gosym_ref BINARY PCFILE")
		os.Exit(2)
	}
	f, err := elf.Open(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()

	sect := f.Section(".gopclntab")
	if sect == nil {
		sect = f.Section(".data.rel.ro.gopclntab") // PIE, Go <= 1.26
	}
	if sect == nil {
		fail("%s: no .gopclntab section", os.Args[1])
	}
	pclntab, err := sect.Data()
	if err != nil {
		fail("reading pclntab: %v", err)
	}
	lt := gosym.NewLineTable(pclntab, textStart(f, pclntab))
	tab, err := gosym.NewTable(nil, lt)
	if err != nil {
		fail("parsing pclntab: %v", err)
	}

	var in io.Reader = os.Stdin
	if os.Args[2] != "-" {
		pcf, err := os.Open(os.Args[2])
		if err != nil {
			fail("%v", err)
		}
		defer pcf.Close()
		in = pcf
	}
	sc := bufio.NewScanner(in)
	w := bufio.NewWriterSize(os.Stdout, 1<<16)
	defer w.Flush()
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		pc, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
		if err != nil {
			fail("bad PC %q", s)
		}
		file, line, fn := tab.PCToLine(pc)
		if fn == nil {
			fmt.Fprintf(w, "?:0 ?\n")
			continue
		}
		fmt.Fprintf(w, "%s:%d %s\n", file, line, fn.Name)
	}
	if err := sc.Err(); err != nil {
		fail("reading PCs: %v", err)
	}
}
