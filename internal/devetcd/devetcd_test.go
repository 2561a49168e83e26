package devetcd

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Start serves etcd on the address asked for; Close stops it, frees the
// port and removes the data.
func TestStartAndClose(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	s, err := Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	if eps := s.Endpoints(); len(eps) != 1 || eps[0] != "http://"+addr {
		t.Fatalf("Endpoints = %v", eps)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, "k"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get = %v %v", resp, err)
	}
	cli.Close()
	dir := s.dir
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("data directory %s still there: %v", dir, err)
	}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port not freed: %v", err)
	}
	l.Close()
}

// A bad address is an error naming it, not a crash.
func TestStartBadAddress(t *testing.T) {
	if _, err := Start("no-port"); err == nil {
		t.Fatal("Start accepted an address without a port")
	}
}
