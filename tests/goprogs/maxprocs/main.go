// Command maxprocs is a long-running Go process whose GOMAXPROCS node-agent
// reads from memory; the test drives it over stdin (see package serve).
package main

import "nodeagent.test/maxprocs/serve"

func main() { serve.Main() }
