// Command maxprocs125 is the maxprocs program in a module whose go directive
// is 1.25, so Go >= 1.25 builds it with the container-aware default.
package main

import "nodeagent.test/maxprocs/serve"

func main() { serve.Main() }
