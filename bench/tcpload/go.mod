module blindspot/bench/tcpload

go 1.21
