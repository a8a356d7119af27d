module nodeagent.test/maxprocs

go 1.19
