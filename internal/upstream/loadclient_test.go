package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
)

// loadClient is the load generator of the read benchmarks: one HTTP/1.1
// keep-alive connection that sends a GET and reads its answer, with no
// goroutine of its own. net/http's client hands every request to two
// goroutines of its connection (a writer and a reader); in a benchmark
// whose clients share the agent's two cores, that costs as much CPU as
// the agent's answer (measured: half the process's CPU), which a client
// in another process would not take from the agent. As wrk and h2load,
// this client does the least a client must: it writes the request and
// reads the status line, the headers and Content-Length bytes of body.
type loadClient struct {
	conn net.Conn
	r    *bufio.Reader
	req  []byte
}

// dialLoad connects a loadClient to the host of rawURL, to GET its path
// and query.
func dialLoad(rawURL string) (*loadClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		return nil, err
	}
	req := fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: watchcache-bench\r\n\r\n", u.RequestURI(), u.Host)
	return &loadClient{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), req: req}, nil
}

func (c *loadClient) Close() error { return c.conn.Close() }

var contentLength = []byte("content-length:")

// get sends the request and reads its answer; it returns the status code.
func (c *loadClient) get() (int, error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, fmt.Errorf("status line %q", line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("status line %q", line)
	}
	n := -1
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 { // the blank line ending the headers
			break
		}
		if len(line) > len(contentLength) && bytes.EqualFold(line[:len(contentLength)], contentLength) {
			n, err = strconv.Atoi(string(bytes.TrimSpace(line[len(contentLength):])))
			if err != nil {
				return 0, fmt.Errorf("header %q", line)
			}
		}
	}
	if n < 0 {
		return 0, errors.New("answer without Content-Length")
	}
	if _, err := c.r.Discard(n); err != nil {
		return 0, err
	}
	return code, nil
}
