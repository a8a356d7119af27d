module nodeagent.bench/workload

go 1.19
