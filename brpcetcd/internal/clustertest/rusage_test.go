package clustertest

import (
	"fmt"
	"os"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/brpc-go/brpc/internal/testenv"
)

// processUsage is what a process has spent so far: CPU time (user and
// system) and context switches, voluntary (a thread that blocked: what a
// process idle between calls pays to be woken for each) and not.
type processUsage struct {
	cpu                    time.Duration
	voluntary, involuntary int64
}

func (u processUsage) String() string {
	return fmt.Sprintf("cpu_us=%d nvcsw=%d nivcsw=%d", u.cpu.Microseconds(), u.voluntary, u.involuntary)
}

func (u processUsage) minus(earlier processUsage) processUsage {
	return processUsage{u.cpu - earlier.cpu, u.voluntary - earlier.voluntary, u.involuntary - earlier.involuntary}
}

func parseUsage(s string) (processUsage, error) {
	var u processUsage
	var cpu int64
	_, err := fmt.Sscanf(s, "cpu_us=%d nvcsw=%d nivcsw=%d", &cpu, &u.voluntary, &u.involuntary)
	u.cpu = time.Duration(cpu) * time.Microsecond
	return u, err
}

// handleUsage makes c answer "usage" with the process's processUsage.
func handleUsage(c *testenv.ChildEnv) {
	c.Handle("usage", func([]string) (string, error) {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return "", err
		}
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		return processUsage{cpu: cpu, voluntary: int64(ru.Nvcsw), involuntary: int64(ru.Nivcsw)}.String(), nil
	})
}

// handleProfile makes c answer "cpuprofile FILE" by starting a CPU
// profile into FILE, and "cpuprofile" by stopping it.
func handleProfile(c *testenv.ChildEnv) {
	var f *os.File
	c.Handle("cpuprofile", func(args []string) (string, error) {
		if len(args) == 0 {
			if f == nil {
				return "", fmt.Errorf("no profile running")
			}
			pprof.StopCPUProfile()
			err := f.Close()
			f = nil
			return "", err
		}
		if f != nil {
			return "", fmt.Errorf("a profile is running")
		}
		var err error
		if f, err = os.Create(args[0]); err != nil {
			return "", err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			f = nil
			return "", err
		}
		return "", nil
	})
}
