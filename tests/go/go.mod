module blindspot.test/gohttp

go 1.21
