module nodeagent.test/symtest

go 1.19
