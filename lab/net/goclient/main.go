// The lab's Go client: GET each URL in turn with net/http on one keep-alive connection, printing
// each status. Built without cgo, so names resolve with Go's own resolver (as most Kubernetes
// controllers and Go services do), not glibc's: its own sockets, its own search-list order.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	client := &http.Client{Timeout: 10 * time.Second}
	code := 0
	for _, url := range os.Args[1:] {
		resp, err := client.Get(url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode)
	}
	client.CloseIdleConnections() // the connection's close is a syscall the capture sees
	os.Exit(code)
}
