module nodeagent.bench/gosym_ref

go 1.19
