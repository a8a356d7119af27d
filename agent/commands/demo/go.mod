module nodeagent.example/demo

go 1.19
