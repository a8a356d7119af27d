module nodeagent.test/pathgen

go 1.19
