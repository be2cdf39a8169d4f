package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDevetcdServesUntilStoppedAndRemovesItsData(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"-listen", "127.0.0.1:0", "-peer", "127.0.0.1:0"}, pw, &stderr)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	var addr, dir string
	for lines.Scan() {
		if rest, ok := strings.CutPrefix(lines.Text(), "devetcd: etcd serving at "); ok {
			f := strings.Fields(rest) // ADDR, data in DIR; ...
			addr, dir = strings.TrimSuffix(f[0], ","), strings.TrimSuffix(f[3], ";")
			break
		}
	}
	if addr == "" {
		t.Fatalf("devetcd did not say where it serves: exit %d, stderr: %s", <-exited, &stderr)
	}
	go io.Copy(io.Discard, pr)

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	if _, err := cli.Put(cctx, "/k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	if resp, err := cli.Get(cctx, "/k"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get: %v, %v", resp, err)
	}
	cli.Close()

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("devetcd exited %d when stopped, want 0; stderr: %s", code, &stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("devetcd did not stop within 20s")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("devetcd left its data directory %s behind: %v", dir, err)
	}
}

func TestDevetcdRefusesAddressesBeyondLoopback(t *testing.T) {
	for _, args := range [][]string{
		{"-listen", "0.0.0.0:2379"},
		{"-listen", ":2379"},
		{"-listen", "localhost:2379"},
		{"-peer", "192.0.2.1:2380"},
		{"stray"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 2 {
			t.Errorf("devetcd %q exited %d, want 2; stderr: %s", args, code, &stderr)
		}
	}
}
