module blindspot.bench/httpload

go 1.21
