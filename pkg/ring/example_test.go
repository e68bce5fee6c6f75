package ring_test

import (
	"fmt"

	"github.com/meshkit/mesh/pkg/ring"
)

func Example() {
	r, err := ring.New([]ring.Member{
		{ID: "cache-a"},
		{ID: "cache-b"},
		{ID: "cache-c", Weight: 2}, // owns about twice as many keys
	}, ring.Config{})
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Owner("user:42"))
	fmt.Println(r.Owners("user:42", 2)) // primary, then the replica

	// A new member takes keys only from the others' share, never moves a
	// key between the members that stayed.
	bigger, _ := ring.New(append(r.Members(), ring.Member{ID: "cache-d"}), ring.Config{})
	// It owns weight 1 of 5: about 4096/5 = 819 partitions.
	fmt.Printf("moved to cache-d: %d of %d partitions\n", len(ring.Moved(r, bigger)), r.Partitions())

	// Processes swap rings atomically; lookups take no lock.
	var h ring.Holder
	h.Store(bigger)
	fmt.Println(h.Load().Owner("user:42"))
	// Output:
	// cache-c
	// [cache-c cache-a]
	// moved to cache-d: 821 of 4096 partitions
	// cache-c
}
