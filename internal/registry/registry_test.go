package registry

import "testing"

func TestAddReplaceRemove(t *testing.T) {
	r := New[*int]()
	a, b := new(int), new(int)
	if _, replaced := r.Add("x", a); replaced {
		t.Fatal("first Add reported a replacement")
	}
	old, replaced := r.Add("x", b)
	if !replaced || old != a {
		t.Fatalf("second Add: got (%p, %v), want (%p, true)", old, replaced, a)
	}
	if r.Remove("x", a) {
		t.Fatal("removing the replaced entry removed its successor")
	}
	if got, ok := r.Get("x"); !ok || got != b {
		t.Fatalf("Get after stale Remove: got (%p, %v), want (%p, true)", got, ok, b)
	}
	if !r.Remove("x", b) {
		t.Fatal("Remove of the current entry failed")
	}
	if r.Len() != 0 {
		t.Fatalf("Len = %d after removing everything", r.Len())
	}
}

func TestListIsOrderedByID(t *testing.T) {
	r := New[string]()
	for _, id := range []string{"c", "a", "b"} {
		r.Add(id, id)
	}
	got := r.List()
	want := []string{"a", "b", "c"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("List = %v, want %v", got, want)
		}
	}
}
