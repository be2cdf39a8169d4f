package brpc_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/brpc-go/brpc/internal/testenv"
)

func TestMain(m *testing.M) {
	// In a child process started by testenv.StartChild this plays the
	// child's role and exits.
	testenv.RunChild(nil)
	goleak.VerifyTestMain(m)
}
