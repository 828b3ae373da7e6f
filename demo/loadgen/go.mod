module blindspot.demo/loadgen

go 1.21
