// Command healthz is the health check of the NATS containers, whose scratch
// image has no shell or HTTP client: it GETs a URL (by default the server's
// own monitoring endpoint, http://127.0.0.1:8222/healthz) and exits 0 on a
// 200 reply, 1 otherwise.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	url := "http://127.0.0.1:8222/healthz"
	if len(os.Args) > 1 {
		url = os.Args[1]
	}
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthz:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "healthz: %s: %s\n", resp.Status, body)
		os.Exit(1)
	}
}
