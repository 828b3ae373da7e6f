//go:build !go1.22

package main

import "net/http"

// Before Go 1.22 ServeMux has prefixes only.
func register(mux *http.ServeMux) {
	mux.HandleFunc("/hello", hello)
	mux.HandleFunc("/status/", status)
	mux.HandleFunc("/bytes/", nbytes)
	mux.HandleFunc("/echo", echo)
	mux.HandleFunc("/users/", users)
	mux.HandleFunc("/slow", slow)
	mux.HandleFunc("/panic", boom)
}
