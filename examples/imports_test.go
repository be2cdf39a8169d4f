package examples

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// module is brpc's module path; its packages under internal/ cannot be
// imported from outside the module.
const module = "github.com/brpc-go/brpc"

// TestExamplesAndCommandsImportNoInternalPackage fails when code that users
// copy out of the module or install on its own (examples/, cmd/), or a test
// of it, imports one of brpc's internal packages directly. Reaching them
// through brpc's public packages is fine: those ship with the module.
func TestExamplesAndCommandsImportNoInternalPackage(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list imports: %v", err)
	}
	// One line a package: its path, then the imports of its code and tests.
	const format = `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}{{range .TestImports}} {{.}}{{end}}{{range .XTestImports}} {{.}}{{end}}`
	out, err := exec.Command(goCmd, "list", "-f", format, module+"/examples/...", module+"/cmd/...").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg := fields[0]
		listed[pkg] = true
		reported := map[string]bool{} // code and tests may import the same package
		for _, imp := range fields[1:] {
			if (imp == module+"/internal" || strings.HasPrefix(imp, module+"/internal/")) && !reported[imp] {
				reported[imp] = true
				t.Errorf("%s imports %s: examples and commands must use brpc's public API or carry their own code", pkg, imp)
			}
		}
	}
	// A pattern that matched nothing would check nothing.
	for _, want := range []string{module + "/examples/greeter", module + "/cmd/brpc", module + "/cmd/brpc/brpccmd"} {
		if !listed[want] {
			t.Errorf("go list did not list %s; it listed:\n%s", want, out)
		}
	}
}
