package brpccmd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/cmd/brpc/echopb"
)

// stayingClient runs echo-client -stay against addr until the test ends and
// returns the ID the server gave it.
func stayingClient(t *testing.T, target, caFile, name string) string {
	t.Helper()
	pr, pw := io.Pipe()
	stay := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		cfg := echoClientConfig{target: target, caFile: caFile, name: name, n: 1, timeout: 10 * time.Second, stay: true}
		done <- echoClient(context.Background(), cfg, pw, stay)
		pw.Close()
	}()
	t.Cleanup(func() {
		close(stay)
		if err := <-done; err != nil {
			t.Errorf("echo-client %s: %v", name, err)
		}
	})
	lines := bufio.NewScanner(pr)
	for lines.Scan() {
		if rest, ok := strings.CutPrefix(lines.Text(), "brpc echo-client staying connected as "); ok {
			go io.Copy(io.Discard, pr)
			return strings.TrimSuffix(strings.Fields(rest)[0], ";")
		}
	}
	t.Fatalf("echo-client %s did not say it stays connected", name)
	return ""
}

// dialClient connects a client to addr that serves what register puts on
// its own *grpc.Server, until the test ends.
func dialClient(t *testing.T, addr, caFile string, register func(*grpc.Server)) *brpc.ClientConn {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	gs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	register(gs)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, "quic://"+addr, brpc.WithTLSConfig(&tls.Config{RootCAs: roots}), brpc.WithServer(gs))
	if err != nil {
		gs.Stop()
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		cc.Close()
		gs.Stop()
	})
	return cc
}

// brpcRun is what one run of the command printed and how it exited.
type brpcRun struct {
	stdout, stderr string
	code           int
}

func runBrpc(args ...string) brpcRun {
	var stdout, stderr bytes.Buffer
	code := Run(args, &stdout, &stderr, Extensions{})
	return brpcRun{stdout.String(), stderr.String(), code}
}

func TestPeersListsTheClients(t *testing.T) {
	addr, gw, ca := startEchoGateway(t)
	if r := runBrpc("peers", "-gateway", gw); r.code != exitOK || r.stdout != "No clients connected.\n" {
		t.Fatalf("brpc peers with no client: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	alice := stayingClient(t, "quic://"+addr, ca, "alice")
	bob := stayingClient(t, "tcp://"+addr, ca, "")
	r := runBrpc("peers", "-gateway", gw)
	if r.code != exitOK {
		t.Fatalf("brpc peers: exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "METADATA") || lines[3] != "2 client(s) connected." {
		t.Fatalf("brpc peers printed:\n%s\nwant a header, two clients and a count", r.stdout)
	}
	for _, want := range []struct{ id, transport, md string }{{alice, "quic", "name=alice"}, {bob, "tcp", ""}} {
		var line string
		for _, l := range lines[1:3] {
			if strings.HasPrefix(l, want.id+" ") {
				line = l
			}
		}
		f := strings.Fields(line)
		if len(f) < 4 || f[1] != want.transport || !strings.HasPrefix(f[2], "127.0.0.1:") || !strings.HasSuffix(line, "ago)"+pad0(want.md)) {
			t.Errorf("brpc peers: client %s's line %q, want transport %s, its address, when it connected and %q", want.id, line, want.transport, want.md)
		}
	}
	// A gateway without the admin service relays the call, which names no
	// client.
	bare := grpc.NewServer(grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		return status.Error(codes.InvalidArgument, `brpc gateway: the "brpc-target" header names no client`)
	}))
	bareAddr := serveGRPCForTest(t, bare)
	if r := runBrpc("peers", "-gateway", bareAddr); r.code != exitError || !strings.Contains(r.stderr, "with RegisterAdmin?") {
		t.Errorf("brpc peers at a gateway without the admin service: exit %d, stderr %q; want a hint at RegisterAdmin", r.code, r.stderr)
	}
	if r := runBrpc("peers", "-gateway", closedPort(t)); r.code != exitError || !strings.Contains(r.stderr, "Unavailable") {
		t.Errorf("brpc peers at a closed port: exit %d, stderr %q; want %d and Unavailable", r.code, r.stderr, exitError)
	}
}

// pad0 is how a metadata column ends a table line: after the two spaces
// that separate it, or not at all when empty.
func pad0(md string) string {
	if md == "" {
		return ""
	}
	return "  " + md
}

// serveGRPCForTest serves gs on a loopback port until the test ends.
func serveGRPCForTest(t *testing.T, gs *grpc.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(l)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return l.Addr().String()
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestPeersWatch(t *testing.T) {
	addr, gw, ca := startEchoGateway(t)
	alice := stayingClient(t, addr, ca, "alice")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- peers(ctx, peersConfig{gw: gatewayFlags{addr: gw}, watch: true, timeout: time.Second}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	next := func() string {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("brpc peers -watch ended early: %v", <-done)
		}
		return lines.Text()
	}
	var table []string
	for l := next(); !strings.HasPrefix(l, "Watching"); l = next() {
		table = append(table, l)
	}
	if len(table) != 3 || !strings.HasPrefix(table[1], alice+" ") || table[2] != "1 client(s) connected." {
		t.Fatalf("brpc peers -watch began with:\n%s\nwant the table of alice alone", strings.Join(table, "\n"))
	}
	if r := runBrpc("echo-client", "-target", addr, "-ca", ca, "-name", "bob", "-n", "1"); r.code != exitOK {
		t.Fatalf("echo-client bob: exit %d: %s", r.code, r.stderr)
	}
	if l := next(); !strings.Contains(l, " connected ") || !strings.Contains(l, "over quic from 127.0.0.1:") || !strings.HasSuffix(l, "name=bob") {
		t.Errorf("after bob connected, brpc peers -watch printed %q", l)
	}
	if l := next(); !strings.Contains(l, " disconnected ") || !strings.Contains(l, "(client_closed: ") {
		t.Errorf("after bob left, brpc peers -watch printed %q", l)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("brpc peers -watch, interrupted: %v, want a clean end", err)
	}
	go io.Copy(io.Discard, pr)
}

func TestCallThroughTheGateway(t *testing.T) {
	addr, gw, ca := startEchoGateway(t)
	alice := stayingClient(t, addr, ca, "alice")
	for _, method := range []string{"brpc.echo.v1.Echo/Echo", "/brpc.echo.v1.Echo/Echo", "brpc.echo.v1.Echo.Echo"} {
		r := runBrpc("call", "-gateway", gw, alice, method, `{"message": "hi", "payload": "AAE="}`)
		if r.code != exitOK {
			t.Fatalf("brpc call %s: exit %d: %s", method, r.code, r.stderr)
		}
		var resp struct{ Message, Payload string }
		if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || resp.Message != "hi" || resp.Payload != "AAE=" {
			t.Errorf("brpc call %s printed %q (%v), want the echo of message and payload as JSON", method, r.stdout, err)
		}
	}
	if r := runBrpc("call", "-gateway", gw, alice, "brpc.echo.v1.Echo/Echo"); r.code != exitOK || strings.TrimSpace(r.stdout) != "{}" {
		t.Errorf("brpc call without JSON: exit %d, stdout %q, stderr %q; want the echo of an empty request", r.code, r.stdout, r.stderr)
	}

	noReflection := dialClient(t, addr, ca, func(gs *grpc.Server) { echopb.RegisterEchoServer(gs, echoService{}) })
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown method", []string{alice, "brpc.echo.v1.Echo/Nope"}, exitUsage, "service brpc.echo.v1.Echo has no method Nope; its methods are Echo"},
		{"unknown service", []string{alice, "no.Such/Method"}, exitUsage, "the client serves no service no.Such; it serves brpc.echo.v1.Echo, grpc.reflection.v1.ServerReflection"},
		{"a message for a service", []string{alice, "brpc.echo.v1.EchoRequest/X"}, exitUsage, "brpc.echo.v1.EchoRequest is a message, not a service"},
		{"not a method", []string{alice, "Echo"}, exitUsage, `method "Echo": want pkg.Service/Method or pkg.Service.Method`},
		{"a request of another type", []string{alice, "brpc.echo.v1.Echo/Echo", `{"count": 1}`}, exitUsage, "the request does not fit brpc.echo.v1.EchoRequest: "},
		{"not JSON", []string{alice, "brpc.echo.v1.Echo/Echo", `{"message":`}, exitUsage, "the request is not JSON"},
		{"an unknown field", []string{alice, "brpc.echo.v1.Echo/Echo", `{"mesage": "hi"}`}, exitUsage, `unknown field "mesage"`},
		{"two messages for a unary call", []string{alice, "brpc.echo.v1.Echo/Echo", `{} {}`}, exitUsage, "brpc.echo.v1.Echo.Echo takes one request message, and the JSON holds 2"},
		{"no such client", []string{"nobody", "brpc.echo.v1.Echo/Echo"}, exitError, `brpc call: NotFound: brpc: no client "nobody" is connected`},
		{"a client without reflection", []string{noReflection.ID(), "brpc.echo.v1.Echo/Echo"}, exitError, "the client serves no reflection (it needs reflection.Register on its *grpc.Server): Unimplemented:"},
	} {
		r := runBrpc(append([]string{"call", "-gateway", gw}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || r.stdout != "" {
			t.Errorf("brpc call, %s: exit %d, stderr %q, stdout %q; want exit %d and %q", c.name, r.code, r.stderr, r.stdout, c.code, c.want)
		}
		if strings.Contains(r.stderr, "Usage:") {
			t.Errorf("brpc call, %s: printed the usage for a mistake it does not help with:\n%s", c.name, r.stderr)
		}
	}
	if r := runBrpc("call", "-gateway", closedPort(t), alice, "brpc.echo.v1.Echo/Echo"); r.code != exitError || !strings.Contains(r.stderr, "Unavailable") {
		t.Errorf("brpc call at a closed port: exit %d, stderr %q; want %d and Unavailable", r.code, r.stderr, exitError)
	}
}

// headerEcho answers with the value of its caller's x-echo header.
type headerEcho struct{ echopb.UnimplementedEchoServer }

func (headerEcho) Echo(ctx context.Context, _ *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &echopb.EchoResponse{Message: strings.Join(md.Get("x-echo"), ",")}, nil
}

func TestCallSendsHeaders(t *testing.T) {
	addr, gw, ca := startEchoGateway(t)
	c := dialClient(t, addr, ca, func(gs *grpc.Server) {
		echopb.RegisterEchoServer(gs, headerEcho{})
		reflection.Register(gs)
	})
	r := runBrpc("call", "-gateway", gw, "-H", "x-echo: one", "-H", "X-Echo:two", c.ID(), "brpc.echo.v1.Echo/Echo")
	if r.code != exitOK || r.stdout != "{\n  \"message\": \"one,two\"\n}\n" {
		t.Errorf("brpc call -H: exit %d, stdout %q, stderr %q; want the client to see both headers", r.code, r.stdout, r.stderr)
	}
}

// A streaming response is printed message by message as it arrives; a
// streaming request takes several JSON objects.
func TestCallStreams(t *testing.T) {
	addr, gw, ca := startEchoGateway(t)
	healthSrv := health.NewServer()
	c := dialClient(t, addr, ca, func(gs *grpc.Server) {
		healthpb.RegisterHealthServer(gs, healthSrv)
		reflection.Register(gs)
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		cfg := callConfig{gw: gatewayFlags{addr: gw}, id: c.ID(), method: "grpc.health.v1.Health/Watch", json: "{}", hasJSON: true}
		done <- call(ctx, cfg, pw)
		pw.Close()
	}()
	dec := json.NewDecoder(pr)
	next := func() string {
		t.Helper()
		var m struct{ Status string }
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("brpc call of a server stream printed no further JSON: %v (call: %v)", err, <-done)
		}
		return m.Status
	}
	if got := next(); got != "SERVING" {
		t.Fatalf("first message: status %q, want SERVING", got)
	}
	// The second message exists only once the first was printed.
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if got := next(); got != "NOT_SERVING" {
		t.Fatalf("second message: status %q, want NOT_SERVING", got)
	}
	cancel()
	if err := <-done; status.Code(errorsUnwrap(err)) != codes.Canceled {
		t.Errorf("the interrupted call returned %v, want Canceled", err)
	}
	go io.Copy(io.Discard, pr)

	r := runBrpc("call", "-gateway", gw, c.ID(), "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
		`{"listServices": ""} {"fileContainingSymbol": "grpc.health.v1.Health"}`)
	if r.code != exitOK {
		t.Fatalf("brpc call of a bidi stream: exit %d: %s", r.code, r.stderr)
	}
	dec = json.NewDecoder(strings.NewReader(r.stdout))
	var answers []map[string]any
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			break
		}
		answers = append(answers, m)
	}
	if len(answers) != 2 || answers[0]["listServicesResponse"] == nil || answers[1]["fileDescriptorResponse"] == nil {
		t.Errorf("brpc call of a bidi stream with two requests printed:\n%s\nwant the two answers", r.stdout)
	}
}

// errorsUnwrap finds the gRPC status under call's error.
func errorsUnwrap(err error) error {
	if e, ok := err.(*rpcError); ok {
		return e.err
	}
	return err
}

// gatewayPKI writes, into dir, a CA, a gateway certificate for 127.0.0.1
// and an operator's client certificate signed by it, and an intruder's
// client certificate signed by another CA; it returns the file names.
func gatewayPKI(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	write := func(name string, block *pem.Block) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		files[name] = path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return ca, key, der
	}
	leaf := func(name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) {
		key := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		pk, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		write(name+".pem", &pem.Block{Type: "CERTIFICATE", Bytes: der})
		write(name+"-key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: pk})
	}
	ca, caKey, caDER := newCA("gateway CA")
	write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	leaf("gateway", ca, caKey, x509.ExtKeyUsageServerAuth)
	leaf("operator", ca, caKey, x509.ExtKeyUsageClientAuth)
	other, otherKey, _ := newCA("another CA")
	leaf("intruder", other, otherKey, x509.ExtKeyUsageClientAuth)
	return files
}

// On an address other than loopback, echo-server's gateway must require
// client certificates; here, on loopback, it is given them, and peers and
// call speak mutual TLS to it.
func TestGatewayOverMutualTLS(t *testing.T) {
	f := gatewayPKI(t, t.TempDir())
	addr, gw, ca := startEchoGatewayWith(t, gatewayServeFlags{
		addr: "127.0.0.1:0", certFile: f["gateway.pem"], keyFile: f["gateway-key.pem"], clientCAFile: f["ca.pem"],
	})
	alice := stayingClient(t, addr, ca, "alice")
	operator := []string{"-gateway", gw, "-ca", f["ca.pem"], "-cert", f["operator.pem"], "-key", f["operator-key.pem"]}
	if r := runBrpc(append([]string{"peers"}, operator...)...); r.code != exitOK || !strings.Contains(r.stdout, alice+" ") {
		t.Errorf("brpc peers over mutual TLS: exit %d, stdout %q, stderr %q; want alice listed", r.code, r.stdout, r.stderr)
	}
	r := runBrpc(append(append([]string{"call"}, operator...), alice, "brpc.echo.v1.Echo/Echo", `{"message": "tls"}`)...)
	if r.code != exitOK || !strings.Contains(r.stdout, `"message": "tls"`) {
		t.Errorf("brpc call over mutual TLS: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"plaintext", []string{"-gateway", gw}},
		{"TLS without a client certificate", []string{"-gateway", gw, "-ca", f["ca.pem"]}},
		{"a certificate from another CA", []string{"-gateway", gw, "-ca", f["ca.pem"], "-cert", f["intruder.pem"], "-key", f["intruder-key.pem"]}},
	} {
		if r := runBrpc(append([]string{"peers"}, c.args...)...); r.code != exitError || !strings.Contains(r.stderr, "Unavailable") {
			t.Errorf("brpc peers, %s: exit %d, stderr %q; want %d and Unavailable", c.name, r.code, r.stderr, exitError)
		}
	}
}
