module nodeagent.test/maxprocs125

// go >= 1.25: Go 1.25's container-aware GOMAXPROCS default is on
// (no containermaxprocs=0 in the binary's DefaultGODEBUG).
go 1.25

require nodeagent.test/maxprocs v0.0.0

replace nodeagent.test/maxprocs => ../
