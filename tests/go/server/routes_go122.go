//go:build go1.22

//go:debug httpmuxgo121=0

package main

import "net/http"

// Go 1.22+ ServeMux patterns (method and wildcards): Request.Pattern carries the matched one.
func register(mux *http.ServeMux) {
	mux.HandleFunc("GET /hello", hello)
	mux.HandleFunc("/status/{code}", status)
	mux.HandleFunc("GET /bytes/{n}", nbytes)
	mux.HandleFunc("/echo", echo)
	mux.HandleFunc("GET /users/{id}", users)
	mux.HandleFunc("/slow", slow)
	mux.HandleFunc("/panic", boom)
}
