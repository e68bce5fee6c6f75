package scheduler

// What is left of the store's first version: Config fields that go once
// their tests have moved.

import "time"

// v1Config holds the Config fields the first version's code still reads.
type v1Config struct {
	// StateMaxBytes: unused (see HistoryMaxBytes).
	StateMaxBytes int64
	// RepairAfter: unused (a submit's one write is its commit).
	RepairAfter time.Duration
}
