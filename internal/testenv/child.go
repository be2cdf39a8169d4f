package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// A child process is the test binary run again with childEnv naming the
// role it plays and childArgsEnv its arguments (JSON). It speaks a line
// protocol: on stdout first "ready WORDS..." once set up (or "fail
// REASON"), then one "ok TEXT" or "err TEXT" line per command line read on
// stdin. It exits when its stdin closes.
const (
	childEnv     = "BRPC_TESTENV_CHILD"
	childArgsEnv = "BRPC_TESTENV_CHILD_ARGS"
)

// A Role is what a child process does: it sets the process up from its
// arguments (starts a server, dials clients), registers the commands it
// answers besides the built-in ones, and returns the words of its ready
// line. The commands run one at a time, in the order they arrive.
type Role func(c *ChildEnv) (ready []string, err error)

// ChildEnv is a child process's side of the protocol, handed to its Role.
type ChildEnv struct {
	args     map[string]string
	cmds     map[string]func(args []string) (string, error)
	cleanups []func()
}

// Arg returns the argument the parent passed as name ("" when none).
func (c *ChildEnv) Arg(name string) string { return c.args[name] }

// Handle makes the child answer the command name with fn's text; an error
// is reported to the parent as the command's failure.
func (c *ChildEnv) Handle(name string, fn func(args []string) (string, error)) {
	c.cmds[name] = fn
}

// Cleanup registers fn to run, last registered first, when the parent
// closes the child's stdin.
func (c *ChildEnv) Cleanup(fn func()) { c.cleanups = append(c.cleanups, fn) }

// RunChild returns at once in a test process. In a child started by
// StartChild it plays the role named by the parent, out of roles and the
// built-in ones (ServerRole as "server", ClientsRole as "clients"), and
// exits the process. Call it first in TestMain.
func RunChild(roles map[string]Role) {
	name, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	role := roles[name]
	if role == nil {
		role = map[string]Role{"server": ServerRole, "clients": ClientsRole}[name]
	}
	if role == nil {
		fmt.Printf("fail no role %q\n", name)
		os.Exit(2)
	}
	os.Exit(runChild(role))
}

func runChild(role Role) int {
	c := &ChildEnv{args: map[string]string{}, cmds: map[string]func([]string) (string, error){}}
	if err := json.Unmarshal([]byte(os.Getenv(childArgsEnv)), &c.args); err != nil {
		fmt.Printf("fail arguments: %v\n", err)
		return 2
	}
	c.Handle("footprint", func([]string) (string, error) { return MeasureFootprint().String(), nil })
	defer func() {
		for i := len(c.cleanups) - 1; i >= 0; i-- {
			c.cleanups[i]()
		}
	}()
	ready, err := role(c)
	if err != nil {
		fmt.Printf("fail %s\n", oneLine(err.Error()))
		return 1
	}
	fmt.Println(strings.Join(append([]string{"ready"}, ready...), " "))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		words := strings.Fields(sc.Text())
		if len(words) == 0 {
			continue
		}
		fn := c.cmds[words[0]]
		if fn == nil {
			fmt.Printf("err unknown command %q\n", words[0])
			continue
		}
		out, err := fn(words[1:])
		if err != nil {
			fmt.Printf("err %s\n", oneLine(err.Error()))
			continue
		}
		fmt.Printf("ok %s\n", oneLine(out))
	}
	return 0
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// Footprint is what a process holds after garbage collection.
type Footprint struct {
	Goroutines int
	HeapAlloc  uint64 // bytes of live heap objects
	HeapInuse  uint64 // bytes of heap spans in use
	StackInuse uint64 // bytes of goroutine stacks
}

// MeasureFootprint collects garbage (twice, so that objects freed by
// finalizers go too) and reports this process's footprint.
func MeasureFootprint() Footprint {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return Footprint{Goroutines: runtime.NumGoroutine(), HeapAlloc: ms.HeapAlloc, HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse}
}

// String is the footprint as the child's "footprint" command reports it.
func (f Footprint) String() string {
	return fmt.Sprintf("goroutines=%d heapalloc=%d heapinuse=%d stackinuse=%d", f.Goroutines, f.HeapAlloc, f.HeapInuse, f.StackInuse)
}

func parseFootprint(s string) (Footprint, error) {
	var f Footprint
	_, err := fmt.Sscanf(s, "goroutines=%d heapalloc=%d heapinuse=%d stackinuse=%d", &f.Goroutines, &f.HeapAlloc, &f.HeapInuse, &f.StackInuse)
	return f, err
}

// SettleGoroutines waits until this process's goroutine count has held
// still for 100ms, so that goroutines of sessions that just ended have
// returned before a footprint is taken; it fails the test after d.
func SettleGoroutines(t testing.TB, d time.Duration) {
	t.Helper()
	const still = 5
	deadline := time.Now().Add(d)
	last, same := runtime.NumGoroutine(), 0
	for same < still {
		if time.Now().After(deadline) {
			t.Fatalf("the goroutine count did not settle within %v (now %d)", d, last)
		}
		time.Sleep(20 * time.Millisecond)
		if n := runtime.NumGoroutine(); n == last {
			same++
		} else {
			last, same = n, 0
		}
	}
}

// Child is a child process seen from the test that started it.
type Child struct {
	// Ready holds the words of the child's ready line.
	Ready []string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string   // stdout lines; closed at its end
	mu     sync.Mutex    // one command at a time
	waited chan error    // the process's exit, once
	done   chan struct{} // closed by Stop: lines nobody will read are dropped
	stop   sync.Once
}

// childTimeout bounds how long a child may take to get ready or to answer
// a command.
const childTimeout = 60 * time.Second

// StartChild runs this test binary again as a child playing role with
// args and returns once it is ready. t.Cleanup kills it if it still runs
// and reaps it.
func StartChild(t testing.TB, role string, args map[string]string) *Child {
	t.Helper()
	enc, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	// -test.run=^$: a package whose TestMain forgot RunChild runs no tests
	// in the child (and the child is never ready) instead of recursing.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+role, childArgsEnv+"="+string(enc))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &Child{cmd: cmd, stdin: stdin, lines: make(chan string, 16), waited: make(chan error, 1), done: make(chan struct{})}
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			case <-c.done:
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		// Wait closes stdout: only once everything has been read.
		<-read
		c.waited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		c.Stop(t)
	})
	line, err := c.line()
	if err != nil {
		t.Fatalf("child %q: %v before it was ready", role, err)
	}
	words := strings.Fields(line)
	if len(words) == 0 || words[0] != "ready" {
		t.Fatalf("child %q did not get ready: %s", role, line)
	}
	c.Ready = words[1:]
	return c
}

// line returns the child's next line of output.
func (c *Child) line() (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("the child's output ended")
		}
		return l, nil
	case <-time.After(childTimeout):
		return "", fmt.Errorf("no answer within %v", childTimeout)
	}
}

// Do sends the child a command and returns the text of its answer; a
// failure fails the test.
func (c *Child) Do(t testing.TB, cmd string, args ...string) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	line := strings.Join(append([]string{cmd}, args...), " ")
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		t.Fatalf("child command %q: %v", line, err)
	}
	answer, err := c.line()
	if err != nil {
		t.Fatalf("child command %q: %v", line, err)
	}
	if text, ok := strings.CutPrefix(answer, "ok"); ok {
		return strings.TrimPrefix(text, " ")
	}
	t.Fatalf("child command %q: %s", line, answer)
	return ""
}

// Footprint asks the child for its footprint after garbage collection:
// what a server in a child holds, without the test's own memory.
func (c *Child) Footprint(t testing.TB) Footprint {
	t.Helper()
	f, err := parseFootprint(c.Do(t, "footprint"))
	if err != nil {
		t.Fatalf("the child's footprint: %v", err)
	}
	return f
}

// Kill sends SIGKILL: the child gets no chance to close anything.
func (c *Child) Kill(t testing.TB) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatalf("killing the child: %v", err)
	}
}

// Stop closes the child's stdin, which ends it, and waits for it to exit
// (killing it after childTimeout). It reports an exit other than a clean
// one or a kill. It may be called more than once.
func (c *Child) Stop(t testing.TB) {
	t.Helper()
	c.stop.Do(func() {
		close(c.done)
		c.stdin.Close()
		var err error
		select {
		case err = <-c.waited:
		case <-time.After(childTimeout):
			c.cmd.Process.Kill()
			err = <-c.waited
			t.Errorf("the child did not exit within %v of its stdin closing", childTimeout)
		}
		if err != nil && !c.cmd.ProcessState.Exited() {
			return // killed
		}
		if err != nil {
			t.Errorf("the child exited with %v", err)
		}
	})
}
