module blindspot.test/gotls

go 1.21
