package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// netCounters are the kernel's UDP and TCP counters of /proc/net/snmp that
// say how many packets a fan-out's calls cost. They are machine-wide: on
// the loopback every datagram or segment is counted once sent and once
// received, and anything else running meanwhile adds its own.
type netCounters struct {
	udpIn, udpOut float64 // datagrams
	tcpIn, tcpOut float64 // segments
}

// readNetCounters reads the counters now; zero when they cannot be read.
func readNetCounters() netCounters {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return netCounters{}
	}
	var c netCounters
	header := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		proto, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		names, seen := header[proto]
		if !seen {
			header[proto] = fields
			continue
		}
		value := func(name string) float64 {
			for i, n := range names {
				if n == name && i < len(fields) {
					v, _ := strconv.ParseFloat(fields[i], 64)
					return v
				}
			}
			return 0
		}
		switch proto {
		case "Udp":
			c.udpIn, c.udpOut = value("InDatagrams"), value("OutDatagrams")
		case "Tcp":
			c.tcpIn, c.tcpOut = value("InSegs"), value("OutSegs")
		}
	}
	return c
}

func (c netCounters) sub(o netCounters) netCounters {
	return netCounters{c.udpIn - o.udpIn, c.udpOut - o.udpOut, c.tcpIn - o.tcpIn, c.tcpOut - o.tcpOut}
}

func (c netCounters) per(n int) netCounters {
	d := float64(max(n, 1))
	return netCounters{c.udpIn / d, c.udpOut / d, c.tcpIn / d, c.tcpOut / d}
}

func (c netCounters) String() string {
	return fmt.Sprintf("UDP datagrams in %.2f out %.2f, TCP segments in %.2f out %.2f", c.udpIn, c.udpOut, c.tcpIn, c.tcpOut)
}

// perfStat is a perf stat process counting events on one process.
type perfStat struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	events []string
}

// startPerfStat starts counting events on the process pid, and waits
// until perf has attached (it says so on stderr before it counts).
func startPerfStat(pid int, events []string) (*perfStat, error) {
	p := &perfStat{events: events}
	p.cmd = exec.Command("perf", "stat", "-x", ",", "-e", strings.Join(events, ","), "-p", strconv.Itoa(pid))
	p.cmd.Stderr = &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf: %w", err)
	}
	// perf opens its counters right after it starts; there is no signal
	// that it has, and what it misses is the first moments of a fan-out
	// of seconds, so a short pause is enough.
	time.Sleep(200 * time.Millisecond)
	return p, nil
}

// stop ends the count and returns each event's total, in the order given.
func (p *perfStat) stop() ([]float64, error) {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return nil, fmt.Errorf("perf: %w", err)
	}
	counts := make([]float64, len(p.events))
	for _, line := range strings.Split(p.out.String(), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		for i, ev := range p.events {
			if f[2] == ev {
				counts[i], _ = strconv.ParseFloat(f[0], 64)
			}
		}
	}
	return counts, nil
}

// startCPUProfile starts this process's CPU profile to the file path and
// returns what ends it: the profile stopped, the file closed.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

var childProfile struct {
	mu   sync.Mutex
	stop func() // nil: no profile runs
}

// startFleetChildProfile starts a CPU profile of the fleet's child process
// to the file name.
func startFleetChildProfile(name string) error {
	childProfile.mu.Lock()
	defer childProfile.mu.Unlock()
	if childProfile.stop != nil {
		return errors.New("a profile is running already")
	}
	stop, err := startCPUProfile(name)
	if err != nil {
		return err
	}
	childProfile.stop = stop
	return nil
}

// stopFleetChildProfile ends the child's CPU profile, if one runs.
func stopFleetChildProfile() {
	childProfile.mu.Lock()
	defer childProfile.mu.Unlock()
	if childProfile.stop == nil {
		return
	}
	childProfile.stop()
	childProfile.stop = nil
}
