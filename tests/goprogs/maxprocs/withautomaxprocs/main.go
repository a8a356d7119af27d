// Command maxprocsamp is the maxprocs program with go.uber.org/automaxprocs
// linked in (blank import, as its README says).
package main

import (
	_ "go.uber.org/automaxprocs"

	"nodeagent.test/maxprocs/serve"
)

func main() { serve.Main() }
