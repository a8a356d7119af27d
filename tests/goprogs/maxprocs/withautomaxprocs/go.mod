module nodeagent.test/maxprocsamp

go 1.19

require (
	go.uber.org/automaxprocs v1.6.0
	nodeagent.test/maxprocs v0.0.0
)

// No module proxy here: a local stand-in with the real module path, so the
// binary's build info lists go.uber.org/automaxprocs as the real one would.
replace go.uber.org/automaxprocs => ../../automaxprocs_standin

replace nodeagent.test/maxprocs => ../
